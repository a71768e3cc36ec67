package bench

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// change is one GES transaction of one statement.
type change struct {
	company int64
	sql     string
	args    []any
	// marker is written into a field Sage sees ("" when Sage sees nothing of the change).
	marker string
	// record names the GES record changed ("invoices/42"): gessync coalesces queued changes of
	// one record, so an earlier marker may be overtaken by a later one of the same record.
	record string
}

const invoiceLines = `[{"description":"Annual boiler service","quantity":1,"unit_price":100.00,"vat_rate":20,"kind":"labour"}]`

// cycle is one company's place in the throughput mix: a new customer, an issued invoice for
// them, an edit of that invoice's notes, and a part payment of it; then again. Every change is
// one Sage write (the payment also reads the invoice's outstanding amount): 5 calls per 4
// changes with the default plan.
type cycle struct {
	k                 int
	lastCust, lastInv int64
}

func (w *world) marker(kind byte) string { return fmt.Sprintf("bm%c%d", kind, w.seq.Add(1)) }

func (w *world) newCustomer(company int64, mk string) (change, int64) {
	id := w.nextID.Add(1)
	return change{company: company, marker: mk, record: fmt.Sprintf("customers/%d", id), sql: `INSERT INTO customers (id, company_id, account_ref, title, first_name, last_name, email, address_line1, town, postcode, notes)
		VALUES ($1, $2, 'BM' || $1::bigint, 'Mrs', 'Jane', 'Bench ' || $1::bigint, 'bench' || $1::bigint || '@example.co.uk', '12 Acacia Avenue', 'Leeds', 'LS1 4AB', $3)`,
		args: []any{id, company, "Gate code 1234 " + mk}}, id
}

func (w *world) newInvoice(company, customer int64, status, mk string) (change, int64) {
	id := w.nextID.Add(1)
	return change{company: company, marker: mk, record: fmt.Sprintf("invoices/%d", id), sql: `INSERT INTO invoices (id, company_id, customer_id, invoice_number, status, issue_date, due_date, line_items, subtotal, vat_total, total, notes)
		VALUES ($1, $2, $3, 'BM-' || $1::bigint, $4, current_date, current_date + 30, $5, 100.00, 20.00, 120.00, $6)`,
		args: []any{id, company, customer, status, invoiceLines, "Thank you " + mk}}, id
}

func (w *world) newPayment(company, invoice int64, mk string) change {
	id := w.nextID.Add(1)
	return change{company: company, marker: mk, record: fmt.Sprintf("payments/%d", id), sql: `INSERT INTO payments (id, company_id, invoice_id, amount, method, paid_on, reference)
		VALUES ($1, $2, $3, 50.00, 'card', current_date, $4)`, args: []any{id, company, invoice, mk}}
}

func (w *world) next(company int64, c *cycle) change {
	defer func() { c.k++ }()
	switch c.k % 4 {
	case 0:
		ch, id := w.newCustomer(company, w.marker('c'))
		c.lastCust = id
		return ch
	case 1:
		ch, id := w.newInvoice(company, c.lastCust, "issued", w.marker('i'))
		c.lastInv = id
		return ch
	case 2:
		mk := w.marker('i')
		return change{company: company, marker: mk, record: fmt.Sprintf("invoices/%d", c.lastInv), sql: `UPDATE invoices SET notes = $2, updated_at = now() WHERE id = $1`, args: []any{c.lastInv, "Thank you " + mk}}
	default:
		return w.newPayment(company, c.lastInv, w.marker('p'))
	}
}

// loadResult is what one run of the load generator did.
type loadResult struct {
	Changes  int
	Elapsed  time.Duration // generating
	Markers  []string
	Offered  float64
	Achieved float64 // changes committed per second
}

// execer commits changes on a few connections; one company's changes always go through the
// same connection, in order.
type execer struct {
	w      *world
	conns  []*pgx.Conn
	queues []chan change
	wg     sync.WaitGroup
	mu     sync.Mutex
	err    error
}

