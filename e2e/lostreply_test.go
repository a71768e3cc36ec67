package e2e_test

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/shopspring/decimal"
	"github.com/stretchr/testify/require"

	"github.com/gessync/gessync/sink/sage"
)

const invoice21SQL = `INSERT INTO invoices (id, company_id, customer_id, invoice_number, status, issue_date, due_date, line_items, subtotal, vat_total, total)
	VALUES (21, 1, 11, 'HH-1005', 'issued', '2026-11-25', '2026-12-09',
	'[{"description":"Boiler service","quantity":1,"unit_price":400.00,"vat_rate":20,"kind":"labour"}]', 400.00, 80.00, 480.00)`

// onFirstPost runs do once, inside the proxy, just before the first POST on a path ending in
// suffix reaches the sandbox.
func (e *env) onFirstPost(suffix string, do func()) *atomic.Bool {
	var fired atomic.Bool
	hook := func(r *http.Request) {
		if r.Method == http.MethodPost && strings.HasSuffix(r.URL.Path, suffix) && fired.CompareAndSwap(false, true) {
			do()
		}
	}
	e.proxy.beforeWrite.Store(&hook)
	e.t.Cleanup(func() { e.proxy.beforeWrite.Store(nil) })
	return &fired
}

// A receipt create that Sage refused with 500s (nothing committed) is retried; meanwhile the
// bookkeeper typed in another customer's receipt of the same day and amount, without a
// reference. The retry looks only where its own record can be (its contact; the invoice it was
// first sent for, had it moved), so the other customer's receipt stays theirs.
func TestARetriedPaymentLeavesAnotherCustomersHandReceiptAlone(t *testing.T) {
	e, _ := twoCustomersTwoInvoices(t)

	b := e.business(0)
	okafor, inv21 := contactOf(b, "OKAF01"), invoiceOf(b, "HH-1005")
	require.NotEmpty(t, okafor)
	require.NotEmpty(t, inv21)

	var hand sage.ContactPayment
	fired := e.onFirstPost("/contact_payments", func() {
		// The bookkeeper records Okafor's cash for his invoice, and Sage hiccups on gessync's POST.
		var err error
		hand, err = e.handSession(b.ID).CreateContactPayment(context.Background(), sage.ContactPaymentRequest{
			TransactionTypeID: "CUSTOMER_RECEIPT", ContactID: okafor, BankAccountID: b.BankAccounts[0].ID,
			PaymentMethodID: "CASH", Date: "2026-11-26", TotalAmount: sage.DP(decimal.RequireFromString("300.00")),
			AllocatedArtefacts: []sage.AllocatedArtefactRequest{{ArtefactID: inv21, Amount: sage.D(decimal.RequireFromString("300.00"))}},
		})
		if err != nil {
			t.Errorf("hand receipt: %v", err)
		}
		e.setFaults(`{"fail_next":5}`)
	})
	// Bennett pays £300 cash the same day, no reference.
	e.exec(`INSERT INTO payments (id, company_id, invoice_id, amount, method, paid_on) VALUES (30, 1, 20, 300.00, 'cash', '2026-11-26')`)
	e.eventually(20*time.Second, "POST seen", fired.Load)
	e.caughtUp()

	b = e.business(0)
	for _, p := range b.ContactPayments {
		if p.ID == hand.ID {
			require.Equal(t, okafor, p.Contact.ID, "the bookkeeper's receipt for Okafor stays Okafor's")
		}
	}
	require.Len(t, b.ContactPayments, 2, "Okafor's hand receipt and Bennett's own")
	for _, inv := range b.SalesInvoices {
		if inv.InvoiceNumber == "HH-1005" {
			require.Equal(t, "180.00", inv.OutstandingAmount.StringFixed(2), "Okafor's invoice keeps his payment")
		}
	}
}

