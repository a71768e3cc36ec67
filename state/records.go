package state

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
)

// Mapping links one GES record to its Sage record.
type Mapping struct {
	Table     string // customers | invoices | payments
	GESID     int64
	CompanyID int64
	// BusinessID is the Sage business the record lives in; a reconnect to another business
	// makes the mapping stale.
	BusinessID string
	SageID     string
	// ContactID is, for invoices and payments, the Sage contact they were posted to.
	ContactID string
	// ParentID is the GES parent: an invoice's customer_id, a payment's invoice_id.
	ParentID int64
	// PayloadHash is transform.Op.Hash of the last payload Sage accepted.
	PayloadHash string
	// LSN is the commit LSN of the change last applied.
	LSN       pglogrepl.LSN
	UpdatedAt time.Time
	// Unacknowledged is true when an update of the record was sent (AttemptUpdate) and its
	// reply never saved: Sage may hold that update, so PayloadHash does not prove the next one
	// unneeded.
	Unacknowledged bool
}

// mappingRowCols is every column of an id-map row, as scanMapping reads them, and whether a
// send of the record awaits its acknowledgement (Mapping.Unacknowledged).
const mappingRowCols = `ges_table, ges_id, company_id, business_id, sage_id, contact_id, coalesce(parent_id, 0), payload_hash, coalesce(lsn, '0/0'), updated_at,
	EXISTS (SELECT 1 FROM @s.create_attempts u WHERE u.ges_table = id_map.ges_table AND u.ges_id = id_map.ges_id AND u.business_id = id_map.business_id)`

// scanMapping reads one id-map row selected with mappingRowCols, and into extra the columns
// selected after them.
func scanMapping(row pgx.Row, extra ...any) (Mapping, error) {
	var m Mapping
	err := row.Scan(append([]any{&m.Table, &m.GESID, &m.CompanyID, &m.BusinessID, &m.SageID, &m.ContactID, &m.ParentID, &m.PayloadHash, &m.LSN, &m.UpdatedAt, &m.Unacknowledged}, extra...)...)
	return m, err
}

// mappingPair is what MappingPair and MappingPairAttempt read: the record's and its parent's
// mappings (those that do not exist with only Table and GESID set), and whether a create
// attempt was recorded as the first.
type mappingPair struct {
	self, parent Mapping
	first        bool
}

// scanMappingPair reads rows selected with mappingRowCols and one bigint after them: the
// mappings of (table, id) and of its parent, and a row with ges_table ” whose bigint counts
// the create attempts recorded (MappingPairAttempt).
func scanMappingPair(rows pgx.Rows, table string, id int64, parentTable string, parentID int64) (mappingPair, error) {
	p := mappingPair{self: Mapping{Table: table, GESID: id}, parent: Mapping{Table: parentTable, GESID: parentID}}
	for rows.Next() {
		var attempted int64
		m, err := scanMapping(rows, &attempted)
		if err != nil {
			return p, err
		}
		switch {
		case m.Table == "":
			p.first = attempted > 0
		case m.Table == table && m.GESID == id:
			p.self = m
		default:
			p.parent = m
		}
	}
	return p, rows.Err()
}

// Mapping returns the mapping of (table, id), or ErrNotFound.
func (s *Store) Mapping(ctx context.Context, table string, id int64) (Mapping, error) {
	m, err := query(s.batch, ctx, func(rows pgx.Rows) (Mapping, error) {
		if !rows.Next() {
			if err := rows.Err(); err != nil {
				return Mapping{}, err
			}
			return Mapping{}, pgx.ErrNoRows
		}
		return scanMapping(rows)
	}, s.q(`SELECT `+mappingRowCols+` FROM @s.id_map WHERE ges_table = $1 AND ges_id = $2`), table, id)
	if errors.Is(err, pgx.ErrNoRows) {
		return Mapping{Table: table, GESID: id}, fmt.Errorf("%s/%d: %w", table, id, ErrNotFound)
	}
	if err != nil {
		return Mapping{Table: table, GESID: id}, fmt.Errorf("reading id map of %s/%d: %w", table, id, err)
	}
	return m, nil
}

// MappingPair reads in one round trip the mappings of a record and of its parent (an invoice
// and its customer, a payment and its invoice). A mapping that does not exist comes back with
// only Table and GESID set (SageID ""), with no error.
func (s *Store) MappingPair(ctx context.Context, table string, id int64, parentTable string, parentID int64) (self, parent Mapping, err error) {
	p, err := s.mappingPair(ctx, s.q(mappingPairSQL), table, id, parentTable, parentID)
	return p.self, p.parent, err
}

