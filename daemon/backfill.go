package daemon

import (
	"context"

	"fmt"
	"sync"
	"time"

	"github.com/gessync/gessync/cdc"
	"github.com/gessync/gessync/state"
)

// backfillPage is how many records a backfill queues at a time; the cursor moves after each page.
const backfillPage = 200

// BackfillProgress is a backfill as /status and the CLI show it.
type BackfillProgress struct {
	CompanyID int64      `json:"company_id"`
	Since     string     `json:"since,omitempty"`
	Status    string     `json:"status"`
	Total     int64      `json:"total"`
	Done      int64      `json:"done"`
	Table     string     `json:"table"`
	Rate      float64    `json:"rate_per_second"`
	ETA       float64    `json:"eta_seconds"`
	Error     string     `json:"error,omitempty"`
	StartedAt time.Time  `json:"started_at"`
	Finished  *time.Time `json:"finished_at,omitempty"`
}

func progressOf(b state.Backfill) BackfillProgress {
	p := BackfillProgress{CompanyID: b.CompanyID, Status: b.Status, Total: b.Total, Done: b.Done, Table: b.Table, Error: b.Error, StartedAt: b.StartedAt, Finished: b.FinishedAt}
	if b.Since != nil {
		p.Since = b.Since.Format(time.DateOnly)
	}
	end := time.Now()
	if b.FinishedAt != nil {
		end = *b.FinishedAt
	}
	if secs := end.Sub(b.StartedAt).Seconds(); secs > 0 {
		p.Rate = float64(b.Done) / secs
	}
	if p.Rate > 0 && b.Status == "running" && b.Total > b.Done {
		p.ETA = float64(b.Total-b.Done) / p.Rate
	}
	return p
}

// backfillWhere selects what a backfill syncs of table: issued (and voided) invoices, every
// payment and customer; with since, only invoices issued and payments taken on or after it,
// and the customers of those invoices.
func backfillWhere(table string, since *time.Time) string {
	date := ""
	if since != nil {
		date = "'" + since.Format(time.DateOnly) + "'::date"
	}
	switch table {
	case "customers":
		if date != "" {
			return "id IN (SELECT customer_id FROM invoices WHERE status IN ('issued', 'void') AND issue_date >= " + date + ")"
		}
	case "invoices":
		if date != "" {
			return "status IN ('issued', 'void') AND issue_date >= " + date
		}
		return "status IN ('issued', 'void')"
	case "payments":
		if date != "" {
			return "paid_on >= " + date
		}
	}
	return ""
}

// StartBackfill starts syncing company's existing customers, issued invoices and payments
// (customers first) while the daemon streams. Each record goes through the company's queue
// behind its live changes and is re-read when applied, so where backfill meets streaming
// nothing is missed and nothing is applied twice; matching links what Sage already has.
func (d *Daemon) StartBackfill(ctx context.Context, companyID int64, since *time.Time) (BackfillProgress, error) {
	if err := d.NotHere(companyID); err != nil {
		return BackfillProgress{}, err // only the instance that streams the company may backfill it
	}
	if _, err := d.Store.Connection(ctx, companyID); err != nil {
		return BackfillProgress{}, fmt.Errorf("company %d is not connected to Sage: connect it first", companyID)
	}
	var total int64
	for _, t := range cdc.Tables {
		n, err := d.Rows.Count(ctx, t, companyID, backfillWhere(t, since))
		if err != nil {
			return BackfillProgress{}, err
		}
		total += n
	}
	b, err := d.Store.StartBackfill(ctx, companyID, since, total)
	if err != nil {
		return BackfillProgress{}, err
	}
	d.launchBackfill(companyID)
	return progressOf(b), nil
}

// Backfill returns company's latest backfill.
func (d *Daemon) Backfill(ctx context.Context, companyID int64) (BackfillProgress, error) {
	b, err := d.Store.Backfill(ctx, companyID)
	if err != nil {
		return BackfillProgress{}, err
	}
	return progressOf(b), nil
}

