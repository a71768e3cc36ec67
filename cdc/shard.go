package cdc

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
)

// Shard is the share of GES companies one gessync instance owns: those whose company_id modulo
// Of equals Index. The zero value means no sharding: one instance owns every company.
//
// A sharded instance streams through its own publication, whose row filter on each of the three
// tables is company_id % Of = Index, and its own slot. PostgreSQL refuses UPDATE and DELETE on a
// table published with a row filter whose columns are not in the table's replica identity, so
// Prepare creates such a publication only once every table's replica identity covers company_id
// and id (see ShardIdentity), and otherwise refuses with the statements the DBA must run.
type Shard struct {
	// Index is this instance's share, 0 ≤ Index < Of.
	Index int
	// Of is the number of shards; 0 means no sharding.
	Of int
}

// Enabled reports whether s is a real share (Of ≥ 2) rather than the whole.
func (s Shard) Enabled() bool { return s.Of > 0 }

// String is "k/N", or "" when not sharded.
func (s Shard) String() string {
	if !s.Enabled() {
		return ""
	}
	return fmt.Sprintf("%d/%d", s.Index, s.Of)
}

// ParseShard reads "k/N" (0 ≤ k < N, N ≥ 2), as GESSYNC_SHARD gives it. An empty string is the
// zero Shard (no sharding).
func ParseShard(v string) (Shard, error) {
	v = strings.TrimSpace(v)
	if v == "" {
		return Shard{}, nil
	}
	k, n, ok := strings.Cut(v, "/")
	if !ok {
		return Shard{}, fmt.Errorf("shard %q: write k/N, e.g. 0/2 for the first of two instances", v)
	}
	ki, err1 := strconv.Atoi(strings.TrimSpace(k))
	ni, err2 := strconv.Atoi(strings.TrimSpace(n))
	if err1 != nil || err2 != nil {
		return Shard{}, fmt.Errorf("shard %q: k and N must be whole numbers, e.g. 0/2", v)
	}
	s := Shard{Index: ki, Of: ni}
	if ni == 0 {
		s.Of = -1 // "0/0" is not the zero Shard: name the problem
	}
	if err := s.validate(); err != nil {
		return Shard{}, err
	}
	return s, nil
}

func (s Shard) validate() error {
	switch {
	case s.Of == 0 && s.Index == 0:
		return nil
	case s.Of < 2:
		return fmt.Errorf("shard %d/%d: N must be at least 2 (run without a shard for a single instance)", s.Index, max(s.Of, 0))
	case s.Of > 1024:
		return fmt.Errorf("shard %d/%d: N must be at most 1024", s.Index, s.Of)
	case s.Index < 0 || s.Index >= s.Of:
		return fmt.Errorf("shard %d/%d: k must be between 0 and %d", s.Index, s.Of, s.Of-1)
	}
	return nil
}

// Owns reports whether company belongs to this shard (always true when not sharded).
func (s Shard) Owns(company int64) bool {
	if !s.Enabled() {
		return true
	}
	return company%int64(s.Of) == int64(s.Index)
}

// Filter is the row filter of the shard's publication, e.g. "company_id % 2 = 0"; "" when not
// sharded.
func (s Shard) Filter() string {
	if !s.Enabled() {
		return ""
	}
	return fmt.Sprintf("company_id %% %d = %d", s.Of, s.Index)
}

// Name derives the shard's default slot or publication name from base: "gessync" becomes
// "gessync_s0_of_2" for shard 0/2. Unsharded, it returns base.
func (s Shard) Name(base string) string {
	if !s.Enabled() {
		return base
	}
	return fmt.Sprintf("%s_s%d_of_%d", base, s.Index, s.Of)
}

// PublicationSQL is the CREATE PUBLICATION statement for the shard (or the whole, unsharded).
func (s Shard) PublicationSQL(publication string) string {
	if !s.Enabled() {
		return fmt.Sprintf("CREATE PUBLICATION %s FOR TABLE %s", publication, strings.Join(Tables, ", "))
	}
	parts := make([]string, len(Tables))
	for i, t := range Tables {
		parts[i] = fmt.Sprintf("%s WHERE (%s)", t, s.Filter())
	}
	return fmt.Sprintf("CREATE PUBLICATION %s FOR TABLE %s", publication, strings.Join(parts, ", "))
}

// IdentityColumns are the columns a table's replica identity must include before gessync
// publishes it with a shard's row filter: company_id for the filter, id so that a DELETE still
// names the record.
var IdentityColumns = []string{"company_id", "id"}

// TableIdentity is a GES table's replica identity as PostgreSQL holds it.
type TableIdentity struct {
	Table string
	// Kind is pg_class.relreplident: 'd' default (primary key), 'i' index, 'f' full, 'n' nothing.
	Kind byte
	// Index names the REPLICA IDENTITY USING INDEX index (Kind 'i') or the primary key (Kind 'd').
	Index string
	// Columns are the columns a DELETE's old key carries: the index's columns ('d', 'i'); nil
	// for 'f' (every column) and 'n' (none).
	Columns []string
}