// mappingPairSQL selects for scanMappingPair the mappings of ($1, $2) and its parent ($3, $4).
const mappingPairSQL = `SELECT ` + mappingRowCols + `, 0::bigint
	FROM @s.id_map WHERE (ges_table = $1 AND ges_id = $2) OR (ges_table = $3 AND ges_id = $4)`

// mappingPair runs sql, which selects for scanMappingPair, with $1–$4 the record's and its
// parent's table and id and extra the parameters after them.
func (s *Store) mappingPair(ctx context.Context, sql, table string, id int64, parentTable string, parentID int64, extra ...any) (mappingPair, error) {
	p, err := query(s.batch, ctx, func(rows pgx.Rows) (mappingPair, error) {
		return scanMappingPair(rows, table, id, parentTable, parentID)
	}, sql, append([]any{table, id, parentTable, parentID}, extra...)...)
	if err != nil {
		return mappingPair{self: Mapping{Table: table, GESID: id}, parent: Mapping{Table: parentTable, GESID: parentID}},
			fmt.Errorf("reading id map of %s/%d and %s/%d: %w", table, id, parentTable, parentID, err)
	}
	return p, nil
}

// addParentSQL ends an insert into create_attempts (aliased a) of parent_ids ARRAY[$4]: an
// attempt already recorded gains the parent $4, unless it has it. xmax = 0 tells a row
// inserted from one updated.
const addParentSQL = `ON CONFLICT (ges_table, ges_id, business_id) DO UPDATE
	SET parent_ids = CASE WHEN excluded.parent_ids[1] = ANY(a.parent_ids) OR excluded.parent_ids[1] IS NULL OR excluded.parent_ids[1] = 0
		THEN a.parent_ids ELSE a.parent_ids || excluded.parent_ids[1] END`

// MappingPairAttempt is MappingPair and, in the same statement, AttemptCreate of (table, id) in
// businessID for parentID when the record has no mapping of companyID in that business (a
// create is about to follow). first is AttemptCreate's answer, and false when a mapping exists. An attempt
// recorded for a create that is then not sent only makes the next create search first.
//
// The mapping is looked up by its primary key alone, and its business and company compared
// after: written as one WHERE, PostgreSQL's generic plan (pgx prepares every statement) could
// take id_map_sage or id_map_company instead, whenever the statistics were older than the
// table's growth, and read every mapping of the business or company in the table on each
// create.
func (s *Store) MappingPairAttempt(ctx context.Context, table string, id int64, parentTable string, parentID int64, businessID string, companyID int64) (self, parent Mapping, first bool, err error) {
	p, err := s.mappingPair(ctx, s.q(mappingPairAttemptSQL), table, id, parentTable, parentID, businessID, companyID)
	if err != nil {
		err = fmt.Errorf("recording a create attempt: %w", err)
	}
	return p.self, p.parent, p.first, err
}

// mappingPairAttemptSQL is MappingPairAttempt's statement: $1–$4 the record's and its parent's
// table and id, $5 the business, $6 the company.
const mappingPairAttemptSQL = `WITH attempt AS (
			INSERT INTO @s.create_attempts AS a (ges_table, ges_id, business_id, parent_ids)
			SELECT $1, $2, $5, ARRAY[$4::bigint] WHERE NOT coalesce((
				SELECT business_id = $5 AND company_id = $6 FROM @s.id_map WHERE ges_table = $1 AND ges_id = $2), false)
			` + addParentSQL + ` RETURNING xmax = 0 AS inserted)
		` + mappingPairSQL + `
		UNION ALL
		SELECT '', 0::bigint, 0::bigint, '', '', '', 0::bigint, '', '0/0'::pg_lsn, now(), false, (SELECT count(*) FROM attempt WHERE inserted)`

// SaveMapping inserts or replaces a mapping, and forgets the record's create attempt in that
// business (AttemptCreate): Sage has acknowledged it. The pipeline calls it before the change's
// LSN can become safe, so a crash after Sage's reply leads to an update, never a second record.
func (s *Store) SaveMapping(ctx context.Context, m Mapping) error {
	_, err := s.batch.exec(ctx, s.q(`WITH acknowledged AS (`+forgetAttemptSQL+`)
		`+saveMappingSQL), mappingArgs(m)...)
	if err != nil {
		return fmt.Errorf("saving id map of %s/%d: %w", m.Table, m.GESID, err)
	}
	return nil
}