type backfills struct {
	mu      sync.Mutex
	running map[int64]bool
	ctx     context.Context
	wg      sync.WaitGroup
}

// resumeBackfills restarts, from their cursors, the backfills a previous run left running.
func (d *Daemon) resumeBackfills(ctx context.Context) error {
	d.bf.mu.Lock()
	d.bf.ctx = ctx
	d.bf.mu.Unlock()
	all, err := d.Store.Backfills(ctx)
	if err != nil {
		return err
	}
	for _, b := range all {
		if b.Status == "running" && d.cfg.CDC.Shard.Owns(b.CompanyID) { // another shard's is its own
			d.log.Info("resuming backfill", "company_id", b.CompanyID, "table", b.Table, "after_id", b.AfterID, "done", b.Done, "total", b.Total)
			d.launchBackfill(b.CompanyID)
		}
	}
	return nil
}

func (d *Daemon) launchBackfill(companyID int64) {
	d.bf.mu.Lock()
	defer d.bf.mu.Unlock()
	if d.bf.running == nil {
		d.bf.running = map[int64]bool{}
	}
	if d.bf.running[companyID] || d.bf.ctx == nil {
		return
	}
	d.bf.running[companyID] = true
	d.bf.wg.Add(1)
	go func() {
		defer d.bf.wg.Done()
		defer func() { d.bf.mu.Lock(); delete(d.bf.running, companyID); d.bf.mu.Unlock() }()
		if err := d.runBackfill(d.bf.ctx, companyID); err != nil && d.bf.ctx.Err() == nil {
			d.log.Error("backfill failed", "company_id", companyID, "err", err)
			_ = d.Store.FinishBackfill(context.Background(), companyID, err.Error())
		}
	}()
}

func (d *Daemon) runBackfill(ctx context.Context, companyID int64) error {
	b, err := d.Store.Backfill(ctx, companyID)
	if err != nil {
		return err
	}
	started := false
	for _, table := range cdc.Tables {
		if !started && table != b.Table {
			continue
		}
		started = true
		after := int64(0)
		if table == b.Table {
			after = b.AfterID
		}
		for {
			rows, err := d.Rows.Page(ctx, nil, table, companyID, after, backfillPage, backfillWhere(table, b.Since))
			if err != nil {
				return err
			}
			if len(rows) == 0 {
				break
			}
			if err := d.queueAndWait(ctx, companyID, table, rows); err != nil {
				return err
			}
			last, _ := rows[len(rows)-1].ID()
			after = last
			b.Done += int64(len(rows))
			if err := d.Store.SaveBackfillProgress(ctx, companyID, table, after, b.Done); err != nil {
				return err
			}
		}
		b.AfterID = 0
	}
	d.log.Info("backfill done", "company_id", companyID, "records", b.Done)
	return d.Store.FinishBackfill(ctx, companyID, "")
}

// queueAndWait queues rows on the company's worker and waits until every one is handled. When
// the pipeline restarts meanwhile, the page is queued again on the new one.
func (d *Daemon) queueAndWait(ctx context.Context, companyID int64, table string, rows []cdc.Row) error {
	for {
		p := d.pipe.Load()
		if p == nil {
			if err := sleepCtx(ctx, 200*time.Millisecond); err != nil {
				return err
			}
			continue
		}
		var wg sync.WaitGroup
		var mu sync.Mutex
		var firstErr error
		queued := 0
		for _, row := range rows {
			wg.Add(1)
			err := p.Resync(ctx, companyID, table, row, func(err error) {
				if err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
				}
				wg.Done()
			})
			if err != nil {
				wg.Done()
				mu.Lock()
				if firstErr == nil {
					firstErr = err
				}
				mu.Unlock()
				break
			}
			queued++
		}
		wg.Wait()
		if firstErr == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		d.log.Warn("backfill page interrupted; queueing it again", "company_id", companyID, "table", table, "err", firstErr)
		if err := sleepCtx(ctx, time.Second); err != nil {
			return err
		}
	}
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
		return nil
	}
}