func (w *world) newExecer(ctx context.Context, n int) (*execer, error) {
	e := &execer{w: w}
	for i := 0; i < n; i++ {
		c, err := pgx.Connect(ctx, w.url)
		if err != nil {
			e.close(ctx)
			return nil, err
		}
		e.conns = append(e.conns, c)
		q := make(chan change, 256)
		e.queues = append(e.queues, q)
		e.wg.Add(1)
		go func() {
			defer e.wg.Done()
			for ch := range q {
				if e.failed() {
					continue
				}
				if _, err := c.Exec(ctx, ch.sql, ch.args...); err != nil {
					e.mu.Lock()
					if e.err == nil {
						e.err = fmt.Errorf("load: %s: %w", ch.sql[:30], err)
					}
					e.mu.Unlock()
					continue
				}
				if ch.marker != "" {
					now := time.Now()
					w.commitsMu.Lock()
					w.commits[ch.marker] = now
					w.records[ch.marker] = ch.record
					w.commitsMu.Unlock()
				}
			}
		}()
	}
	return e, nil
}

func (e *execer) failed() bool { e.mu.Lock(); defer e.mu.Unlock(); return e.err != nil }

func (e *execer) send(ch change) { e.queues[int(ch.company)%len(e.queues)] <- ch }

// wait closes the queues and waits for every change to commit.
func (e *execer) wait() error {
	for _, q := range e.queues {
		close(q)
	}
	e.queues = nil
	e.wg.Wait()
	return e.err
}

func (e *execer) close(ctx context.Context) {
	if e.queues != nil {
		_ = e.wait()
	}
	for _, c := range e.conns {
		c.Close(ctx)
	}
}

// run offers the throughput mix at rate changes a second, round robin over the companies,
// for total changes, and returns once all are committed.
func (w *world) run(ctx context.Context, rate float64, total int, cycles map[int64]*cycle) (loadResult, error) {
	e, err := w.newExecer(ctx, 4)
	if err != nil {
		return loadResult{}, err
	}
	defer e.close(ctx)
	res := loadResult{Changes: total, Offered: rate}
	start := time.Now()
	for i := 0; i < total; {
		due := total
		if rate > 0 {
			due = min(total, int(rate*time.Since(start).Seconds())+1)
		}
		for ; i < due; i++ {
			co := w.companies[i%len(w.companies)].CompanyID
			c := cycles[co]
			if c == nil {
				c = &cycle{}
				cycles[co] = c
			}
			ch := w.next(co, c)
			res.Markers = append(res.Markers, ch.marker)
			e.send(ch)
		}
		if i < total {
			select {
			case <-ctx.Done():
				return res, ctx.Err()
			case <-time.After(2 * time.Millisecond):
			}
		}
	}
	if err := e.wait(); err != nil {
		return res, err
	}
	res.Elapsed = time.Since(start)
	res.Achieved = float64(total) / res.Elapsed.Seconds()
	return res, nil
}

// latencies returns the commit-to-acknowledgement times of markers (sorted) and how many have
// no acknowledgement.
func (w *world) latencies(markers []string) ([]time.Duration, int) {
	var out []time.Duration
	missing := 0
	// A marker overtaken by a later, acknowledged change of the same record was coalesced into
	// it (one Sage call for both): not missing, and no latency of its own.
	lastAcked := map[string]int{}
	for i, m := range markers {
		if _, ok := w.rec.ack(m); ok && m != "" {
			w.commitsMu.Lock()
			lastAcked[w.records[m]] = i
			w.commitsMu.Unlock()
		}
	}
	for i, m := range markers {
		if m == "" {
			continue
		}
		w.commitsMu.Lock()
		c, ok := w.commits[m]
		rec := w.records[m]
		w.commitsMu.Unlock()
		a, ok2 := w.rec.ack(m)
		if !ok || !ok2 {
			if j, later := lastAcked[rec]; later && j > i && rec != "" {
				continue
			}
			missing++
			continue
		}
		out = append(out, a.Sub(c))
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out, missing
}

func pct(d []time.Duration, p float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	i := int(p * float64(len(d)-1))
	return d[i]
}