// SaveMappingAndResolve is SaveMapping and ResolveAndWaiting in one statement, one round trip
// instead of two for a record that has just synced: it saves m, forgets the record's create
// attempt, marks its open errors resolved and returns the other open errors w names (oldest
// first).
func (s *Store) SaveMappingAndResolve(ctx context.Context, m Mapping, w Waker) ([]Entry, error) {
	out, err := query(s.batch, ctx, scanEntries, s.q(saveMappingAndResolveSQL), append(mappingArgs(m), w.Code, w.Table, w.ID, w.OfCode)...)
	if err != nil {
		return nil, fmt.Errorf("saving id map and resolving sync log of %s/%d: %w", m.Table, m.GESID, err)
	}
	return out, nil
}

// saveMappingSQL inserts or replaces the mapping of mappingArgs; forgetAttemptSQL deletes its
// create attempt.
const (
	saveMappingSQL = `INSERT INTO @s.id_map (ges_table, ges_id, company_id, business_id, sage_id, contact_id, parent_id, payload_hash, lsn, updated_at)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, now())
		ON CONFLICT (ges_table, ges_id) DO UPDATE SET company_id = excluded.company_id, business_id = excluded.business_id,
			sage_id = excluded.sage_id, contact_id = excluded.contact_id, parent_id = excluded.parent_id,
			payload_hash = excluded.payload_hash, lsn = excluded.lsn, updated_at = now()`
	forgetAttemptSQL = `DELETE FROM @s.create_attempts WHERE ges_table = $1 AND ges_id = $2 AND business_id = $4`
)

// mappingArgs are $1–$9 of saveMappingSQL: table, GES id, company, business, Sage id, contact
// id, parent id (NULL when 0), payload hash, LSN.
func mappingArgs(m Mapping) []any {
	var parent *int64
	if m.ParentID != 0 {
		parent = &m.ParentID
	}
	return []any{m.Table, m.GESID, m.CompanyID, m.BusinessID, m.SageID, m.ContactID, parent, m.PayloadHash, m.LSN}
}

// AttemptCreate records, durably, that gessync is about to send a create of (table, id) to the
// Sage business, for the record's parent parentID (the customer of an invoice, the invoice of a
// payment; 0 for none). first is true when no earlier attempt is recorded: no create of it can
// have reached Sage, so nothing needs to be looked for there. It is false when an earlier
// attempt was never acknowledged (its reply lost, the daemon killed mid-call): Sage may hold the
// record, with one of the parents the attempts recorded (Attempt): each attempt adds its parent.
// SaveMapping clears the attempt.
func (s *Store) AttemptCreate(ctx context.Context, table string, id int64, businessID string, parentID int64) (first bool, err error) {
	parents := []int64{}
	if parentID != 0 {
		parents = append(parents, parentID)
	}
	first, err = query(s.batch, ctx, func(rows pgx.Rows) (bool, error) {
		return pgx.CollectExactlyOneRow(rows, pgx.RowTo[bool])
	}, s.q(`INSERT INTO @s.create_attempts AS a (ges_table, ges_id, business_id, parent_ids) VALUES ($1, $2, $3, $4)
		`+addParentSQL+` RETURNING xmax = 0`), table, id, businessID, parents)
	if err != nil {
		return false, fmt.Errorf("recording create attempt of %s/%d: %w", table, id, err)
	}
	return first, nil
}

// AttemptUpdate records, durably, that gessync is about to send an update (or a void) of the
// mapped record (table, id) to the Sage business, so that a reply lost with it (the daemon
// killed mid-call) leaves the mapping Unacknowledged: the record's next change is then sent
// even if it matches the mapping's PayloadHash (GES put back what it had before the update).
// SaveMapping clears it.
func (s *Store) AttemptUpdate(ctx context.Context, table string, id int64, businessID string) error {
	if _, err := s.batch.exec(ctx, s.q(`INSERT INTO @s.create_attempts (ges_table, ges_id, business_id) VALUES ($1, $2, $3)
		ON CONFLICT DO NOTHING`), table, id, businessID); err != nil {
		return fmt.Errorf("recording update attempt of %s/%d: %w", table, id, err)
	}
	return nil
}

