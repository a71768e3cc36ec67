package state

import (
	"context"
	"fmt"
	"time"
)

// BacklogEntry is one record of a parked company waiting to reach Sage. It holds the record's
// key, not its content: the current GES row is read when the entry is drained, so the entry
// always carries the record's latest state. Deleted says the record's last change was a delete.
type BacklogEntry struct {
	Table     string
	ID        int64
	CompanyID int64
	Deleted   bool
	Seq       int64
	QueuedAt  time.Time
}

// Park records that (table, id) of company must reach Sage later. A record already parked keeps
// one entry, moved to the back of the queue with its latest kind (delete or not).
func (s *Store) Park(ctx context.Context, companyID int64, table string, id int64, deleted bool) error {
	_, err := s.pool.Exec(ctx, s.q(`INSERT INTO @s.backlog (ges_table, ges_id, company_id, deleted) VALUES ($1, $2, $3, $4)
		ON CONFLICT (ges_table, ges_id) DO UPDATE SET deleted = excluded.deleted, company_id = excluded.company_id,
			seq = nextval(pg_get_serial_sequence('`+s.schema+`.backlog', 'seq')), queued_at = now()`), table, id, companyID, deleted)
	if err != nil {
		return fmt.Errorf("parking %s/%d of company %d: %w", table, id, companyID, err)
	}
	return nil
}

// Backlog returns up to limit of company's parked records, oldest first.
func (s *Store) Backlog(ctx context.Context, companyID int64, limit int) ([]BacklogEntry, error) {
	rows, err := s.pool.Query(ctx, s.q(`SELECT ges_table, ges_id, company_id, deleted, seq, queued_at FROM @s.backlog
		WHERE company_id = $1 ORDER BY seq LIMIT $2`), companyID, limit)
	if err != nil {
		return nil, fmt.Errorf("reading backlog of company %d: %w", companyID, err)
	}
	defer rows.Close()
	var out []BacklogEntry
	for rows.Next() {
		var e BacklogEntry
		if err := rows.Scan(&e.Table, &e.ID, &e.CompanyID, &e.Deleted, &e.Seq, &e.QueuedAt); err != nil {
			return nil, fmt.Errorf("reading backlog of company %d: %w", companyID, err)
		}
		out = append(out, e)
	}
	return out, rows.Err()
}

// Unpark removes an entry once its record reached Sage (or needs a person), unless it was
// parked again meanwhile (a newer seq).
func (s *Store) Unpark(ctx context.Context, e BacklogEntry) error {
	_, err := s.pool.Exec(ctx, s.q(`DELETE FROM @s.backlog WHERE ges_table = $1 AND ges_id = $2 AND seq = $3`), e.Table, e.ID, e.Seq)
	if err != nil {
		return fmt.Errorf("unparking %s/%d: %w", e.Table, e.ID, err)
	}
	return nil
}

// BacklogSizes returns the number of parked records per company.
func (s *Store) BacklogSizes(ctx context.Context) (map[int64]int, error) {
	return s.countByCompany(ctx, `SELECT company_id, count(*) FROM @s.backlog GROUP BY company_id`, "backlog")
}
