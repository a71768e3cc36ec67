package e2e_test

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

// twoCustomersTwoInvoices starts a company connected an hour ago with Bennett (customer 10,
// invoice 20, HH-1004) and Okafor (customer 11, invoice 21, HH-1005) in Sage; it returns the
// env and the Sage business id.
func twoCustomersTwoInvoices(t *testing.T) (*env, string) {
	e := newConnectedAnHourAgo(t)
	e.exec(customerSQL)
	e.exec(customer11SQL)
	e.exec(invoiceSQL)
	e.exec(invoice21SQL)
	e.caughtUp()
	return e, e.business(0).ID
}

// contactOf is the Sage id of b's contact with reference ref ("" when none).
func contactOf(b sagetest.BusinessDump, ref string) string {
	for _, c := range b.Contacts {
		if c.Reference == ref {
			return c.ID
		}
	}
	return ""
}

// invoiceOf is the Sage id of b's sales invoice numbered number ("" when none).
func invoiceOf(b sagetest.BusinessDump, number string) string {
	for _, inv := range b.SalesInvoices {
		if inv.InvoiceNumber == number {
			return inv.ID
		}
	}
	return ""
}

// outstandingByNumber is each Sage invoice's outstanding amount, by invoice number.
func outstandingByNumber(e *env) map[string]string {
	out := map[string]string{}
	for _, inv := range e.business(0).SalesInvoices {
		out[inv.InvoiceNumber] = inv.OutstandingAmount.StringFixed(2)
	}
	return out
}

// A payment's first create is refused (nothing committed), it moves to another customer's
// invoice where its create commits with the reply lost, and it moves back: the attempt keeps
// every parent it was sent for, so the retry finds the receipt on the second invoice and moves
// it back, and Okafor's invoice does not keep Bennett's money.
func TestAPaymentCommittedOnItsSecondInvoiceThenMovedBackIsFound(t *testing.T) {
	e, biz := twoCustomersTwoInvoices(t)
	e.setFaults(fmt.Sprintf(`{"businesses":{%q:{"read_only":true}}}`, biz))
	e.exec(paymentSQL) // payment 30 on invoice 20
	e.caughtUp()
	require.Equal(t, 1, e.status().Companies[0].OpenErrors, "403 read-only refusal logged")
	e.setFaults(`{}`)
	var parent int64
	require.NoError(t, e.db.QueryRow(context.Background(), `SELECT parent_ids[1] FROM gessync.create_attempts WHERE ges_table='payments' AND ges_id=30`).Scan(&parent))
	require.Equal(t, int64(20), parent)

	e.killWhenSageCreates("/contact_payments", func() { e.exec(`UPDATE payments SET invoice_id = 21 WHERE id = 30`) })
	b := e.business(0)
	require.Len(t, b.ContactPayments, 1, "the receipt committed on Okafor's invoice")
	e.exec(`UPDATE payments SET invoice_id = 20 WHERE id = 30`)
	e.start()
	e.caughtUp()
	b = e.business(0)
	out := outstandingByNumber(e)
	require.Len(t, b.ContactPayments, 1)
	require.Equal(t, "480.00", out["HH-1005"], "Okafor's invoice should not carry Bennett's payment")
	require.Equal(t, "313.77", out["HH-1004"])
	require.Zero(t, e.status().Companies[0].OpenErrors)
}

// The same for an invoice: refused for Bennett, committed for Okafor with the reply lost,
// moved back to Bennett: found on Okafor's contact and moved back.
func TestAnInvoiceCommittedForItsSecondCustomerThenMovedBackIsFound(t *testing.T) {
	e := newConnectedAnHourAgo(t)
	e.exec(customerSQL)
	e.exec(customer11SQL)
	e.caughtUp()
	biz := e.business(0).ID
	e.setFaults(fmt.Sprintf(`{"businesses":{%q:{"read_only":true}}}`, biz))
	e.exec(invoiceSQL)
	e.caughtUp()
	e.setFaults(`{}`)
	e.killWhenSageCreates("/sales_invoices", func() { e.exec(`UPDATE invoices SET customer_id = 11, updated_at = now() WHERE id = 20`) })
	e.exec(`UPDATE invoices SET customer_id = 10, updated_at = now() WHERE id = 20`)
	e.start()
	e.caughtUp()
	b := e.business(0)
	bennett := contactOf(b, "BENN01")
	require.Len(t, b.SalesInvoices, 1)
	require.Equal(t, bennett, b.SalesInvoices[0].Contact.ID, "the invoice is back on Bennett")
	require.Zero(t, e.status().Companies[0].OpenErrors)
}