// Attempt is a create attempt not yet acknowledged (AttemptCreate).
type Attempt struct {
	At time.Time // when the first attempt was recorded, UTC, on the state database's clock
	// ParentIDs are the parents it was attempted for, first first; none when not known (an
	// attempt recorded before migration 7).
	ParentIDs []int64
}

// Replacement is a create still to replace a Sage record that is gone (ForgetSageRecord).
type Replacement struct {
	Table, BusinessID, Replaces string
	GESID                       int64
}

// Replacements lists the creates still to replace a Sage record that is gone: the pipeline
// keeps them in memory, so that no create reads its attempt just in case.
func (s *Store) Replacements(ctx context.Context) ([]Replacement, error) {
	rows, err := s.pool.Query(ctx, s.q(`SELECT ges_table, ges_id, business_id, replaces FROM @s.create_attempts WHERE replaces <> ''`))
	if err != nil {
		return nil, fmt.Errorf("reading replacements: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (Replacement, error) {
		var r Replacement
		err := row.Scan(&r.Table, &r.GESID, &r.BusinessID, &r.Replaces)
		return r, err
	})
	if err != nil {
		return nil, fmt.Errorf("reading replacements: %w", err)
	}
	return out, nil
}

// ForgetSageRecord deletes the mapping of (table, id), whose Sage record sageID in businessID
// is gone (Sage answered 404), and records that the record's next create replaces it
// (Replacements), in one statement: that create needs an idempotency_id of its own, as
// Sage keeps the first create's for 7 days and would refuse it or answer with the record gone.
func (s *Store) ForgetSageRecord(ctx context.Context, table string, id int64, businessID, sageID string) error {
	if _, err := s.pool.Exec(ctx, s.q(`WITH gone AS (DELETE FROM @s.id_map WHERE ges_table = $1 AND ges_id = $2)
		INSERT INTO @s.create_attempts (ges_table, ges_id, business_id, replaces) VALUES ($1, $2, $3, $4)
		ON CONFLICT (ges_table, ges_id, business_id) DO UPDATE SET replaces = excluded.replaces`), table, id, businessID, sageID); err != nil {
		return fmt.Errorf("forgetting the Sage record of %s/%d: %w", table, id, err)
	}
	return nil
}

// Attempt returns the create attempt of (table, id) in businessID, or ErrNotFound when there is
// none.
func (s *Store) Attempt(ctx context.Context, table string, id int64, businessID string) (Attempt, error) {
	a, err := query(s.batch, ctx, func(rows pgx.Rows) (Attempt, error) {
		return pgx.CollectExactlyOneRow(rows, func(row pgx.CollectableRow) (Attempt, error) {
			var a Attempt
			err := row.Scan(&a.At, &a.ParentIDs)
			return a, err
		})
	}, s.q(`SELECT attempted_at, parent_ids FROM @s.create_attempts WHERE ges_table = $1 AND ges_id = $2 AND business_id = $3`), table, id, businessID)
	if errors.Is(err, pgx.ErrNoRows) {
		return Attempt{}, ErrNotFound
	}
	if err != nil {
		return Attempt{}, fmt.Errorf("reading create attempt of %s/%d: %w", table, id, err)
	}
	a.At = a.At.UTC()
	return a, nil
}

// ForgetAttempt deletes the create attempt of (table, id) in businessID: no create of it was
// sent after all.
func (s *Store) ForgetAttempt(ctx context.Context, table string, id int64, businessID string) error {
	if _, err := s.batch.exec(ctx, s.q(`DELETE FROM @s.create_attempts WHERE ges_table = $1 AND ges_id = $2 AND business_id = $3`), table, id, businessID); err != nil {
		return fmt.Errorf("forgetting create attempt of %s/%d: %w", table, id, err)
	}
	return nil
}

// DeleteMapping forgets (table, id), after its Sage record was deleted.
func (s *Store) DeleteMapping(ctx context.Context, table string, id int64) error {
	if _, err := s.pool.Exec(ctx, s.q(`DELETE FROM @s.id_map WHERE ges_table = $1 AND ges_id = $2`), table, id); err != nil {
		return fmt.Errorf("deleting id map of %s/%d: %w", table, id, err)
	}
	return nil
}

