package state

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// Backfill is one company's backfill of its existing GES records: where it is (the table and
// the last GES id handled, in customers → invoices → payments order) and how far it has come.
type Backfill struct {
	CompanyID int64
	// Since limits the backfill to invoices issued and payments taken on or after it (and the
	// customers they need); nil means all history.
	Since *time.Time
	// Status is "running", "done" or "failed".
	Status     string
	Total      int64
	Done       int64
	Table      string
	AfterID    int64
	Error      string
	StartedAt  time.Time
	UpdatedAt  time.Time
	FinishedAt *time.Time
}

const backfillCols = `company_id, since, status, total, done, cur_table, cur_id, error, started_at, updated_at, finished_at`

func scanBackfill(row pgx.Row) (Backfill, error) {
	var b Backfill
	err := row.Scan(&b.CompanyID, &b.Since, &b.Status, &b.Total, &b.Done, &b.Table, &b.AfterID, &b.Error, &b.StartedAt, &b.UpdatedAt, &b.FinishedAt)
	return b, err
}

// StartBackfill records a new backfill of company from the beginning, replacing a finished one.
// It returns ErrBackfillRunning when one is running.
func (s *Store) StartBackfill(ctx context.Context, companyID int64, since *time.Time, total int64) (Backfill, error) {
	b, err := scanBackfill(s.pool.QueryRow(ctx, s.q(`INSERT INTO @s.backfills (company_id, since, total) VALUES ($1, $2, $3)
		ON CONFLICT (company_id) DO UPDATE SET since = excluded.since, status = 'running', total = excluded.total, done = 0,
			cur_table = 'customers', cur_id = 0, error = '', started_at = now(), updated_at = now(), finished_at = NULL
		WHERE @s.backfills.status <> 'running'
		RETURNING `+backfillCols), companyID, since, total))
	if errors.Is(err, pgx.ErrNoRows) {
		return b, fmt.Errorf("company %d: %w", companyID, ErrBackfillRunning)
	}
	if err != nil {
		return b, fmt.Errorf("starting backfill of company %d: %w", companyID, err)
	}
	return b, nil
}

// ErrBackfillRunning means the company already has a backfill running.
var ErrBackfillRunning = errors.New("a backfill is already running")

// SaveBackfillProgress moves the cursor: every record of table up to afterID is handled.
func (s *Store) SaveBackfillProgress(ctx context.Context, companyID int64, table string, afterID, done int64) error {
	_, err := s.pool.Exec(ctx, s.q(`UPDATE @s.backfills SET cur_table = $2, cur_id = $3, done = $4, updated_at = now() WHERE company_id = $1`), companyID, table, afterID, done)
	if err != nil {
		return fmt.Errorf("saving backfill progress of company %d: %w", companyID, err)
	}
	return nil
}

// FinishBackfill marks company's backfill done, or failed with reason when reason is not empty.
func (s *Store) FinishBackfill(ctx context.Context, companyID int64, reason string) error {
	status := "done"
	if reason != "" {
		status = "failed"
	}
	_, err := s.pool.Exec(ctx, s.q(`UPDATE @s.backfills SET status = $2, error = $3, finished_at = now(), updated_at = now() WHERE company_id = $1`), companyID, status, reason)
	if err != nil {
		return fmt.Errorf("finishing backfill of company %d: %w", companyID, err)
	}
	return nil
}

// Backfill returns company's latest backfill, or ErrNotFound.
func (s *Store) Backfill(ctx context.Context, companyID int64) (Backfill, error) {
	b, err := scanBackfill(s.pool.QueryRow(ctx, s.q(`SELECT `+backfillCols+` FROM @s.backfills WHERE company_id = $1`), companyID))
	if errors.Is(err, pgx.ErrNoRows) {
		return b, fmt.Errorf("backfill of company %d: %w", companyID, ErrNotFound)
	}
	if err != nil {
		return b, fmt.Errorf("reading backfill of company %d: %w", companyID, err)
	}
	return b, nil
}

// Backfills returns every company's latest backfill, by company.
func (s *Store) Backfills(ctx context.Context) ([]Backfill, error) {
	rows, err := s.pool.Query(ctx, s.q(`SELECT `+backfillCols+` FROM @s.backfills ORDER BY company_id`))
	if err != nil {
		return nil, fmt.Errorf("reading backfills: %w", err)
	}
	defer rows.Close()
	var out []Backfill
	for rows.Next() {
		b, err := scanBackfill(rows)
		if err != nil {
			return nil, fmt.Errorf("reading backfills: %w", err)
		}
		out = append(out, b)
	}
	return out, rows.Err()
}