// Covers reports whether the identity includes every column in cols.
func (ti TableIdentity) Covers(cols ...string) bool {
	if ti.Kind == 'f' {
		return true
	}
	for _, c := range cols {
		found := false
		for _, have := range ti.Columns {
			found = found || have == c
		}
		if !found {
			return false
		}
	}
	return true
}

// Describe says in words what the identity is, e.g. "REPLICA IDENTITY DEFAULT (primary key id)".
func (ti TableIdentity) Describe() string {
	switch ti.Kind {
	case 'f':
		return "REPLICA IDENTITY FULL"
	case 'n':
		return "REPLICA IDENTITY NOTHING"
	case 'i':
		return fmt.Sprintf("REPLICA IDENTITY USING INDEX %s (%s)", ti.Index, strings.Join(ti.Columns, ", "))
	}
	if ti.Index == "" {
		return "REPLICA IDENTITY DEFAULT (no primary key)"
	}
	return fmt.Sprintf("REPLICA IDENTITY DEFAULT (primary key %s)", strings.Join(ti.Columns, ", "))
}

// IdentityFixSQL is what a DBA runs so that table's replica identity covers company_id and id
// without blocking GES's writes: a unique index built concurrently, then used as the identity.
func IdentityFixSQL(table string) string {
	idx := table + "_company_id_id_key"
	return fmt.Sprintf("CREATE UNIQUE INDEX CONCURRENTLY %s ON %s (company_id, id); ALTER TABLE %s REPLICA IDENTITY USING INDEX %s;", idx, table, table, idx)
}

// ShardIdentity reads the replica identity of each GES table (cdc.Tables) through pg_catalog.
func ShardIdentity(ctx context.Context, conn *pgx.Conn) ([]TableIdentity, error) {
	out := make([]TableIdentity, 0, len(Tables))
	for _, table := range Tables {
		ti := TableIdentity{Table: table}
		var kind string
		var index *string
		var cols []string
		err := conn.QueryRow(ctx, `SELECT c.relreplident::text, ix.name, coalesce(ix.cols, '{}')
			FROM pg_class c
			LEFT JOIN LATERAL (
				SELECT i.indexrelid::regclass::text AS name,
					(SELECT array_agg(a.attname::text ORDER BY k.n) FROM unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, n)
						JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum) AS cols
				FROM pg_index i
				WHERE i.indrelid = c.oid AND CASE c.relreplident WHEN 'i' THEN i.indisreplident WHEN 'd' THEN i.indisprimary ELSE false END
				LIMIT 1) ix ON true
			WHERE c.oid = to_regclass($1)`, table).Scan(&kind, &index, &cols)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil, &SetupError{Table: table, Reason: "table not found in the GES database", Action: "check GES_DATABASE_URL points at the GES database"}
		}
		if err != nil {
			return nil, fmt.Errorf("reading the replica identity of %s: %w", table, err)
		}
		if len(kind) == 1 {
			ti.Kind = kind[0]
		}
		if index != nil {
			ti.Index = *index
		}
		if ti.Kind == 'd' || ti.Kind == 'i' {
			ti.Columns = cols
		}
		out = append(out, ti)
	}
	return out, nil
}

// CheckShardIdentity returns a *SetupError listing every GES table whose replica identity does
// not cover company_id and id, with the statements the DBA must run; nil when all do. It only
// reads the catalog, so a standby instance can run it before it leads.
func CheckShardIdentity(ctx context.Context, conn *pgx.Conn, cfg Config) error {
	if !cfg.Shard.Enabled() {
		return nil
	}
	ids, err := ShardIdentity(ctx, conn)
	if err != nil {
		return err
	}
	var tables, have, fix []string
	for _, ti := range ids {
		if ti.Covers(IdentityColumns...) {
			continue
		}
		tables = append(tables, ti.Table)
		have = append(have, ti.Table+" has "+ti.Describe())
		fix = append(fix, IdentityFixSQL(ti.Table))
	}
	if len(tables) == 0 {
		return nil
	}
	return &SetupError{
		Table: strings.Join(tables, ", "),
		Reason: fmt.Sprintf("shard %s needs publication %s filtered on company_id, and PostgreSQL refuses every UPDATE and DELETE of a table "+
			"published with a row filter on columns outside its replica identity, which would stop GES; the identity must include company_id "+
			"and id, but %s; so gessync will not create publication %s", cfg.Shard, cfg.Publication, strings.Join(have, "; "), cfg.Publication),
		Action: "ask the DBA to run, in the GES database: " + strings.Join(fix, " ") + " Or run one instance without GESSYNC_SHARD, which needs none of this",
	}
}