// Mappings returns every mapping of company in table, by GES id.
func (s *Store) Mappings(ctx context.Context, companyID int64, table string) ([]Mapping, error) {
	rows, err := s.pool.Query(ctx, s.q(`SELECT `+mappingRowCols+` FROM @s.id_map WHERE company_id = $1 AND ges_table = $2 ORDER BY ges_id`), companyID, table)
	if err != nil {
		return nil, fmt.Errorf("reading id map of company %d: %w", companyID, err)
	}
	return scanMappings(rows, companyID)
}

// scanMappings reads id-map rows selected with mappingRowCols.
func scanMappings(rows pgx.Rows, companyID int64) ([]Mapping, error) {
	defer rows.Close()
	var out []Mapping
	for rows.Next() {
		m, err := scanMapping(rows)
		if err != nil {
			return nil, fmt.Errorf("reading id map of company %d: %w", companyID, err)
		}
		out = append(out, m)
	}
	return out, rows.Err()
}

// Children returns the mappings of table whose parent is parentID in company (an invoice's
// payments), by GES id.
func (s *Store) Children(ctx context.Context, companyID int64, table string, parentID int64) ([]Mapping, error) {
	out, err := query(s.batch, ctx, func(rows pgx.Rows) ([]Mapping, error) { return scanMappings(rows, companyID) }, s.q(`SELECT `+mappingRowCols+` FROM @s.id_map WHERE ges_table = $1 AND parent_id = $2 AND company_id = $3 ORDER BY ges_id`), table, parentID, companyID)
	if err != nil {
		return nil, fmt.Errorf("reading %s of %d: %w", table, parentID, err)
	}
	return out, nil
}

// ParentsWithHash returns, by company, the parents (parent_id) of table's mappings whose
// payload hash is hash: for instance the invoices with payments set aside for re-allocation.
func (s *Store) ParentsWithHash(ctx context.Context, table, hash string) (map[int64][]int64, error) {
	rows, err := s.pool.Query(ctx, s.q(`SELECT DISTINCT company_id, parent_id FROM @s.id_map
		WHERE ges_table = $1 AND payload_hash = $2 AND parent_id IS NOT NULL`), table, hash)
	if err != nil {
		return nil, fmt.Errorf("reading parents of %s marked %q: %w", table, hash, err)
	}
	defer rows.Close()
	out := map[int64][]int64{}
	for rows.Next() {
		var company, parent int64
		if err := rows.Scan(&company, &parent); err != nil {
			return nil, fmt.Errorf("reading parents of %s marked %q: %w", table, hash, err)
		}
		out[company] = append(out[company], parent)
	}
	return out, rows.Err()
}

// Linked returns which of sageIDs are already linked to a GES record of table in business.
func (s *Store) Linked(ctx context.Context, table, businessID string, sageIDs []string) (map[string]bool, error) {
	out := map[string]bool{}
	if len(sageIDs) == 0 {
		return out, nil
	}
	rows, err := s.pool.Query(ctx, s.q(`SELECT sage_id FROM @s.id_map WHERE ges_table = $1 AND business_id = $2 AND sage_id = ANY($3)`), table, businessID, sageIDs)
	if err != nil {
		return nil, fmt.Errorf("reading links of %s: %w", table, err)
	}
	defer rows.Close()
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return nil, fmt.Errorf("reading links of %s: %w", table, err)
		}
		out[id] = true
	}
	return out, rows.Err()
}

// Level is a sync-log entry's severity.
type Level string

const (
	// LevelError is a record that could not sync and needs a person.
	LevelError Level = "error"
	// LevelWarning is a record that synced with something left for a person (e.g. an excess
	// payment on Start to record by hand).
	LevelWarning Level = "warning"
	// LevelInfo records what gessync decided (a match, a skipped change).
	LevelInfo Level = "info"
)

// Entry is one sync-log entry: which record, what went wrong in plain words, Sage's own words,
// and what to do.
type Entry struct {
	ID          int64
	CompanyID   int64
	Table       string
	GESID       int64
	LSN         pglogrepl.LSN
	Level       Level
	Code        string // a stable key, e.g. "sage.RecordInvalid", "invalid.name"
	Message     string // plain English for the engineer
	SageMessage string // Sage's $message(s), verbatim
	Action      string // what to do
	CreatedAt   time.Time
	ResolvedAt  *time.Time
}

