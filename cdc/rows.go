package cdc

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// RowReader reads current GES rows with plain SELECTs, in the same text format pgoutput sends
// (each column in its type's output format: numeric "85.00", boolean "t"/"f"), so a row read
// here and the same row streamed compare equal. gessync reads rows only where the
// stream cannot tell it enough: an unchanged TOAST value, a parent that never reached Sage, a
// backfill.
type RowReader struct {
	pool    *pgxpool.Pool
	selects map[string]string
	columns map[string][]string
}

// NewRowReader returns a RowReader over the GES database pool.
func NewRowReader(pool *pgxpool.Pool) *RowReader {
	r := &RowReader{pool: pool, selects: map[string]string{}, columns: map[string][]string{}}
	for table, cols := range RequiredColumns {
		names := make([]string, 0, len(cols))
		for c := range cols {
			names = append(names, c)
		}
		sort.Strings(names)
		exprs := make([]string, len(names))
		for i, n := range names {
			col := pgx.Identifier{n}.Sanitize()
			exprs[i] = col + "::text"
			if cols[n] == "boolean" {
				// boolean::text is 'true'/'false'; pgoutput sends boolout's 't'/'f'.
				exprs[i] = "CASE WHEN " + col + " THEN 't' WHEN NOT " + col + " THEN 'f' END"
			}
		}
		r.columns[table] = names
		// The alias t: the output columns are named like the table's (id::text is "id"), and
		// ORDER BY would otherwise sort by the text.
		r.selects[table] = "SELECT " + strings.Join(exprs, ", ") + " FROM " + pgx.Identifier{table}.Sanitize() + " AS t"
	}
	return r
}

// ErrRowGone means the row no longer exists (a later delete will follow in the stream).
var ErrRowGone = errors.New("row no longer exists")

// Row returns the current row table/id, or ErrRowGone.
func (r *RowReader) Row(ctx context.Context, table string, id int64) (Row, error) {
	sel, ok := r.selects[table]
	if !ok {
		return nil, fmt.Errorf("reading %s/%d: not a GES table gessync reads", table, id)
	}
	rows, err := r.pool.Query(ctx, sel+" WHERE t.id = $1", id)
	if err != nil {
		return nil, fmt.Errorf("reading %s/%d: %w", table, id, err)
	}
	out, err := r.collect(table, rows)
	if err != nil {
		return nil, fmt.Errorf("reading %s/%d: %w", table, id, err)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("reading %s/%d: %w", table, id, ErrRowGone)
	}
	return out[0], nil
}

// Page returns up to limit rows of table for company with id > afterID, by id; where is an extra
// SQL condition (may be empty) such as "status = 'issued'".
func (r *RowReader) Page(ctx context.Context, q Querier, table string, companyID, afterID int64, limit int, where string) ([]Row, error) {
	sel, ok := r.selects[table]
	if !ok {
		return nil, fmt.Errorf("reading %s: not a GES table gessync reads", table)
	}
	sql := sel + " WHERE t.company_id = $1 AND t.id > $2"
	if where != "" {
		sql += " AND (" + where + ")"
	}
	sql += " ORDER BY t.id LIMIT $3"
	if q == nil {
		q = r.pool
	}
	rows, err := q.Query(ctx, sql, companyID, afterID, limit)
	if err != nil {
		return nil, fmt.Errorf("reading %s of company %d: %w", table, companyID, err)
	}
	return r.collect(table, rows)
}

// Querier is what Page reads through: the pool, or a transaction holding a snapshot.
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

func (r *RowReader) collect(table string, rows pgx.Rows) ([]Row, error) {
	defer rows.Close()
	names := r.columns[table]
	var out []Row
	vals := make([]*string, len(names))
	ptrs := make([]any, len(names))
	for i := range vals {
		ptrs[i] = &vals[i]
	}
	for rows.Next() {
		if err := rows.Scan(ptrs...); err != nil {
			return nil, err
		}
		row := make(Row, len(names))
		for i, n := range names {
			if vals[i] == nil {
				row[n] = Value{Null: true}
			} else {
				row[n] = Value{Text: *vals[i]}
			}
		}
		out = append(out, row)
	}
	return out, rows.Err()
}

// Count returns how many rows of table belong to company and satisfy where (may be empty).
func (r *RowReader) Count(ctx context.Context, table string, companyID int64, where string) (int64, error) {
	if _, ok := r.selects[table]; !ok {
		return 0, fmt.Errorf("counting %s: not a GES table gessync reads", table)
	}
	sql := "SELECT count(*) FROM " + pgx.Identifier{table}.Sanitize() + " WHERE company_id = $1"
	if where != "" {
		sql += " AND (" + where + ")"
	}
	var n int64
	if err := r.pool.QueryRow(ctx, sql, companyID).Scan(&n); err != nil {
		return 0, fmt.Errorf("counting %s of company %d: %w", table, companyID, err)
	}
	return n, nil
}