// A receipt without a reference that overpaid its invoice (part of it on account) and whose
// create reply was lost, then moved to another customer's invoice, is found by its total, not
// the smaller amount it allocates, and moved.
func TestALostReplyOverpaymentMovedToAnotherCustomerIsFoundByItsTotal(t *testing.T) {
	e, _ := twoCustomersTwoInvoices(t)
	e.killWhenSageCreates("/contact_payments", func() {
		e.exec(`INSERT INTO payments (id, company_id, invoice_id, amount, method, paid_on) VALUES (30, 1, 20, 700.00, 'cash', '2026-11-26')`)
	})
	b := e.business(0)
	require.Len(t, b.ContactPayments, 1)
	e.exec(`UPDATE payments SET invoice_id = 21 WHERE id = 30`)
	e.start()
	e.caughtUp()
	b = e.business(0)
	out := outstandingByNumber(e)
	require.Len(t, b.ContactPayments, 1)
	require.Equal(t, "613.77", out["HH-1004"], "nothing left on Bennett's invoice")
	require.Equal(t, "0.00", out["HH-1005"])
	require.Zero(t, e.status().Companies[0].OpenErrors)
}

// Two of Bennett's payments on one invoice, same day and amount, no reference: one's create is
// refused, the other's commits with its reply lost and then moves to Okafor's invoice. Retried
// at once in two lanes, with Sage slow to answer updates, each ends with its own receipt.
func TestAMovedPaymentAndItsRetriedSiblingLinkOneReceiptEach(t *testing.T) {
	e, biz := twoCustomersTwoInvoices(t)
	e.setFaults(fmt.Sprintf(`{"businesses":{%q:{"read_only":true}}}`, biz))
	e.exec(`INSERT INTO payments (id, company_id, invoice_id, amount, method, paid_on) VALUES (32, 1, 20, 300.00, 'cash', '2026-11-26')`)
	e.caughtUp()
	e.setFaults(`{}`)
	e.killWhenSageCreates("/contact_payments", func() {
		e.exec(`INSERT INTO payments (id, company_id, invoice_id, amount, method, paid_on) VALUES (30, 1, 20, 300.00, 'cash', '2026-11-26')`)
	})
	e.exec(`UPDATE payments SET invoice_id = 21 WHERE id = 30`)
	e.exec(`UPDATE payments SET paid_on = paid_on WHERE id = 32`)
	var slowed atomic.Int32
	slow := func(r *http.Request) {
		if r.Method == http.MethodPut && strings.Contains(r.URL.Path, "contact_payments") {
			slowed.Add(1)
			time.Sleep(500 * time.Millisecond)
		}
	}
	e.proxy.beforeWrite.Store(&slow)
	e.start()
	e.caughtUp()
	e.proxy.beforeWrite.Store(nil)
	b := e.business(0)
	var linked, rows int
	require.NoError(t, e.db.QueryRow(context.Background(), `SELECT count(DISTINCT sage_id), count(*) FROM gessync.id_map WHERE ges_table = 'payments'`).Scan(&linked, &rows))
	require.Equal(t, rows, linked, "no receipt linked to two GES payments")
	require.Len(t, b.ContactPayments, 2)
}

