package e2e_test

import (
	"context"
	"fmt"
	"math/rand"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/shopspring/decimal"
	"github.com/stretchr/testify/require"

	"github.com/gessync/gessync/sink/sagetest"
	"github.com/gessync/gessync/transform"
)

// chaosWorkload writes a random but valid GES history for a few companies.
type chaosWorkload struct {
	rng       *rand.Rand
	companies int
	next      map[string]int64
	customers map[int][]int64 // by company
	drafts    map[int][]int64
	issued    map[int][]int64
	payments  map[int][]int64
	changes   int
}

func newChaosWorkload(seed int64, companies int) *chaosWorkload {
	return &chaosWorkload{rng: rand.New(rand.NewSource(seed)), companies: companies, next: map[string]int64{"customers": 1000, "invoices": 2000, "payments": 3000},
		customers: map[int][]int64{}, drafts: map[int][]int64{}, issued: map[int][]int64{}, payments: map[int][]int64{}}
}

func (w *chaosWorkload) id(table string) int64 { w.next[table]++; return w.next[table] }

func (w *chaosWorkload) pick(ids []int64) (int64, int, bool) {
	if len(ids) == 0 {
		return 0, 0, false
	}
	i := w.rng.Intn(len(ids))
	return ids[i], i, true
}

// lines returns random invoice lines and GES's totals for them (schema.sql's formula).
func (w *chaosWorkload) lines() (string, decimal.Decimal, decimal.Decimal, decimal.Decimal) {
	var parts []string
	var inv transform.Invoice
	for i := 0; i < 1+w.rng.Intn(3); i++ {
		qty := decimal.NewFromInt(int64(1 + w.rng.Intn(3)))
		price := decimal.New(int64(500+w.rng.Intn(20000)), -2)
		rate := []int64{20, 5, 0}[w.rng.Intn(3)]
		r := decimal.NewFromInt(rate)
		inv.Lines = append(inv.Lines, transform.Line{Quantity: qty, UnitPrice: price, VATRate: &r})
		parts = append(parts, fmt.Sprintf(`{"description":"Job item %d","quantity":%s,"unit_price":%s,"vat_rate":%d,"kind":"labour"}`, i, qty, price.StringFixed(2), rate))
	}
	net, vat, total := transform.Totals(inv)
	return "[" + strings.Join(parts, ",") + "]", net, vat, total
}

// step makes one random change in its own transaction.
func (w *chaosWorkload) step(ctx context.Context, db *pgx.Conn) error {
	c := 1 + w.rng.Intn(w.companies)
	exec := func(sql string, args ...any) error {
		w.changes++
		_, err := db.Exec(ctx, sql, args...)
		return err
	}
	switch op := w.rng.Intn(12); {
	case op == 0 || len(w.customers[c]) == 0:
		id := w.id("customers")
		notes := ""
		if w.rng.Intn(4) == 0 {
			notes = strings.Repeat(fmt.Sprintf("Boiler in loft %x. ", w.rng.Int63()), 400) // multi-kilobyte
		}
		w.customers[c] = append(w.customers[c], id)
		return exec(`INSERT INTO customers (id, company_id, account_ref, first_name, last_name, email, postcode, notes) VALUES ($1, $2, $3, 'Chaos', $4, $5, 'LS1 1AA', $6)`,
			id, c, fmt.Sprintf("CH%d", id), fmt.Sprintf("Customer %d", id), fmt.Sprintf("c%d@example.com", id), notes)
	case op == 1:
		id, _, _ := w.pick(w.customers[c])
		return exec(`UPDATE customers SET email = $2, updated_at = now() WHERE id = $1`, id, fmt.Sprintf("e%d.%d@example.com", id, w.rng.Intn(1000)))
	case op == 2:
		id, _, _ := w.pick(w.customers[c])
		return exec(`UPDATE customers SET archived = true, updated_at = now() WHERE id = $1`, id)
	case op <= 4:
		cust, _, _ := w.pick(w.customers[c])
		id := w.id("invoices")
		lines, net, vat, total := w.lines()
		status := "issued"
		if w.rng.Intn(3) == 0 {
			status = "draft"
			w.drafts[c] = append(w.drafts[c], id)
		} else {
			w.issued[c] = append(w.issued[c], id)
		}
		return exec(`INSERT INTO invoices (id, company_id, customer_id, invoice_number, status, issue_date, line_items, subtotal, vat_total, total)
			VALUES ($1, $2, $3, $4, $5, CASE WHEN $5 = 'issued' THEN date '2026-11-01' END, $6, $7, $8, $9)`, id, c, cust, fmt.Sprintf("CH-%d", id), status, lines, net, vat, total)
	case op == 5:
		id, i, ok := w.pick(w.drafts[c])
		if !ok {
			return nil
		}
		w.drafts[c] = append(w.drafts[c][:i], w.drafts[c][i+1:]...)
		if w.rng.Intn(2) == 0 {
			return exec(`DELETE FROM invoices WHERE id = $1`, id)
		}
		w.issued[c] = append(w.issued[c], id)
		return exec(`UPDATE invoices SET status = 'issued', issue_date = date '2026-11-02', updated_at = now() WHERE id = $1`, id)
	case op == 6:
		id, _, ok := w.pick(w.issued[c])
		if !ok {
			return nil
		}
		lines, net, vat, total := w.lines()
		return exec(`UPDATE invoices SET line_items = $2, subtotal = $3, vat_total = $4, total = $5, updated_at = now() WHERE id = $1 AND status = 'issued'`, id, lines, net, vat, total)
	case op == 7:
		id, _, ok := w.pick(w.issued[c])
		if !ok || w.rng.Intn(3) != 0 {
			return nil
		}
		return exec(`UPDATE invoices SET status = 'void', void_reason = 'Chaos void', updated_at = now() WHERE id = $1`, id)
	case op <= 9:
		inv, _, ok := w.pick(w.issued[c])
		if !ok {
			return nil
		}
		id := w.id("payments")
		w.payments[c] = append(w.payments[c], id)
		return exec(`INSERT INTO payments (id, company_id, invoice_id, amount, method, paid_on, reference) VALUES ($1, $2, $3, $4, 'card', date '2026-11-05', $5)`,
			id, c, inv, decimal.New(int64(100+w.rng.Intn(30000)), -2), fmt.Sprintf("P%d", id))
	case op == 10:
		id, _, ok := w.pick(w.payments[c])
		if !ok {
			return nil
		}
		return exec(`UPDATE payments SET amount = $2, updated_at = now() WHERE id = $1`, id, decimal.New(int64(100+w.rng.Intn(30000)), -2))
	default:
		id, i, ok := w.pick(w.payments[c])
		if !ok {
			return nil
		}
		w.payments[c] = append(w.payments[c][:i], w.payments[c][i+1:]...)
		return exec(`DELETE FROM payments WHERE id = $1`, id)
	}
}

