// Package e2e_test drives the gessync binary end to end: a real PostgreSQL with wal_level=logical
// (started by the tests), real WAL through the logical slot, and the Sage sandbox.
package e2e_test

import (
	"context"
	"net/http"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/gessync/gessync/sink/sagetest"
)

const customerSQL = `INSERT INTO customers (id, company_id, account_ref, title, first_name, last_name, email, phone,
	address_line1, town, county, postcode) VALUES
	(10, 1, 'BENN01', 'Mrs', 'Margaret', 'Bennett', 'm.bennett@example.co.uk', '0113 496 0123', '14 Larch Grove', 'Leeds', 'West Yorkshire', 'LS6 2AB')`

// Three lines at 20 %, 5 % and 0 %: nets 450.00, 65.97, 4.50; VAT 90.00, 3.30 (3.2985), 0.
const invoiceSQL = `INSERT INTO invoices (id, company_id, customer_id, invoice_number, status, issue_date, due_date, line_items, subtotal, vat_total, total)
	VALUES (20, 1, 10, 'HH-1004', 'issued', '2026-11-25', '2026-12-09',
	'[{"description":"Boiler installation labour","quantity":1,"unit_price":450.00,"vat_rate":20,"kind":"labour"},
	  {"description":"Loft insulation top-up","quantity":3,"unit_price":21.99,"vat_rate":5,"kind":"materials"},
	  {"description":"Gas Safe notification fee","quantity":1,"unit_price":4.50,"vat_rate":0,"kind":"other"}]',
	520.47, 93.30, 613.77)`

const paymentSQL = `INSERT INTO payments (id, company_id, invoice_id, amount, method, paid_on, reference)
	VALUES (30, 1, 20, 300.00, 'bank_transfer', '2026-11-26', 'WHITAKER DEPOSIT')`

func requireOneOfEach(t *testing.T, b sagetest.BusinessDump) {
	t.Helper()
	require.Len(t, b.Contacts, 1, "contacts")
	require.Len(t, b.SalesInvoices, 1, "sales invoices")
	require.Len(t, b.ContactPayments, 1, "contact payments")
}

func TestCustomerInvoicePaymentReachSageAndEditsUpdateTheSameRecords(t *testing.T) {
	e := newSyncedSample(t)

	b := e.business(0)
	requireOneOfEach(t, b)
	c, inv, pay := b.Contacts[0], b.SalesInvoices[0], b.ContactPayments[0]
	require.Equal(t, "Mrs Margaret Bennett", c.Name)
	require.Equal(t, "BENN01", c.Reference)
	require.Equal(t, "m.bennett@example.co.uk", c.MainContactPerson.Email)
	require.Equal(t, "HH-1004", inv.InvoiceNumber)
	require.Equal(t, "HH-1004", inv.Reference)
	require.Equal(t, "520.47", inv.NetAmount.StringFixed(2))
	require.Equal(t, "93.30", inv.TaxAmount.StringFixed(2))
	require.Equal(t, "613.77", inv.TotalAmount.StringFixed(2))
	require.Equal(t, "313.77", inv.OutstandingAmount.StringFixed(2))
	require.Len(t, inv.InvoiceLines, 3)
	require.Equal(t, "300.00", pay.TotalAmount.StringFixed(2))
	require.Len(t, pay.AllocatedArtefacts, 1)
	require.Equal(t, inv.ID, pay.AllocatedArtefacts[0].Artefact.ID)
	require.Equal(t, "300.00", pay.AllocatedArtefacts[0].Amount.StringFixed(2))

	// Edits update the same Sage records.
	e.exec(`UPDATE customers SET email = 'margaret@bennett.example', updated_at = now() WHERE id = 10`)
	e.exec(`UPDATE invoices SET line_items = '[{"description":"Boiler installation labour","quantity":1,"unit_price":500.00,"vat_rate":20,"kind":"labour"}]',
		subtotal = 500, vat_total = 100, total = 600, updated_at = now() WHERE id = 20`)
	e.caughtUp()
	b = e.business(0)
	requireOneOfEach(t, b)
	require.Equal(t, c.ID, b.Contacts[0].ID)
	require.Equal(t, "margaret@bennett.example", b.Contacts[0].MainContactPerson.Email)
	require.Equal(t, inv.ID, b.SalesInvoices[0].ID)
	require.Equal(t, "600.00", b.SalesInvoices[0].TotalAmount.StringFixed(2))
	require.Len(t, b.SalesInvoices[0].InvoiceLines, 1)

	st := e.status()
	require.Equal(t, e.dbName, st.Slot)
	require.Len(t, st.Companies, 1)
	require.True(t, st.Companies[0].Connected)
	require.Equal(t, int64(5), st.Companies[0].Synced)
	require.Zero(t, st.Companies[0].Failed)
}