// Log appends an entry. An open error for the same record and code is not repeated: its text is
// refreshed instead, so a record retried many times shows once.
func (s *Store) Log(ctx context.Context, e Entry) error {
	var lsn *pglogrepl.LSN
	if e.LSN != 0 {
		lsn = &e.LSN
	}
	if e.Level == LevelError && e.GESID != 0 {
		tag, err := s.pool.Exec(ctx, s.q(`UPDATE @s.sync_log SET message = $4, sage_message = $5, action = $6, lsn = $7, created_at = now()
			WHERE company_id = $1 AND ges_table = $2 AND ges_id = $3 AND code = $8 AND level = 'error' AND resolved_at IS NULL`),
			e.CompanyID, e.Table, e.GESID, e.Message, e.SageMessage, e.Action, lsn, e.Code)
		if err != nil {
			return fmt.Errorf("writing sync log for %s/%d: %w", e.Table, e.GESID, err)
		}
		if tag.RowsAffected() > 0 {
			return nil
		}
	}
	if e.Level == LevelWarning && e.GESID != 0 {
		// The same remark on the same record, still open, is not repeated on every update.
		var dup bool
		if err := s.pool.QueryRow(ctx, s.q(`SELECT EXISTS (SELECT 1 FROM @s.sync_log WHERE ges_table = $1 AND ges_id = $2 AND code = $3
			AND message = $4 AND level = 'warning' AND resolved_at IS NULL)`), e.Table, e.GESID, e.Code, e.Message).Scan(&dup); err != nil {
			return fmt.Errorf("writing sync log for %s/%d: %w", e.Table, e.GESID, err)
		}
		if dup {
			return nil
		}
	}
	_, err := s.pool.Exec(ctx, s.q(`INSERT INTO @s.sync_log (company_id, ges_table, ges_id, lsn, level, code, message, sage_message, action)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)`),
		e.CompanyID, e.Table, e.GESID, lsn, string(e.Level), e.Code, e.Message, e.SageMessage, e.Action)
	if err != nil {
		return fmt.Errorf("writing sync log for %s/%d: %w", e.Table, e.GESID, err)
	}
	return nil
}

// Resolve marks every open error of (table, id) resolved: the record has since synced.
func (s *Store) Resolve(ctx context.Context, table string, id int64) error {
	_, err := s.batch.exec(ctx, s.q(resolveRecordSQL), table, id)
	if err != nil {
		return fmt.Errorf("resolving sync log of %s/%d: %w", table, id, err)
	}
	return nil
}

// OpenErrorCompany returns the company of (table, id)'s open errors in the sync log, and false
// when it has none: a record that never reached Sage has no mapping to say whose it is.
func (s *Store) OpenErrorCompany(ctx context.Context, table string, id int64) (int64, bool, error) {
	var company int64
	err := s.pool.QueryRow(ctx, s.q(`SELECT company_id FROM @s.sync_log WHERE ges_table = $1 AND ges_id = $2 AND resolved_at IS NULL AND level = 'error' LIMIT 1`), table, id).Scan(&company)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("reading sync log of %s/%d: %w", table, id, err)
	}
	return company, true, nil
}

// resolveRecordSQL marks resolved the open errors of record ($1 table, $2 id).
const resolveRecordSQL = `UPDATE @s.sync_log SET resolved_at = now() WHERE ges_table = $1 AND ges_id = $2 AND resolved_at IS NULL AND level = 'error'`

// Waker names, for ResolveAndWaiting, the open errors to return: the company's with code
// Code (records waiting for this one, "waiting:customers/10"), and those of record (Table, ID)
// with code OfCode. An empty Code or OfCode asks for none of that kind.
type Waker struct {
	Code   string
	Table  string
	ID     int64
	OfCode string
}

// ResolveAndWaiting does, in one round trip, what Resolve and OpenOf do in two: it marks every
// open error of (table, id) resolved (the record has since synced) and returns company's open
// errors that w names, by id. The pipeline calls it for a record Sage accepted whose mapping
// was not saved with SaveMappingAndResolve (a delete, an invoice whose re-allocation followed).
func (s *Store) ResolveAndWaiting(ctx context.Context, companyID int64, table string, id int64, w Waker) ([]Entry, error) {
	out, err := query(s.batch, ctx, scanEntries, s.q(resolveAndWaitingSQL), table, id, companyID, w.Code, w.Table, w.ID, w.OfCode)
	if err != nil {
		return nil, fmt.Errorf("resolving sync log of %s/%d: %w", table, id, err)
	}
	return out, nil
}

