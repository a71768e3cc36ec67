package e2e_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/gessync/gessync/sink/sagetest"
)

// One company whose Sage refuses for long never holds the others back: its changes move to the
// durable backlog, the slot moves on, and they arrive, in their latest state, once it is back.
func TestAStuckCompanyNeverPinsTheSlot(t *testing.T) {
	e := newEnv(t)
	e.exec(`INSERT INTO companies (id, name) VALUES (3, 'Calder Gas')`)
	e.start("GESSYNC_PARK_AFTER=2s")
	for c := 1; c <= 3; c++ {
		e.connect(c)
	}
	stuck := e.business(1).ID
	e.setFaults(`{"businesses": {"` + stuck + `": {"subscription_lapsed": true}}}`)

	for c := 1; c <= 3; c++ {
		e.exec(fmt.Sprintf(`INSERT INTO customers (id, company_id, first_name, last_name, email) VALUES (%[1]d, %[1]d, 'Customer', 'Of %[1]d', 'c%[1]d@example.com')`, c))
		e.exec(fmt.Sprintf(`INSERT INTO invoices (id, company_id, customer_id, invoice_number, status, issue_date, line_items, subtotal, vat_total, total)
			VALUES (%[1]d, %[1]d, %[1]d, 'INV-%[1]d', 'issued', '2026-11-25', '[{"description":"Service","quantity":1,"unit_price":100,"vat_rate":20}]', 100, 20, 120)`, c))
		e.exec(fmt.Sprintf(`INSERT INTO payments (id, company_id, invoice_id, amount, method, paid_on) VALUES (%[1]d, %[1]d, %[1]d, 50, 'cash', '2026-11-26')`, c))
	}
	e.exec(`UPDATE customers SET email = 'latest@example.com', updated_at = now() WHERE id = 2`)
	e.exec(`DELETE FROM payments WHERE id = 2`)
	committed := e.walLSN()
	st := e.caughtUp() // the slot moves on although company 2's Sage refuses
	e.eventually(30*time.Second, "the slot passed the stuck company's changes", func() bool { return e.slotFlush() >= committed })
	require.Len(t, e.business(0).SalesInvoices, 1, "company 1 synced")
	require.Len(t, e.business(2).SalesInvoices, 1, "company 3 synced")
	require.Empty(t, e.business(1).Contacts, "company 2's Sage refuses")
	var backlog int
	for _, c := range st.Companies {
		if c.CompanyID == 2 {
			backlog = c.Backlog
		}
	}
	require.Equal(t, 3, backlog, "one backlog entry per record (customer, invoice, payment)")

	// Later changes of the parked company go straight to the backlog.
	e.exec(`INSERT INTO customers (id, company_id, first_name, last_name) VALUES (22, 2, 'Another', 'Customer')`)
	e.caughtUp()

	e.setFaults(`{}`)
	e.eventually(60*time.Second, "company 2's backlog drained", func() bool {
		for _, c := range e.status().Companies {
			if c.CompanyID == 2 {
				return c.Backlog == 0
			}
		}
		return false
	})
	b := e.business(1)
	require.Len(t, b.Contacts, 2)
	require.Len(t, b.SalesInvoices, 1)
	require.Empty(t, b.ContactPayments, "the payment deleted while parked never reaches Sage")
	emails := map[string]bool{}
	for _, c := range b.Contacts {
		if c.MainContactPerson != nil {
			emails[c.MainContactPerson.Email] = true
		}
	}
	require.True(t, emails["latest@example.com"], "the customer arrives in its latest state")
}

// One company of fifty is down for the whole run: the WAL its slot retains stays flat, and the
// down company's records arrive once it is back.
func TestOneCompanyOfFiftyDownKeepsRetainedWALFlat(t *testing.T) {
	const companies, rounds = 50, 5
	e := newEnvWith(t, sagetest.Options{RateLimit: -1})
	e.exec(`INSERT INTO companies (id, name) SELECT g, 'Company ' || g FROM generate_series(3, 50) g`)
	e.start("GESSYNC_PARK_AFTER=2s", "GESSYNC_SAGE_REQUESTS_PER_MINUTE=1000000")
	for c := 1; c <= companies; c++ {
		e.connect(c)
	}
	down := e.business(6).ID // company 7
	e.setFaults(`{"businesses": {"` + down + `": {"subscription_lapsed": true}}}`)
	var retained []int64
	for r := 0; r < rounds; r++ {
		e.exec(fmt.Sprintf(`INSERT INTO customers (id, company_id, first_name, last_name) SELECT %d * 100 + g, g, 'Round %d', 'Customer ' || g FROM generate_series(1, %d) g`, r+1, r, companies))
		e.exec(fmt.Sprintf(`INSERT INTO invoices (id, company_id, customer_id, invoice_number, status, issue_date, line_items, subtotal, vat_total, total)
			SELECT %[1]d * 100 + g, g, %[1]d * 100 + g, 'R%[1]d-' || g, 'issued', '2026-11-25', '[{"description":"Service","quantity":1,"unit_price":100,"vat_rate":20}]', 100, 20, 120
			FROM generate_series(1, %[2]d) g`, r+1, companies))
		committed := e.walLSN()
		e.caughtUp()
		e.eventually(30*time.Second, "the slot passed this round", func() bool { return e.slotFlush() >= committed })
		var bytes int64
		require.NoError(t, e.db.QueryRow(context.Background(), `SELECT pg_current_wal_lsn() - confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = $1`, e.dbName).Scan(&bytes))
		retained = append(retained, bytes)
	}
	t.Logf("WAL retained by the slot after each round, bytes: %v", retained)
	for _, b := range retained {
		require.Less(t, b, int64(1<<20), "retained WAL stays flat while company 7 is down: %v", retained)
	}
	require.Empty(t, e.business(6).Contacts, "company 7's Sage refused throughout")
	require.Len(t, e.business(0).SalesInvoices, rounds, "the others synced every round")

	e.setFaults(`{}`)
	e.eventually(2*time.Minute, "company 7's backlog drained", func() bool {
		for _, c := range e.status().Companies {
			if c.CompanyID == 7 {
				return c.Backlog == 0 && c.State == "connected"
			}
		}
		return false
	})
	b := e.business(6)
	require.Len(t, b.Contacts, rounds)
	require.Len(t, b.SalesInvoices, rounds)
}