// Two lost replies: a payment's create (on Bennett's invoice), then, after it moved to Okafor's,
// the update that moved the linked receipt there. Moved back to Bennett's invoice, the retry
// finds the receipt on Okafor's invoice (a parent the attempts recorded), or, when the move's
// replay links it first, sends the move back although it matches the mapping (the update's
// reply was lost: state.AttemptUpdate).
func TestAPaymentWithTwoLostRepliesMovedBackIsFound(t *testing.T) {
	e, _ := twoCustomersTwoInvoices(t)
	var okafor string
	for _, c := range e.business(0).Contacts {
		if c.Reference == "OKAF01" {
			okafor = c.ID
		}
	}
	e.killWhenSageCreates("/contact_payments", func() { e.exec(paymentSQL) })
	e.exec(`UPDATE payments SET invoice_id = 21 WHERE id = 30`)
	var fired atomic.Bool
	hook := func(r *http.Request, status int) bool {
		if r.Method == http.MethodPut && strings.Contains(r.URL.Path, "/contact_payments/") && status == 200 {
			if fired.CompareAndSwap(false, true) {
				e.kill()
				return false
			}
		}
		return true
	}
	_ = okafor
	e.proxy.afterWrite.Store(&hook)
	e.proxy.takeCalls()
	e.launch()
	e.eventually(30*time.Second, "killed after PUT", func() bool { return fired.Load() && e.proc() == nil })
	e.proxy.afterWrite.Store(nil)
	b := e.business(0)
	require.Len(t, b.ContactPayments, 1)
	require.Equal(t, okafor, b.ContactPayments[0].Contact.ID, "the PUT moved the receipt to Okafor")
	e.exec(`UPDATE payments SET invoice_id = 20 WHERE id = 30`)
	e.start()
	e.caughtUp()
	b = e.business(0)
	out := outstandingByNumber(e)
	require.Len(t, b.ContactPayments, 1)
	require.Equal(t, "480.00", out["HH-1005"])
	require.Equal(t, "313.77", out["HH-1004"])
	require.Zero(t, e.status().Companies[0].OpenErrors)
}

// The same two lost replies for an invoice, moved to Okafor and back to Bennett.
func TestAnInvoiceWithTwoLostRepliesMovedBackIsFound(t *testing.T) {
	e := newConnectedAnHourAgo(t)
	e.exec(customerSQL)
	e.exec(customer11SQL)
	e.caughtUp()
	e.killWhenSageCreates("/sales_invoices", func() { e.exec(invoiceSQL) })
	e.exec(`UPDATE invoices SET customer_id = 11, updated_at = now() WHERE id = 20`)
	var fired atomic.Bool
	hook := func(r *http.Request, status int) bool {
		if r.Method == http.MethodPut && strings.Contains(r.URL.Path, "/sales_invoices/") && status == 200 && fired.CompareAndSwap(false, true) {
			e.kill()
			return false
		}
		return true
	}
	e.proxy.afterWrite.Store(&hook)
	e.proxy.takeCalls()
	e.launch()
	e.eventually(30*time.Second, "killed after PUT", func() bool { return fired.Load() && e.proc() == nil })
	e.proxy.afterWrite.Store(nil)
	e.exec(`UPDATE invoices SET customer_id = 10, updated_at = now() WHERE id = 20`)
	e.start()
	e.caughtUp()
	b := e.business(0)
	bennett := contactOf(b, "BENN01")
	require.Len(t, b.SalesInvoices, 1)
	require.Equal(t, bennett, b.SalesInvoices[0].Contact.ID, "the invoice is back on Bennett")
	require.Zero(t, e.status().Companies[0].OpenErrors)
}

// An update's reply is lost (the invoice moved to Okafor, Sage took it, the daemon died), and
// GES moves the invoice back before gessync is up: the move to Okafor is coalesced away, and
// the move back matches the mapping, which never learnt of the update; it is sent all the same,
// because the update was recorded as unacknowledged (state.AttemptUpdate).
func TestALostUpdateReplyThenARevertIsSent(t *testing.T) {
	e := newConnectedAnHourAgo(t)
	e.exec(customerSQL)
	e.exec(customer11SQL)
	e.exec(invoiceSQL)
	e.caughtUp()
	var fired atomic.Bool
	hook := func(r *http.Request, status int) bool {
		if r.Method == http.MethodPut && strings.Contains(r.URL.Path, "/sales_invoices/") && status == 200 && fired.CompareAndSwap(false, true) {
			e.kill()
			return false
		}
		return true
	}
	e.proxy.afterWrite.Store(&hook)
	e.exec(`UPDATE invoices SET customer_id = 11, updated_at = now() WHERE id = 20`)
	e.eventually(30*time.Second, "killed after PUT", func() bool { return fired.Load() && e.proc() == nil })
	e.proxy.afterWrite.Store(nil)
	e.exec(`UPDATE invoices SET customer_id = 10, updated_at = now() WHERE id = 20`)
	e.start()
	e.caughtUp()
	b := e.business(0)
	bennett := contactOf(b, "BENN01")
	require.Equal(t, bennett, b.SalesInvoices[0].Contact.ID, "the invoice is back on Bennett")
}