// The statements of SaveMappingAndResolve ($1–$9 mappingArgs, $10–$13 the Waker) and of
// ResolveAndWaiting ($1–$2 the record, $3 the company, $4–$7 the Waker), built once.
var (
	saveMappingAndResolveSQL = `WITH acknowledged AS (` + forgetAttemptSQL + `),
		saved AS (` + saveMappingSQL + `),
		resolved AS (` + resolveRecordSQL + ` RETURNING id)
		` + waitingSQL(10)
	resolveAndWaitingSQL = `WITH resolved AS (` + resolveRecordSQL + ` RETURNING id)
		` + waitingSQL(4)
)

// waitingSQL selects the open errors a Waker names, other than those in CTE resolved: $3 is the
// company, and $waker to $waker+3 are the Waker's Code, Table, ID and OfCode.
func waitingSQL(waker int) string {
	p := func(i int) string { return fmt.Sprintf("$%d", waker+i) }
	return `SELECT ` + entryCols + ` FROM @s.sync_log
		WHERE resolved_at IS NULL AND level = 'error' AND id NOT IN (SELECT id FROM resolved)
			AND ((company_id = $3 AND code = ` + p(0) + ` AND ` + p(0) + ` <> '') OR (ges_table = ` + p(1) + ` AND ges_id = ` + p(2) + ` AND code = ` + p(3) + ` AND ` + p(3) + ` <> ''))
		ORDER BY id`
}

// LogQuery filters Entries.
type LogQuery struct {
	CompanyID int64 // 0 = all companies
	OpenOnly  bool  // unresolved errors only
	Limit     int   // default 200
}

// Entries returns sync-log entries, newest first.
func (s *Store) Entries(ctx context.Context, q LogQuery) ([]Entry, error) {
	if q.Limit <= 0 {
		q.Limit = 200
	}
	rows, err := s.pool.Query(ctx, s.q(`SELECT `+entryCols+`
		FROM @s.sync_log WHERE ($1 = 0 OR company_id = $1) AND (NOT $2 OR (resolved_at IS NULL AND level = 'error'))
		ORDER BY id DESC LIMIT $3`), q.CompanyID, q.OpenOnly, q.Limit)
	if err != nil {
		return nil, fmt.Errorf("reading sync log: %w", err)
	}
	return scanEntries(rows)
}

const entryCols = `id, company_id, ges_table, ges_id, coalesce(lsn, '0/0'), level, code, message, sage_message, action, created_at, resolved_at`

// scanEntries reads sync-log rows selected with entryCols.
func scanEntries(rows pgx.Rows) ([]Entry, error) {
	defer rows.Close()
	var out []Entry
	for rows.Next() {
		var e Entry
		var level string
		if err := rows.Scan(&e.ID, &e.CompanyID, &e.Table, &e.GESID, &e.LSN, &level, &e.Code, &e.Message, &e.SageMessage, &e.Action, &e.CreatedAt, &e.ResolvedAt); err != nil {
			return nil, fmt.Errorf("reading sync log: %w", err)
		}
		e.Level = Level(level)
		out = append(out, e)
	}
	return out, rows.Err()
}

// CreateOAuthState stores a fresh OAuth state for company's connect flow.
func (s *Store) CreateOAuthState(ctx context.Context, state string, companyID int64) error {
	_, err := s.pool.Exec(ctx, s.q(`INSERT INTO @s.oauth_states (state, company_id) VALUES ($1, $2)`), state, companyID)
	if err != nil {
		return fmt.Errorf("storing OAuth state: %w", err)
	}
	return nil
}

// ErrBadState means an OAuth callback's state is unknown, used already, or older than maxAge.
var ErrBadState = errors.New("OAuth state unknown, already used or expired: start the connection again")

// ConsumeOAuthState marks state used and returns its company; a state is good once, within maxAge.
func (s *Store) ConsumeOAuthState(ctx context.Context, state string, maxAge time.Duration) (int64, error) {
	var company int64
	err := s.pool.QueryRow(ctx, s.q(`UPDATE @s.oauth_states SET used_at = now()
		WHERE state = $1 AND used_at IS NULL AND created_at > now() - $2::interval RETURNING company_id`),
		state, fmt.Sprintf("%d seconds", int(maxAge.Seconds()))).Scan(&company)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, ErrBadState
	}
	if err != nil {
		return 0, fmt.Errorf("reading OAuth state: %w", err)
	}
	return company, nil
}

// Outcome is how one change ended, for the per-company counters.
type Outcome string