func TestKilledAfterSageRepliedLeavesNoDuplicateAndNothingMissing(t *testing.T) {
	for _, tc := range []struct {
		name      string
		dropReply bool // the reply never reaches the daemon, or reaches it and the daemon dies
	}{
		{name: "ok - killed before the reply arrives", dropReply: true},
		{name: "ok - killed as the reply arrives", dropReply: false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			e.start()
			e.connect(1)
			// Kill the daemon the moment Sage has created the sales invoice.
			var fired atomic.Bool
			hook := func(r *http.Request, status int) bool {
				if r.Method == http.MethodPost && strings.HasSuffix(r.URL.Path, "/sales_invoices") && status == 201 && fired.CompareAndSwap(false, true) {
					if tc.dropReply {
						e.kill()
						return false
					}
					go e.kill()
				}
				return true
			}
			e.proxy.afterWrite.Store(&hook)
			e.exec(customerSQL)
			e.exec(invoiceSQL)
			e.exec(paymentSQL)
			e.eventually(30*time.Second, "daemon killed after Sage created the invoice", func() bool { return fired.Load() && e.proc() == nil })
			e.proxy.afterWrite.Store(nil)

			e.start()
			e.caughtUp()
			b := e.business(0)
			requireOneOfEach(t, b)
			require.Equal(t, "613.77", b.SalesInvoices[0].TotalAmount.StringFixed(2))
			require.Equal(t, b.SalesInvoices[0].ID, b.ContactPayments[0].AllocatedArtefacts[0].Artefact.ID)
		})
	}
}

func TestSlotNeverPassesAChangeSageHasNotAcknowledged(t *testing.T) {
	e := newEnv(t)
	e.start()
	e.connect(1)
	e.exec(customerSQL)
	e.caughtUp()

	e.setFaults(`{"fail_all": true}`)
	before := e.proxy.requests.Load()
	e.exec(invoiceSQL)
	committed := e.walLSN() // at or after the invoice transaction's end
	// Sage refuses every call; let the daemon try several times and send several status updates.
	e.eventually(30*time.Second, "daemon retried against the failing sandbox", func() bool { return e.proxy.requests.Load() >= before+3 })
	st1 := e.status()
	require.Less(t, e.slotFlush(), committed, "confirmed_flush_lsn passed an unacknowledged change")
	require.Greater(t, st1.LagSeconds, 0.0, "lag while Sage is down")
	require.Equal(t, 1, st1.PendingTransactions)
	e.eventually(30*time.Second, "lag grows while Sage is down", func() bool { return e.status().LagSeconds > st1.LagSeconds })
	require.Less(t, e.slotFlush(), committed, "confirmed_flush_lsn passed an unacknowledged change")
	require.Empty(t, e.business(0).SalesInvoices)

	e.setFaults(`{"fail_all": false}`)
	st := e.caughtUp()
	require.Zero(t, st.LagSeconds)
	require.Len(t, e.business(0).SalesInvoices, 1)
	e.eventually(30*time.Second, "slot flushed past the invoice", func() bool { return e.slotFlush() >= committed })
}

func TestChangesOfUnconnectedCompaniesAreSkippedAndCounted(t *testing.T) {
	e := newEnv(t)
	e.start()
	e.connect(1)
	e.exec(customerSQL)
	e.exec(`INSERT INTO customers (id, company_id, first_name, last_name) VALUES (11, 2, 'Anjali', 'Patel')`)
	st := e.caughtUp()
	require.Len(t, e.sandbox.Dump().Businesses, 1)
	require.Len(t, e.business(0).Contacts, 1)
	var skipped int64
	for _, c := range st.Companies {
		if c.CompanyID == 2 {
			skipped = c.Skipped
			require.False(t, c.Connected)
		}
	}
	require.Equal(t, int64(1), skipped)
}

func TestRestartResumesFromTheStoredCheckpoint(t *testing.T) {
	e := newEnv(t)
	e.start()
	e.connect(1)
	e.exec(customerSQL)
	e.caughtUp()
	e.stop()
	// Changes made while the daemon is down arrive once it is back.
	e.exec(invoiceSQL)
	e.start()
	e.caughtUp()
	b := e.business(0)
	require.Len(t, b.Contacts, 1)
	require.Len(t, b.SalesInvoices, 1)
}

func TestDemoCommandShowsSyncedRecords(t *testing.T) {
	out, err := exec.Command(binary, "demo").CombinedOutput()
	require.NoError(t, err, string(out))
	s := string(out)
	for _, want := range []string{"HH-1004", "613.77", "Mrs Margaret Bennett", "margaret.bennett@example.co.uk", "WHITAKER DEPOSIT", "HH-1003"} {
		require.Contains(t, s, want)
	}
}

