package e2e_test

// Regression tests for defects found by trying to break gessync: each failed before its fix.

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/gessync/gessync/sink/sagetest"
)

func (e *env) mappingCount(table string, id int64) (n int) {
	e.t.Helper()
	require.NoError(e.t, e.db.QueryRow(context.Background(), `SELECT count(*) FROM gessync.id_map WHERE ges_table = $1 AND ges_id = $2`, table, id).Scan(&n))
	return n
}

func (e *env) requireNoOpenErrors() {
	e.t.Helper()
	require.Empty(e.t, e.openLog(1), "open sync-log errors")
}

func TestInsertThenDeleteInOneTransactionNeverReachesSage(t *testing.T) {
	e := newEnv(t)
	e.start()
	e.connect(1)
	e.exec(customerSQL)
	e.exec(invoiceSQL)
	e.caughtUp()
	e.exec(`BEGIN; INSERT INTO payments (id, company_id, invoice_id, amount, method, paid_on) VALUES (31, 1, 20, 50.00, 'cash', '2026-11-26'); DELETE FROM payments WHERE id = 31; COMMIT`)
	e.caughtUp()
	require.Empty(t, e.business(0).ContactPayments)
}

func TestAPaymentOnAnotherCompanysInvoiceWritesNothing(t *testing.T) {
	e := newEnv(t)
	e.start()
	e.connect(1)
	e.exec(`INSERT INTO customers (id, company_id, first_name, last_name, email) VALUES (50, 2, 'Private', 'Person', 'private@example.com')`)
	e.exec(`INSERT INTO invoices (id, company_id, customer_id, invoice_number, status, issue_date, line_items, subtotal, vat_total, total)
		VALUES (60, 2, 50, 'PB-1', 'issued', '2026-11-25', '[{"description":"Secret job","quantity":1,"unit_price":100,"vat_rate":20}]', 100, 20, 120)`)
	e.exec(`INSERT INTO payments (id, company_id, invoice_id, amount, method, paid_on) VALUES (70, 1, 60, 10.00, 'cash', '2026-11-26')`)
	e.caughtUp()
	b := e.business(0)
	require.Empty(t, b.Contacts, "another company's customer in this company's books")
	require.Empty(t, b.SalesInvoices, "another company's invoice in this company's books")
	require.Empty(t, b.ContactPayments)
	require.Len(t, e.openLog(1), 1, "one plain entry for the payment")
	require.Contains(t, e.openLog(1)[0], "another GES company")
}

func TestReallocationSurvivesAFailureAndACrashAfterTheInvoiceUpdate(t *testing.T) {
	for _, crash := range []bool{false, true} {
		t.Run(fmt.Sprintf("ok - crash=%v", crash), func(t *testing.T) {
			e := newSyncedSample(t)
			var fired atomic.Bool
			hook := func(r *http.Request, status int) bool {
				if r.Method == http.MethodPut && strings.Contains(r.URL.Path, "/sales_invoices/") && status == 200 && fired.CompareAndSwap(false, true) {
					e.sandbox.SetFaults(sagetest.Faults{FaultSet: sagetest.FaultSet{FailNext: 5}})
					if crash {
						go e.kill()
					}
				}
				return true
			}
			e.proxy.afterWrite.Store(&hook)
			e.exec(`UPDATE invoices SET line_items = '[{"description":"Boiler installation labour","quantity":1,"unit_price":500.00,"vat_rate":20,"kind":"labour"}]',
				subtotal = 500, vat_total = 100, total = 600, updated_at = now() WHERE id = 20`)
			if crash {
				e.eventually(30*time.Second, "killed after the invoice update", func() bool { return fired.Load() && e.proc() == nil })
				e.sandbox.SetFaults(sagetest.Faults{})
				e.start()
			}
			e.caughtUp()
			b := e.business(0)
			require.Equal(t, "600.00", b.SalesInvoices[0].TotalAmount.StringFixed(2))
			require.Len(t, b.ContactPayments[0].AllocatedArtefacts, 1, "receipt allocated again")
			require.Equal(t, "300.00", b.SalesInvoices[0].OutstandingAmount.StringFixed(2))
			e.requireNoOpenErrors()
		})
	}
}

func TestAFullReceiptWhoseReplyWasLostIsAdoptedNotOrphaned(t *testing.T) {
	e := newEnv(t)
	e.start()
	e.connect(1)
	e.exec(customerSQL)
	e.exec(invoiceSQL)
	e.caughtUp()
	e.killWhenSageCreates("/contact_payments", func() {
		e.exec(`INSERT INTO payments (id, company_id, invoice_id, amount, method, paid_on, reference) VALUES (30, 1, 20, 613.77, 'card', '2026-11-26', 'PAID IN FULL')`)
	})
	e.start()
	e.caughtUp()
	require.Len(t, e.business(0).ContactPayments, 1)
	require.Equal(t, 1, e.mappingCount("payments", 30), "the receipt Sage created is linked")
	e.requireNoOpenErrors()
	e.exec(`DELETE FROM payments WHERE id = 30`)
	e.caughtUp()
	require.Empty(t, e.business(0).ContactPayments, "and a delete in GES reaches it")
}