// prepareShard runs before checkPublication. Sharded, it refuses unless every table's replica
// identity covers company_id and id, checks an existing publication's row filters against the
// shard, and creates a missing publication with them (never before the identity check passed).
// Unsharded, it refuses a publication that filters rows (it belongs to a shard).
func prepareShard(ctx context.Context, conn *pgx.Conn, cfg Config) error {
	var exists bool
	if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)`, cfg.Publication).Scan(&exists); err != nil {
		return fmt.Errorf("reading publication %s: %w", cfg.Publication, err)
	}
	filters := map[string]string{} // table -> row filter ("" none), for the tables published
	if exists {
		rows, err := conn.Query(ctx, `SELECT pt.tablename, coalesce(pt.rowfilter, '') FROM pg_publication_tables pt
			JOIN (SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
			WHERE c.oid = ANY (ARRAY[to_regclass('customers'), to_regclass('invoices'), to_regclass('payments')])) t ON t.nspname = pt.schemaname AND t.relname = pt.tablename
			WHERE pt.pubname = $1`, cfg.Publication)
		if err != nil {
			return fmt.Errorf("reading the row filters of publication %s: %w", cfg.Publication, err)
		}
		for rows.Next() {
			var t, f string
			if err := rows.Scan(&t, &f); err != nil {
				rows.Close()
				return fmt.Errorf("reading the row filters of publication %s: %w", cfg.Publication, err)
			}
			filters[t] = f
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return fmt.Errorf("reading the row filters of publication %s: %w", cfg.Publication, err)
		}
	}
	if !cfg.Shard.Enabled() {
		for _, t := range Tables {
			if f := filters[t]; f != "" {
				return &SetupError{Table: t, Reason: fmt.Sprintf("publication %s publishes only the rows WHERE %s: it belongs to a shard, and an instance without GESSYNC_SHARD must see every company", cfg.Publication, f),
					Action: "set GESSYNC_SHARD to the shard it belongs to, or GESSYNC_PUBLICATION to an unfiltered publication"}
			}
		}
		return nil
	}
	if err := CheckShardIdentity(ctx, conn, cfg); err != nil {
		var se *SetupError
		if exists && errors.As(err, &se) {
			se.Reason += fmt.Sprintf(". Publication %s already exists with row filters, so GES's UPDATEs and DELETEs of these tables fail now", cfg.Publication)
			se.Action += fmt.Sprintf("; or, to give GES back its writes at once, DROP PUBLICATION %s", cfg.Publication)
		}
		return err
	}
	create := cfg.Shard.PublicationSQL(cfg.Publication)
	if !exists {
		if cfg.NoCreate {
			return &SetupError{Reason: fmt.Sprintf("publication %s of shard %s does not exist", cfg.Publication, cfg.Shard), Action: "run: " + create}
		}
		if _, err := conn.Exec(ctx, create); err != nil {
			return &SetupError{Reason: fmt.Sprintf("creating publication %s for shard %s: %v", cfg.Publication, cfg.Shard, err), Action: "ask the DBA to run: " + create}
		}
		cfg.Logger.Info("created shard publication", "publication", cfg.Publication, "shard", cfg.Shard.String(), "filter", cfg.Shard.Filter())
		return nil
	}
	want := normaliseFilter(cfg.Shard.Filter())
	var wrong []string
	for _, t := range Tables {
		f, published := filters[t]
		switch {
		case !published:
			return &SetupError{Table: t, Reason: fmt.Sprintf("not in publication %s", cfg.Publication),
				Action: fmt.Sprintf("ALTER PUBLICATION %s ADD TABLE %s WHERE (%s)", cfg.Publication, t, cfg.Shard.Filter())}
		case normaliseFilter(f) != want:
			got := f
			if got == "" {
				got = "no row filter"
			}
			wrong = append(wrong, fmt.Sprintf("%s has %s", t, got))
		}
	}
	if len(wrong) > 0 {
		sort.Strings(wrong)
		return &SetupError{Reason: fmt.Sprintf("publication %s does not match shard %s (row filter %s): %s", cfg.Publication, cfg.Shard, cfg.Shard.Filter(), strings.Join(wrong, "; ")),
			Action: fmt.Sprintf("DROP PUBLICATION %s (gessync creates it again with the shard's filter), or choose another GESSYNC_PUBLICATION", cfg.Publication)}
	}
	return nil
}

var filterNoise = regexp.MustCompile(`\s+|[()]|::(bigint|integer|int8|int4|numeric)`)

// normaliseFilter reduces a row filter to a comparable form: PostgreSQL deparses
// "company_id % 2 = 0" as "((company_id % (2)::bigint) = 0)"; both become "company_id%2=0".
func normaliseFilter(f string) string { return filterNoise.ReplaceAllString(f, "") }