// Two payments of different customers, same day, same amount, no reference, in one GES
// transaction: Okafor's receipt is committed by Sage but its reply is lost (daemon killed);
// Bennett's POST never commits. On restart both retry at once in their own lanes (customers 10
// and 11 are lanes 2 and 0), with Sage slow to answer updates: Okafor's finds its receipt on its
// own contact; Bennett's, which has not moved, does not look beyond its own, so it never links
// Okafor's receipt too.
func TestTwoPaymentsRetriedInTwoLanesLinkTwoReceipts(t *testing.T) {
	e, _ := twoCustomersTwoInvoices(t)
	b := e.business(0)
	bennett := contactOf(b, "BENN01")
	require.NotEmpty(t, bennett)

	held := make(chan struct{})
	var heldOnce, killedOnce atomic.Bool
	release := make(chan struct{})
	before := func(r *http.Request) {
		if r.Method != http.MethodPost || !strings.HasSuffix(r.URL.Path, "/contact_payments") {
			return
		}
		body, _ := io.ReadAll(r.Body)
		r.Body = io.NopCloser(bytes.NewReader(body))
		if strings.Contains(string(body), bennett) && heldOnce.CompareAndSwap(false, true) {
			close(held)
			<-release
			e.setFaults(`{"fail_next":1}`) // Bennett's POST never commits
		}
	}
	after := func(r *http.Request, status int) bool {
		if r.Method == http.MethodPost && strings.HasSuffix(r.URL.Path, "/contact_payments") && status == http.StatusCreated && killedOnce.CompareAndSwap(false, true) {
			select {
			case <-held:
			case <-time.After(10 * time.Second):
			}
			e.kill()
			close(release)
			return false
		}
		return true
	}
	e.proxy.beforeWrite.Store(&before)
	e.proxy.afterWrite.Store(&after)
	e.exec(`INSERT INTO payments (id, company_id, invoice_id, amount, method, paid_on) VALUES
		(30, 1, 20, 300.00, 'cash', '2026-11-26'), (31, 1, 21, 300.00, 'cash', '2026-11-26')`)
	e.eventually(30*time.Second, "killed", func() bool { return killedOnce.Load() && e.proc() == nil })
	e.proxy.beforeWrite.Store(nil)
	e.proxy.afterWrite.Store(nil)
	e.proxy.takeCalls()
	b = e.business(0)
	require.Len(t, b.ContactPayments, 1, "Okafor's receipt committed, Bennett's not")

	// Sage takes a moment over writes (a slow PUT widens the window; it does not create it).
	slow := func(r *http.Request) {
		if r.Method == http.MethodPut {
			time.Sleep(300 * time.Millisecond)
		}
	}
	e.proxy.beforeWrite.Store(&slow)
	e.start()
	e.caughtUp()
	b = e.business(0)
	var linked int
	require.NoError(t, e.db.QueryRow(context.Background(), `SELECT count(DISTINCT sage_id) FROM gessync.id_map WHERE ges_table = 'payments'`).Scan(&linked))
	require.Equal(t, 2, linked, "each GES payment linked to its own receipt")
	require.Len(t, b.ContactPayments, 2, "one receipt per GES payment")
}

// A receipt whose create reply was lost is linked on the retry, which read the invoice's
// outstanding amount: that amount already counts the receipt's own allocation, which is added
// back (replanLinked), so the whole payment stays allocated and nothing goes on account.
func TestALinkedLostReplyReceiptKeepsItsWholeAllocation(t *testing.T) {
	e := newConnectedAnHourAgo(t)
	e.exec(customer11SQL)
	e.exec(invoice21SQL)
	e.caughtUp()
	e.killWhenSageCreates("/contact_payments", func() {
		e.exec(`INSERT INTO payments (id, company_id, invoice_id, amount, method, paid_on) VALUES (31, 1, 21, 300.00, 'cash', '2026-11-26')`)
	})
	e.start()
	e.caughtUp()
	b := e.business(0)
	require.Len(t, b.ContactPayments, 1)
	require.Equal(t, "180.00", b.SalesInvoices[0].OutstandingAmount.StringFixed(2), "£300 of £480 paid")
	require.Nil(t, b.ContactPayments[0].PaymentOnAccount, "nothing on account")
}

// An invoice create fails with Sage 500s (nothing committed); meanwhile the bookkeeper types an
// invoice with its number by hand for another customer. The retry is refused ("Artefact number
// must be unique") and a person is asked; the hand invoice is not taken over.
func TestARetriedInvoiceDoesNotTakeOverAnotherCustomersInvoiceWithItsNumber(t *testing.T) {
	e := newConnectedAnHourAgo(t)
	e.exec(customerSQL)
	e.exec(customer11SQL)
	e.caughtUp()
	b := e.business(0)
	okafor := contactOf(b, "OKAF01")
	require.NotEmpty(t, okafor)
	s := e.handSession(b.ID)
	las, err := s.LedgerAccounts(context.Background())
	require.NoError(t, err)
	var ledger string
	for _, la := range las {
		if la.Nominalcode == 4000 {
			ledger = la.ID
		}
	}
	require.NotEmpty(t, ledger)
	var hand sage.SalesInvoice
	fired := e.onFirstPost("/sales_invoices", func() {
		var err error
		hand, err = s.CreateSalesInvoice(context.Background(), sage.SalesInvoiceRequest{ContactID: okafor, Date: "2026-11-20", InvoiceNumber: "HH-1004",
			InvoiceLines: []sage.InvoiceLineRequest{{Description: "Okafor's radiator job", LedgerAccountID: ledger, Quantity: sage.DP(decimal.NewFromInt(1)),
				UnitPrice: sage.D(decimal.RequireFromString("100.00")), TaxRateID: "GB_STANDARD", TaxAmount: sage.DP(decimal.RequireFromString("20.00"))}}})
		if err != nil {
			t.Errorf("hand invoice: %v", err)
		}
		e.setFaults(`{"fail_next":5}`)
	})
	e.exec(invoiceSQL)
	e.eventually(20*time.Second, "POST seen", fired.Load)
	e.caughtUp()
	b = e.business(0)
	for _, inv := range b.SalesInvoices {
		if inv.ID == hand.ID {
			require.Equal(t, okafor, inv.Contact.ID, "the bookkeeper's invoice for Okafor is not taken over")
			require.Equal(t, "120.00", inv.TotalAmount.StringFixed(2))
		}
	}
	require.Len(t, e.status().Companies, 1)
	require.Equal(t, 1, e.status().Companies[0].OpenErrors, "a person is asked which invoice it is")
}
