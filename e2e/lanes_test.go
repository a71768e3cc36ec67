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
	e.exec(customer11SQL)
	e.exec(invoiceSQL) // customer 10's, HH-1004
	e.caughtUp()

	// Customer 10's invoice update is held until the test lets it go.
	h := e.holdFirstWrite(http.MethodPut, "/sales_invoices/")
	e.exec(`UPDATE invoices SET notes = 'Boiler serial 4471', updated_at = now() WHERE id = 20`)
	h.waitHeld(e, "customer 10's invoice update")
	e.exec(`INSERT INTO invoices (id, company_id, customer_id, invoice_number, status, issue_date, due_date, line_items, subtotal, vat_total, total)
		VALUES (21, 1, 11, 'HH-1005', 'issued', '2026-11-26', '2026-12-10',
		'[{"description":"Annual boiler service","quantity":1,"unit_price":80.00,"vat_rate":20,"kind":"labour"}]', 80.00, 16.00, 96.00)`)
	e.eventually(30*time.Second, "customer 11's invoice in Sage while customer 10's update is held", func() bool {
		for _, inv := range e.business(0).SalesInvoices {
			if inv.InvoiceNumber == "HH-1005" {
				return true
			}
		}
		return false
	})

	h.letGo()
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

// heldWrite holds, before Sage sees it, the first write (method, path containing part) the
// daemon sends after it is set up, and counts the writes that follow while it is held.
type heldWrite struct {
	held  chan struct{}
	letGo func()
	after atomic.Int64 // writes sent while the first was held
}

func (e *env) holdFirstWrite(method, part string) *heldWrite {
	e.t.Helper()
	h := &heldWrite{held: make(chan struct{})}
	release := make(chan struct{})
	h.letGo = sync.OnceFunc(func() { close(release) })
	var first atomic.Bool
	hook := func(r *http.Request) {
		if r.Method == method && strings.Contains(r.URL.Path, part) && first.CompareAndSwap(false, true) {
			close(h.held)
			select {
			case <-release:
			case <-time.After(time.Minute):
			}
			return
		}
		if first.Load() {
			select {
			case <-release:
			default:
				h.after.Add(1)
			}
		}
	}
	e.proxy.beforeWrite.Store(&hook)
	e.t.Cleanup(func() { h.letGo(); e.proxy.beforeWrite.Store(nil) })
	return h
}

// waitHeld waits until the held write reached the proxy.
func (h *heldWrite) waitHeld(e *env, what string) {
	e.t.Helper()
	select {
	case <-h.held:
	case <-time.After(30 * time.Second):
		e.t.Fatalf("%s never reached Sage", what)
	}
}

// waitQueuedBehind waits until company 1 has n changes pending (the held one and those queued
// behind it), or until a write overtook the held one, and fails if one did.
func (h *heldWrite) waitQueuedBehind(e *env, n int, what string) {
	e.t.Helper()
	e.eventually(30*time.Second, what+" queued behind the held write", func() bool {
		st, ok := e.tryStatus()
		return h.after.Load() > 0 || (ok && len(st.Companies) > 0 && st.Companies[0].Pending == n)
	})
	require.Zero(e.t, h.after.Load(), "%s reached Sage while the change before it was held", what)
}

const customer11SQL = `INSERT INTO customers (id, company_id, account_ref, first_name, last_name, email, address_line1, town, postcode)
	VALUES (11, 1, 'OKAF01', 'Chidi', 'Okafor', 'c.okafor@example.co.uk', '3 Mill Lane', 'Bradford', 'BD1 1AA')`

