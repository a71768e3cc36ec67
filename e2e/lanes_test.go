package e2e_test

import (
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// One customer's slow Sage call does not hold up another customer of the same company: their
// changes apply in different lanes (GESSYNC_LANES). Customers 10 and 11 go to different lanes.
func TestOneCustomersSlowCallDoesNotHoldUpAnothersInvoice(t *testing.T) {
	e := newEnv(t)
	e.start()
	e.connect(1)
	e.exec(customerSQL)
	e.exec(`INSERT INTO customers (id, company_id, account_ref, first_name, last_name, email, address_line1, town, postcode)
		VALUES (11, 1, 'OKAF01', 'Chidi', 'Okafor', 'c.okafor@example.co.uk', '3 Mill Lane', 'Bradford', 'BD1 1AA')`)
	e.exec(invoiceSQL) // customer 10's, HH-1004
	e.caughtUp()

	// Sage's reply to the first invoice update is held until the test lets it go.
	held, release := make(chan struct{}), make(chan struct{})
	var fired atomic.Bool
	hook := func(r *http.Request, status int) bool {
		if r.Method == http.MethodPut && strings.Contains(r.URL.Path, "/sales_invoices/") && fired.CompareAndSwap(false, true) {
			close(held)
			select {
			case <-release:
			case <-time.After(time.Minute):
			}
		}
		return true
	}
	e.proxy.afterWrite.Store(&hook)
	defer e.proxy.afterWrite.Store(nil)
	letGo := sync.OnceFunc(func() { close(release) })
	defer letGo()

	e.exec(`UPDATE invoices SET notes = 'Boiler serial 4471', updated_at = now() WHERE id = 20`)
	select {
	case <-held:
	case <-time.After(30 * time.Second):
		t.Fatal("customer 10's invoice update never reached Sage")
	}
	e.exec(`INSERT INTO invoices (id, company_id, customer_id, invoice_number, status, issue_date, due_date, line_items, subtotal, vat_total, total)
		VALUES (21, 1, 11, 'HH-1005', 'issued', '2026-11-26', '2026-12-10',
		'[{"description":"Annual boiler service","quantity":1,"unit_price":80.00,"vat_rate":20,"kind":"labour"}]', 80.00, 16.00, 96.00)`)
	e.eventually(30*time.Second, "customer 11's invoice in Sage while Sage's reply to customer 10's update is held", func() bool {
		for _, inv := range e.business(0).SalesInvoices {
			if inv.InvoiceNumber == "HH-1005" {
				return true
			}
		}
		return false
	})

	letGo()
	st := e.caughtUp()
	b := e.business(0)
	require.Len(t, b.SalesInvoices, 2, "each invoice once")
	for _, inv := range b.SalesInvoices {
		if inv.InvoiceNumber == "HH-1004" {
			require.Equal(t, "Boiler serial 4471", inv.Notes, "the held update")
		}
	}
	require.Len(t, b.Contacts, 2)
	for _, c := range st.Companies {
		require.Zero(t, c.OpenErrors, "company %d has sync errors", c.CompanyID)
	}
}

// An invoice that moves to another customer while its earlier change is still in its old
// customer's lane waits for it (a barrier), so Sage ends with the later customer: here the
// earlier update is held before Sage sees it, and the move must not overtake it.
func TestAnInvoiceMovedToAnotherCustomerDoesNotOvertakeItsEarlierChange(t *testing.T) {
	e := newEnv(t)
	e.start()
	e.connect(1)
	e.exec(customerSQL)
	e.exec(`INSERT INTO customers (id, company_id, account_ref, first_name, last_name, email, address_line1, town, postcode)
		VALUES (11, 1, 'OKAF01', 'Chidi', 'Okafor', 'c.okafor@example.co.uk', '3 Mill Lane', 'Bradford', 'BD1 1AA')`)
	e.exec(invoiceSQL) // customer 10's
	e.caughtUp()

	held, release := make(chan struct{}), make(chan struct{})
	var puts atomic.Int64
	hook := func(r *http.Request) {
		if r.Method == http.MethodPut && strings.Contains(r.URL.Path, "/sales_invoices/") && puts.Add(1) == 1 {
			close(held)
			select {
			case <-release:
			case <-time.After(time.Minute):
			}
		}
	}
	e.proxy.beforeWrite.Store(&hook)
	defer e.proxy.beforeWrite.Store(nil)
	letGo := sync.OnceFunc(func() { close(release) })
	defer letGo()

	e.exec(`UPDATE invoices SET notes = 'Boiler serial 4471', updated_at = now() WHERE id = 20`)
	select {
	case <-held:
	case <-time.After(30 * time.Second):
		t.Fatal("the invoice update never reached Sage")
	}
	e.exec(`UPDATE invoices SET customer_id = 11, notes = 'Billed to the landlord', updated_at = now() WHERE id = 20`)
	e.eventually(30*time.Second, "the move queued behind the held update", func() bool {
		st, ok := e.tryStatus()
		return puts.Load() > 1 || (ok && len(st.Companies) > 0 && st.Companies[0].Pending == 2)
	})
	require.EqualValues(t, 1, puts.Load(), "the move reached Sage while the change before it was held")

	letGo()
	e.caughtUp()
	b := e.business(0)
	require.Len(t, b.SalesInvoices, 1)
	inv := b.SalesInvoices[0]
	require.Equal(t, "Billed to the landlord", inv.Notes)
	var landlord string
	for _, c := range b.Contacts {
		if c.Reference == "OKAF01" {
			landlord = c.ID
		}
	}
	require.NotNil(t, inv.Contact)
	require.Equal(t, landlord, inv.Contact.ID, "the invoice's contact is the customer it moved to")
}