func TestAChildGoesOnceItsParentSyncs(t *testing.T) {
	t.Run("ok - a deposit on a draft invoice goes when it is issued", func(t *testing.T) {
		e := newEnv(t)
		e.start()
		e.connect(1)
		e.exec(customerSQL)
		e.exec(strings.Replace(invoiceSQL, "'issued'", "'draft'", 1))
		e.exec(paymentSQL)
		e.caughtUp()
		require.Empty(t, e.business(0).ContactPayments)
		e.exec(`UPDATE invoices SET status = 'issued', updated_at = now() WHERE id = 20`)
		e.caughtUp()
		require.Len(t, e.business(0).ContactPayments, 1)
		e.requireNoOpenErrors()
	})
	t.Run("ok - a nameless customer's invoice and payment go once the name is fixed", func(t *testing.T) {
		e := newEnv(t)
		e.start()
		e.connect(1)
		e.exec(`INSERT INTO customers (id, company_id) VALUES (10, 1)`)
		e.exec(invoiceSQL)
		e.exec(paymentSQL)
		e.caughtUp()
		require.NotEmpty(t, e.openLog(1))
		e.exec(`UPDATE customers SET first_name = 'Now', last_name = 'Named', updated_at = now() WHERE id = 10`)
		e.caughtUp()
		b := e.business(0)
		require.Len(t, b.SalesInvoices, 1)
		require.Len(t, b.ContactPayments, 1)
		e.requireNoOpenErrors()
	})
}

func TestARecreatedSlotBackfillsWhatItMissed(t *testing.T) {
	e := newEnv(t)
	e.start()
	e.connect(1)
	e.exec(customerSQL)
	e.caughtUp()
	e.stop()
	e.exec(`UPDATE customers SET email = 'while-down@example.com', updated_at = now() WHERE id = 10`)
	e.exec(`INSERT INTO customers (id, company_id, first_name, last_name) VALUES (11, 1, 'Made', 'WhileDown')`)
	e.eventually(30*time.Second, "slot dropped (its walsender gone)", func() bool {
		_, err := e.db.Exec(context.Background(), `SELECT pg_drop_replication_slot($1)`, e.dbName)
		return err == nil
	})
	e.start()
	e.exec(`INSERT INTO customers (id, company_id, first_name, last_name) VALUES (12, 1, 'Made', 'After')`)
	e.eventually(60*time.Second, "backfill after the slot was recreated", func() bool { return e.backfillProgress(1).Status == "done" })
	e.caughtUp()
	b := e.business(0)
	require.Len(t, b.Contacts, 3)
	emails := map[string]bool{}
	for _, c := range b.Contacts {
		if c.MainContactPerson != nil {
			emails[c.MainContactPerson.Email] = true
		}
	}
	require.True(t, emails["while-down@example.com"], "the edit made while the slot was gone")
	found := false
	for _, l := range e.allLog(1) {
		found = found || strings.Contains(l, "slot")
	}
	require.True(t, found, "the sync log says the slot was recreated")
}

func TestReplayAfterAVoidLeavesNoErrorToFix(t *testing.T) {
	for _, last := range []string{
		`UPDATE invoices SET status = 'void', void_reason = 'Cancelled', updated_at = now() WHERE id = 20`,
		`DELETE FROM invoices WHERE id = 20`,
	} {
		t.Run("ok - "+strings.Fields(last)[0], func(t *testing.T) {
			e := newEnv(t)
			e.start()
			e.connect(1)
			e.exec(customerSQL)
			e.exec(invoiceSQL)
			e.caughtUp()
			var fired atomic.Bool
			hook := func(r *http.Request, status int) bool {
				if r.Method == http.MethodDelete && strings.Contains(r.URL.Path, "/sales_invoices/") && status == 200 && fired.CompareAndSwap(false, true) {
					go e.kill()
				}
				return true
			}
			e.proxy.afterWrite.Store(&hook)
			e.exec(`UPDATE invoices SET notes = 'edited', updated_at = now() WHERE id = 20`)
			e.exec(last)
			e.eventually(30*time.Second, "killed as Sage voided the invoice", func() bool { return fired.Load() && e.proc() == nil })
			e.proxy.afterWrite.Store(nil)
			e.start()
			e.caughtUp()
			require.Equal(t, "VOID", e.business(0).SalesInvoices[0].Status.ID)
			e.requireNoOpenErrors()
		})
	}
}