const (
	Synced  Outcome = "synced"
	Failed  Outcome = "failed"
	Skipped Outcome = "skipped"
)

// Count adds n to company's counter for outcome; a Synced count also stamps last_sync_at.
func (s *Store) Count(ctx context.Context, companyID int64, o Outcome, n int) error {
	var sql string
	switch o {
	case Synced:
		sql = `INSERT INTO @s.company_stats (company_id, synced, last_sync_at) VALUES ($1, $2, now())
			ON CONFLICT (company_id) DO UPDATE SET synced = @s.company_stats.synced + excluded.synced, last_sync_at = now()`
	case Failed:
		sql = `INSERT INTO @s.company_stats (company_id, failed) VALUES ($1, $2)
			ON CONFLICT (company_id) DO UPDATE SET failed = @s.company_stats.failed + excluded.failed`
	case Skipped:
		sql = `INSERT INTO @s.company_stats (company_id, skipped) VALUES ($1, $2)
			ON CONFLICT (company_id) DO UPDATE SET skipped = @s.company_stats.skipped + excluded.skipped`
	default:
		return fmt.Errorf("unknown outcome %q", o)
	}
	if _, err := s.batch.exec(ctx, s.q(sql), companyID, n); err != nil {
		return fmt.Errorf("counting %s for company %d: %w", o, companyID, err)
	}
	return nil
}

// Stats are one company's counters.
type Stats struct {
	CompanyID  int64
	Synced     int64
	Failed     int64
	Skipped    int64
	LastSyncAt *time.Time
}

// AllStats returns every company's counters, by company id.
func (s *Store) AllStats(ctx context.Context) (map[int64]Stats, error) {
	rows, err := s.pool.Query(ctx, s.q(`SELECT company_id, synced, failed, skipped, last_sync_at FROM @s.company_stats`))
	if err != nil {
		return nil, fmt.Errorf("reading company stats: %w", err)
	}
	defer rows.Close()
	out := map[int64]Stats{}
	for rows.Next() {
		var st Stats
		if err := rows.Scan(&st.CompanyID, &st.Synced, &st.Failed, &st.Skipped, &st.LastSyncAt); err != nil {
			return nil, fmt.Errorf("reading company stats: %w", err)
		}
		out[st.CompanyID] = st
	}
	return out, rows.Err()
}

// OpenErrors counts unresolved errors per company.
func (s *Store) OpenErrors(ctx context.Context) (map[int64]int, error) {
	return s.countByCompany(ctx, `SELECT company_id, count(*) FROM @s.sync_log WHERE resolved_at IS NULL AND level = 'error' GROUP BY company_id`, "open errors")
}

// countByCompany runs sql, which selects (company_id, count), into a map.
func (s *Store) countByCompany(ctx context.Context, sql, what string) (map[int64]int, error) {
	rows, err := s.pool.Query(ctx, s.q(sql))
	if err != nil {
		return nil, fmt.Errorf("counting %s: %w", what, err)
	}
	defer rows.Close()
	out := map[int64]int{}
	for rows.Next() {
		var id int64
		var n int
		if err := rows.Scan(&id, &n); err != nil {
			return nil, fmt.Errorf("counting %s: %w", what, err)
		}
		out[id] = n
	}
	return out, rows.Err()
}

// OpenOf returns the open errors of company whose code is code, oldest first (for example the
// records waiting for a parent: code "waiting:invoices/42").
func (s *Store) OpenOf(ctx context.Context, companyID int64, code string) ([]Entry, error) {
	rows, err := s.pool.Query(ctx, s.q(`SELECT `+entryCols+`
		FROM @s.sync_log WHERE company_id = $1 AND code = $2 AND resolved_at IS NULL AND level = 'error' ORDER BY id`), companyID, code)
	if err != nil {
		return nil, fmt.Errorf("reading open %s entries: %w", code, err)
	}
	return scanEntries(rows)
}

// ResolveCode marks resolved every open error of company with code (e.g. "connection.lost"
// once the company is reconnected).
func (s *Store) ResolveCode(ctx context.Context, companyID int64, code string) error {
	_, err := s.pool.Exec(ctx, s.q(`UPDATE @s.sync_log SET resolved_at = now() WHERE company_id = $1 AND code = $2 AND resolved_at IS NULL`), companyID, code)
	if err != nil {
		return fmt.Errorf("resolving %s entries of company %d: %w", code, companyID, err)
	}
	return nil
}