func TestDeleteRightAfterInsertFollowsItThroughTheQueue(t *testing.T) {
	e := newEnv(t)
	e.start()
	e.connect(1)
	// Slow Sage down so the inserts are still queued when the deletes are dispatched: a DELETE
	// carries only the key, and the id map cannot know the record yet.
	e.setFaults(`{"latency": "300ms"}`)
	e.exec(customerSQL)
	e.exec(invoiceSQL)
	e.exec(paymentSQL)
	e.exec(`DELETE FROM payments WHERE id = 30`)
	e.exec(`INSERT INTO customers (id, company_id, first_name, last_name) VALUES (12, 1, 'Created', 'Twice')`)
	e.exec(`DELETE FROM customers WHERE id = 12`)
	e.caughtUp()
	e.setFaults(`{"latency": "0ms"}`)
	b := e.business(0)
	require.Len(t, b.Contacts, 1, "the customer created twice is deleted in Sage too")
	require.Len(t, b.SalesInvoices, 1)
	require.Empty(t, b.ContactPayments, "the deleted payment is gone from Sage")
	require.Equal(t, "613.77", b.SalesInvoices[0].OutstandingAmount.StringFixed(2))
}

func TestReconnectingToAnotherBusinessUsesItsOwnLedgers(t *testing.T) {
	e := newEnv(t)
	e.start()
	e.connect(1)
	e.exec(customerSQL)
	e.caughtUp()
	// The sandbox is in memory: a reconnect (as after restarting `gessync run`) brings a new
	// business with other ledger and bank account ids.
	e.connect(1)
	e.exec(invoiceSQL)
	e.exec(paymentSQL)
	e.caughtUp()
	require.Empty(t, e.openLog(1))
	b := e.business(1)
	require.Len(t, b.Contacts, 1, "the customer is brought into the new business with its invoice")
	require.Len(t, b.SalesInvoices, 1)
	require.Len(t, b.ContactPayments, 1)
}

func TestALostConnectionShowsAndReconnectingSendsWhatWaited(t *testing.T) {
	e := newEnv(t)
	e.start()
	e.connect(1)
	e.exec(customerSQL)
	e.caughtUp()
	id := e.business(0).ID
	e.setFaults(`{"businesses": {"` + id + `": {"revoke_tokens": true}}}`)
	e.exec(invoiceSQL)
	e.eventually(30*time.Second, "company 1 shown as lost", func() bool {
		st := e.status()
		return len(st.Companies) == 1 && st.Companies[0].State == "lost" && !st.Companies[0].Connected
	})
	require.Len(t, e.openLog(1), 1, "one plain entry says to reconnect")
	require.Contains(t, e.openLog(1)[0], "once it is reconnected")
	require.Empty(t, e.business(0).SalesInvoices)

	e.connectAs(1, "business_id="+id)
	e.caughtUp()
	require.Len(t, e.business(0).SalesInvoices, 1, "the invoice that waited is sent once reconnected")
	st := e.status()
	require.Equal(t, "connected", st.Companies[0].State)
	require.Empty(t, e.openLog(1))
}

func TestQuietCompaniesKeepTheirConnection(t *testing.T) {
	e := newEnv(t)
	// Every refresh token is "due" (31 days is within 744 h): renewal runs with no GES activity.
	e.start("GESSYNC_TOKEN_REFRESH_EVERY=200ms", "GESSYNC_TOKEN_REFRESH_WITHIN=744h")
	e.connect(1)
	expiry := func() (t time.Time) {
		require.NoError(e.t, e.db.QueryRow(context.Background(), `SELECT token_expiry FROM gessync.connections WHERE company_id = 1`).Scan(&t))
		return t
	}
	first := expiry()
	e.eventually(30*time.Second, "tokens renewed without any change to sync", func() bool { return expiry().After(first) })
	e.exec(customerSQL) // and the renewed tokens work
	e.caughtUp()
	require.Len(t, e.business(0).Contacts, 1)
	require.Equal(t, "connected", e.status().Companies[0].State)
}

func TestCommitThenDropMakesNoDuplicate(t *testing.T) {
	e := newEnv(t)
	e.start()
	e.connect(1)
	// Sage creates each record, and its reply never arrives: the client sends the create again.
	dropped := map[string]bool{}
	var mu sync.Mutex
	hook := func(r *http.Request, status int) bool {
		mu.Lock()
		defer mu.Unlock()
		if r.Method == http.MethodPost && status == 201 && !dropped[r.URL.Path] {
			dropped[r.URL.Path] = true
			return false
		}
		return true
	}
	e.proxy.afterWrite.Store(&hook)
	e.exec(customerSQL)
	e.exec(invoiceSQL)
	e.exec(paymentSQL)
	e.caughtUp()
	require.Len(t, dropped, 3, "a reply dropped for each kind of create")
	requireOneOfEach(t, e.business(0))
	require.Equal(t, "313.77", e.business(0).SalesInvoices[0].OutstandingAmount.StringFixed(2))
	e.requireNoOpenErrors()
}