// TestChaos runs a workload while the daemon is killed, PostgreSQL restarted, the replication
// connection cut and the sandbox made to fail; at the end every company reconciles clean.
// GESSYNC_CHAOS_LONG=1 runs the long form; GESSYNC_CHAOS_SEED picks the seed.
func TestChaos(t *testing.T) {
	steps, companies, settle := 150, 3, time.Minute
	if os.Getenv("GESSYNC_CHAOS_LONG") != "" {
		steps, settle = 3000, 15*time.Minute
	}
	seed := time.Now().UnixNano()
	if s, err := strconv.ParseInt(os.Getenv("GESSYNC_CHAOS_SEED"), 10, 64); err == nil {
		seed = s
	}
	t.Logf("chaos seed %d (GESSYNC_CHAOS_SEED to repeat)", seed)
	ctx := context.Background()
	e := newEnvWith(t, sagetest.Options{RateLimit: -1}) // 429s are tested elsewhere; here they would only slow the run
	e.exec(`INSERT INTO companies (id, name) VALUES (3, 'Calder Gas')`)
	extra := []string{"GESSYNC_PARK_AFTER=5s", "GESSYNC_SAGE_REQUESTS_PER_MINUTE=100000", "GESSYNC_LOG_LEVEL=debug"}
	e.start(extra...)
	for c := 1; c <= companies; c++ {
		e.connect(c)
	}
	businesses := map[int]string{}
	for c := 1; c <= companies; c++ {
		businesses[c] = e.business(c - 1).ID
	}
	w := newChaosWorkload(seed, companies)
	rng := rand.New(rand.NewSource(seed + 1))
	faults := map[string]int{}
	revoked := map[int]bool{}
	for i := 0; i < steps; i++ {
		require.NoError(t, w.step(ctx, e.db), "step %d", i)
		switch f := rng.Intn(40); f {
		case 0, 1:
			faults["sigkill"]++
			e.kill()
			e.start(extra...)
		case 2:
			faults["postgres restart"]++
			e.db.Close(ctx)
			require.NoError(t, pg.Kill())
			require.NoError(t, pg.Restart(ctx))
			var err error
			e.db, err = pgx.Connect(ctx, e.gesURL)
			require.NoError(t, err)
		case 3:
			faults["replication cut"]++
			e.exec(`SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = $1 AND active_pid IS NOT NULL`, e.dbName)
		case 4:
			faults["sage errors and resets"]++
			e.setFaults(`{"error_rate": 0.2, "reset_rate": 0.1}`)
		case 5:
			faults["sage replies dropped"]++
			e.setFaults(`{"drop_rate": 0.2}`)
		case 6:
			faults["sage healthy"]++
			e.setFaults(`{}`)
		case 7:
			c := 1 + rng.Intn(companies)
			if !revoked[c] {
				faults["token revoked"]++
				revoked[c] = true
				e.setFaults(`{"businesses": {"` + businesses[c] + `": {"revoke_tokens": true}}}`)
			}
		}
	}
	// Heal: Sage answers, lost connections are reconnected to their businesses.
	e.setFaults(`{}`)
	if e.proc() == nil {
		e.start(extra...)
	}
	for c := range revoked {
		// Right after a PostgreSQL restart a pooled connection may fail once: retry, as a
		// person would.
		e.eventually(30*time.Second, fmt.Sprintf("company %d reconnected", c), func() bool {
			params := "business_id=" + businesses[c]
			e.proxy.authorizeExtra.Store(&params)
			status, _, err := e.tryConnect(c)
			return err == nil && status == 200
		})
	}
	e.caughtUpWithin(settle)
	e.eventually(settle, "every backlog drained", func() bool {
		st, ok := e.tryStatus()
		if !ok {
			return false
		}
		for _, c := range st.Companies {
			if c.Backlog > 0 || c.Pending > 0 {
				return false
			}
		}
		return true
	})
	e.caughtUp()
	t.Logf("chaos: %d steps, %d GES changes, faults %v", steps, w.changes, faults)
	for c := 1; c <= companies; c++ {
		out, err := e.reconcile(strconv.Itoa(c))
		require.NoError(t, err, "company %d (seed %d):\n%s\nopen errors: %v", c, seed, out, e.openLog(c))
	}
}