// An invoice that moves to another customer while its earlier change is still in its old
// customer's lane waits for it (a barrier), so Sage ends with the later customer: here the
// earlier update is held before Sage sees it, and the move must not overtake it.
func TestAnInvoiceMovedToAnotherCustomerDoesNotOvertakeItsEarlierChange(t *testing.T) {
	e := newEnv(t)
	e.start()
	e.connect(1)
	e.exec(customerSQL)
	e.exec(customer11SQL)
	e.exec(invoiceSQL) // customer 10's
	e.caughtUp()

	h := e.holdFirstWrite(http.MethodPut, "/sales_invoices/")
	e.exec(`UPDATE invoices SET notes = 'Boiler serial 4471', updated_at = now() WHERE id = 20`)
	h.waitHeld(e, "the invoice update")
	e.exec(`UPDATE invoices SET customer_id = 11, notes = 'Billed to the landlord', updated_at = now() WHERE id = 20`)
	h.waitQueuedBehind(e, 2, "the move")

	h.letGo()
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

// A customer who gives up an account reference in GES, followed by another customer taking it,
// stay two Sage contacts: the second's search of Sage waits for the first's update (a change
// that moves match keys holds them from other lanes), as it would in commit order. Found by a
// helper trying to break lanes: the new customer was linked to the first one's contact.
func TestAReferenceHandedToAnotherCustomerMakesTwoContacts(t *testing.T) {
	e := newEnv(t)
	e.start()
	e.connect(1)
	e.exec(customerSQL) // 10, BENN01
	e.caughtUp()

	h := e.holdFirstWrite(http.MethodPut, "/contacts/")
	e.exec(`UPDATE customers SET account_ref = 'BENN02', updated_at = now() WHERE id = 10`)
	h.waitHeld(e, "customer 10's new reference")
	e.exec(strings.Replace(customer11SQL, "'OKAF01'", "'BENN01'", 1))
	h.waitQueuedBehind(e, 2, "customer 11, with the freed reference,")

	h.letGo()
	st := e.caughtUp()
	b := e.business(0)
	require.Len(t, b.Contacts, 2, "each customer its own contact, as in commit order")
	refs := map[string]string{}
	for _, c := range b.Contacts {
		refs[c.Reference] = c.Name
	}
	require.Contains(t, refs, "BENN02")
	require.Contains(t, refs, "BENN01")
	require.Equal(t, "Chidi Okafor", refs["BENN01"])
	require.Zero(t, st.Companies[0].OpenErrors)
}

// An invoice number given up by one customer's invoice and taken by another customer's reaches
// Sage as GES committed it: the renumbering first, so Sage does not refuse the new invoice's
// number as taken.
func TestAnInvoiceNumberHandedToAnotherCustomersInvoiceReachesSage(t *testing.T) {
	e := newEnv(t)
	e.start()
	e.connect(1)
	e.exec(customerSQL)
	e.exec(customer11SQL)
	e.exec(invoiceSQL) // 20, customer 10, HH-1004
	e.caughtUp()

	h := e.holdFirstWrite(http.MethodPut, "/sales_invoices/")
	e.exec(`UPDATE invoices SET invoice_number = 'HH-2000', updated_at = now() WHERE id = 20`)
	h.waitHeld(e, "invoice 20's new number")
	e.exec(`INSERT INTO invoices (id, company_id, customer_id, invoice_number, status, issue_date, due_date, line_items, subtotal, vat_total, total)
		VALUES (21, 1, 11, 'HH-1004', 'issued', '2026-11-26', '2026-12-10',
		'[{"description":"Annual boiler service","quantity":1,"unit_price":80.00,"vat_rate":20,"kind":"labour"}]', 80.00, 16.00, 96.00)`)
	h.waitQueuedBehind(e, 2, "invoice 21, with the freed number,")

	h.letGo()
	st := e.caughtUp()
	numbers := map[string]bool{}
	for _, inv := range e.business(0).SalesInvoices {
		numbers[inv.InvoiceNumber] = true
	}
	require.Equal(t, map[string]bool{"HH-2000": true, "HH-1004": true}, numbers)
	require.Zero(t, st.Companies[0].OpenErrors)
}

// A change that moves match keys is sent even when a later change of its record is queued
// (it is not coalesced into it): here customer 10's new reference must reach Sage before
// customer 11, queued between the two, searches Sage for the reference 10 gave up. One lane,
// so that the three changes wait behind a held one. Found by a helper trying to break lanes;
// it was there before them.
func TestAReferenceChangeIsNotCoalescedPastAnotherCustomersSearch(t *testing.T) {
	e := newEnv(t)
	e.start("GESSYNC_LANES=1")
	e.connect(1)
	e.exec(customerSQL) // 10, BENN01
	e.exec(`INSERT INTO customers (id, company_id, account_ref, first_name, last_name, email, postcode)
		VALUES (12, 1, 'ZULU01', 'Zed', 'Zulu', 'z.zulu@example.co.uk', 'LS1 1AA')`)
	e.caughtUp()

	h := e.holdFirstWrite(http.MethodPut, "/contacts/")
	e.exec(`UPDATE customers SET phone = '0113 496 0999', updated_at = now() WHERE id = 12`)
	h.waitHeld(e, "customer 12's update")
	e.exec(`UPDATE customers SET account_ref = 'BENN02', updated_at = now() WHERE id = 10`)
	e.exec(strings.Replace(customer11SQL, "'OKAF01'", "'BENN01'", 1))
	e.exec(`UPDATE customers SET phone = '0113 496 0124', updated_at = now() WHERE id = 10`)
	h.waitQueuedBehind(e, 4, "customer 10's and 11's changes")

	h.letGo()
	e.caughtUp()
	refs := map[string]string{}
	for _, c := range e.business(0).Contacts {
		refs[c.Reference] = c.Name
	}
	require.Len(t, refs, 3, "each customer its own contact: %v", refs)
	require.Equal(t, "Chidi Okafor", refs["BENN01"])
	require.Contains(t, refs, "BENN02")
}
