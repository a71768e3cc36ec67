package e2e_test

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/shopspring/decimal"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/oauth2"

	"github.com/gessync/gessync/sink/sage"
	"github.com/gessync/gessync/sink/sagetest"
)

// newConnectedAnHourAgo is newEnv with the daemon running and company 1 connected, its
// connection time moved an hour back as if it had connected then: records GES creates from now
// on are new since the connection.
func newConnectedAnHourAgo(t *testing.T) *env {
	t.Helper()
	return newConnectedAnHourAgoWith(t, sagetest.Options{})
}

// newConnectedAnHourAgoWith is newConnectedAnHourAgo with the sandbox's options.
func newConnectedAnHourAgoWith(t *testing.T, opts sagetest.Options) *env {
	t.Helper()
	e := newEnvWith(t, opts)
	e.start()
	e.connect(1)
	e.exec(`UPDATE gessync.connections SET connected_at = connected_at - interval '1 hour' WHERE company_id = 1`)
	return e
}

// handSession is a bookkeeper's own Sage session on a sandbox business, as if typing into
// Sage by hand.
func (e *env) handSession(businessID string) *sage.Session {
	e.t.Helper()
	access, refresh := e.sandbox.Mint(businessID)
	return sage.New(sage.Config{APIURL: e.sandbox.URL + "/v3.1", TokenURL: e.sandbox.URL + "/token", RequestsPerMinute: 1 << 20}).Session(
		sage.Connection{CompanyID: 99, BusinessID: businessID, Token: &oauth2.Token{AccessToken: access, RefreshToken: refresh, Expiry: time.Now().Add(4 * time.Minute)}}, nil)
}

// An invoice made in GES since its company connected cannot already be in Sage (GES numbers its
// invoices, and Sage would refuse a second one with the number), so it costs one write: no
// search of the contact's invoices first. A payment reads its invoice once (what is outstanding,
// and the receipts on it) and is posted. An update of a payment that changes nothing Sage sees
// makes no call at all. A customer is always looked for (a new GES customer may be an old Sage
// contact), and an invoice older than the connection still is.
func TestNewInvoicesAndPaymentsCostOneWriteEachAndOldOnesAreStillMatched(t *testing.T) {
	e := newConnectedAnHourAgo(t)
	e.caughtUp()
	e.proxy.takeCalls()

	e.exec(customerSQL)
	e.caughtUp()
	calls := e.proxy.takeCalls()
	require.Contains(t, calls, "GET /contacts", "a new customer is looked for")
	require.Equal(t, "POST /contacts", calls[len(calls)-1])

	e.exec(invoiceSQL)
	e.exec(paymentSQL)
	e.caughtUp()
	require.Equal(t, []string{
		"POST /sales_invoices",
		"GET /sales_invoices/{id}",
		"POST /contact_payments",
	}, e.proxy.takeCalls())
	requireOneOfEach(t, e.business(0))

	e.exec(`UPDATE payments SET updated_at = now() + interval '1 second' WHERE id = 30`)
	e.caughtUp()
	require.Empty(t, e.proxy.takeCalls(), "an updated_at-only update of a payment")

	e.exec(`UPDATE payments SET amount = 250.00, updated_at = now() WHERE id = 30`)
	e.caughtUp()
	require.Equal(t, []string{"GET /sales_invoices/{id}", "PUT /contact_payments/{id}"}, e.proxy.takeCalls())
	require.Equal(t, "250.00", e.business(0).ContactPayments[0].TotalAmount.StringFixed(2))

	// A draft goes nowhere (Sage is sent issued invoices); issued later, it is still new since
	// the connection and costs one write: the create attempt recorded when the draft's mapping
	// was read was forgotten, since no create followed.
	e.exec(`INSERT INTO invoices (id, company_id, customer_id, invoice_number, status, issue_date, line_items, subtotal, vat_total, total)
		VALUES (22, 1, 10, 'HH-1001', 'draft', '2026-11-27', '[{"description":"Service","quantity":1,"unit_price":80.00,"vat_rate":20}]', 80.00, 16.00, 96.00)`)
	e.caughtUp()
	require.Empty(t, e.proxy.takeCalls(), "a draft")
	e.exec(`UPDATE invoices SET status = 'issued', updated_at = now() WHERE id = 22`)
	e.caughtUp()
	require.Equal(t, []string{"POST /sales_invoices"}, e.proxy.takeCalls(), "a draft issued since the connection")

	// Issued in GES two hours ago, before the connection: it may be in Sage already, so the
	// contact's invoices are searched (and, finding nothing, it is created).
	e.exec(`INSERT INTO invoices (id, company_id, customer_id, invoice_number, status, issue_date, line_items, subtotal, vat_total, total, created_at)
		VALUES (21, 1, 10, 'HH-0999', 'issued', '2026-11-20', '[{"description":"Service","quantity":1,"unit_price":80.00,"vat_rate":20}]', 80.00, 16.00, 96.00, now() - interval '2 hours')`)
	e.caughtUp()
	require.Equal(t, []string{"GET /sales_invoices", "POST /sales_invoices"}, e.proxy.takeCalls(),
		"an invoice older than the connection is looked for in Sage first")
	require.Len(t, e.business(0).SalesInvoices, 3)
}

// A receipt the bookkeeper recorded in Sage against the invoice (from the bank feed, say) before
// GES's payment reached Sage is linked, not posted a second time, although the payment is new
// since the connection: the invoice read for its outstanding amount shows it.
func TestNewPaymentLinksAReceiptRecordedByHandAgainstItsInvoice(t *testing.T) {
	e := newConnectedAnHourAgo(t)
	e.exec(customerSQL)
	e.exec(invoiceSQL)
	e.caughtUp()

	b := e.business(0)
	hand, err := e.handSession(b.ID).CreateContactPayment(context.Background(), sage.ContactPaymentRequest{
		TransactionTypeID: "CUSTOMER_RECEIPT", ContactID: b.Contacts[0].ID, BankAccountID: b.BankAccounts[0].ID,
		PaymentMethodID: "BANK_TRANSFER", Date: "2026-11-26", Reference: "WHITAKER DEPOSIT", TotalAmount: sage.DP(decimal.RequireFromString("300.00")),
		AllocatedArtefacts: []sage.AllocatedArtefactRequest{{ArtefactID: b.SalesInvoices[0].ID, Amount: sage.D(decimal.RequireFromString("300.00"))}},
	})
	require.NoError(t, err)
	e.proxy.takeCalls()

	e.exec(paymentSQL)
	e.caughtUp()
	b = e.business(0)
	require.Len(t, b.ContactPayments, 1, "the receipt typed in by hand is GES's payment")
	require.Equal(t, hand.ID, b.ContactPayments[0].ID)
	require.Equal(t, "313.77", b.SalesInvoices[0].OutstandingAmount.StringFixed(2))
	require.NotContains(t, e.proxy.takeCalls(), "POST /contact_payments")
}

// A create whose reply never arrived, of an invoice made since the connection, is looked for in
// Sage on the next attempt (the attempt was recorded before it was sent): edited in between (a
// new total), it is linked and updated, never created twice, and neither refused for reusing
// its idempotency_id with another body nor reported as a clash of invoice numbers.
func TestLostReplyOfANewInvoiceEditedMeanwhileIsLinkedNotDuplicated(t *testing.T) {
	e := newConnectedAnHourAgo(t)
	e.exec(customerSQL)
	e.caughtUp()

	e.killWhenSageCreates("/sales_invoices", func() { e.exec(invoiceSQL) })
	e.exec(`UPDATE invoices SET line_items = jsonb_set(line_items, '{0,unit_price}', '500.00'),
		subtotal = 570.47, vat_total = 103.30, total = 673.77, updated_at = now() WHERE id = 20`)

	e.start()
	e.caughtUp()
	b := e.business(0)
	require.Len(t, b.SalesInvoices, 1)
	require.Equal(t, "673.77", b.SalesInvoices[0].TotalAmount.StringFixed(2))
	for _, c := range e.status().Companies {
		require.Zero(t, c.OpenErrors, "company %d", c.CompanyID)
	}
	var attempts int
	require.NoError(t, e.db.QueryRow(context.Background(), `SELECT count(*) FROM gessync.create_attempts`).Scan(&attempts))
	require.Zero(t, attempts, "an acknowledged create forgets its attempt")
}

// The same lost reply, but the invoice then moves to another customer before gessync is back:
// the next attempt does not find it on the new customer's contact, so it looks among the
// invoices Sage made since the attempt, across contacts, and links and moves the one with its
// number. Without that, Sage keeps an invoice on the old customer that GES no longer has, and
// the re-create is refused (its idempotency_id was used for another body) or duplicates it.
func TestLostReplyOfANewInvoiceMovedToAnotherCustomerIsLinkedAndMoved(t *testing.T) {
	e := newConnectedAnHourAgo(t)
	e.exec(customerSQL)
	e.exec(customer11SQL)
	e.caughtUp()

	e.killWhenSageCreates("/sales_invoices", func() { e.exec(invoiceSQL) })
	e.exec(`UPDATE invoices SET customer_id = 11, updated_at = now() WHERE id = 20`)

	e.start()
	e.caughtUp()
	b := e.business(0)
	require.Len(t, b.SalesInvoices, 1, "one invoice in Sage, not one per customer")
	okafor := contactOf(b, "OKAF01")
	require.NotEmpty(t, okafor)
	require.NotNil(t, b.SalesInvoices[0].Contact)
	require.Equal(t, okafor, b.SalesInvoices[0].Contact.ID, "the invoice moved with GES's")
	for _, c := range e.status().Companies {
		require.Zero(t, c.OpenErrors, "company %d", c.CompanyID)
	}
}

// A receipt whose create reply was lost, then moved to another customer's invoice before
// gessync is back, is found among the receipts Sage made since the attempt and moved with GES's
// payment: Sage ends with one receipt, on the new invoice.
func TestLostReplyOfANewPaymentMovedToAnotherCustomersInvoiceIsLinkedAndMoved(t *testing.T) {
	e := newConnectedAnHourAgo(t)
	e.exec(customerSQL)
	e.exec(customer11SQL)
	e.exec(invoiceSQL)
	e.exec(`INSERT INTO invoices (id, company_id, customer_id, invoice_number, status, issue_date, due_date, line_items, subtotal, vat_total, total)
		VALUES (21, 1, 11, 'HH-1005', 'issued', '2026-11-25', '2026-12-09',
		'[{"description":"Boiler service","quantity":1,"unit_price":400.00,"vat_rate":20,"kind":"labour"}]', 400.00, 80.00, 480.00)`)
	e.caughtUp()

	e.killWhenSageCreates("/contact_payments", func() { e.exec(paymentSQL) })
	e.exec(`UPDATE payments SET invoice_id = 21 WHERE id = 30`)

	e.start()
	e.caughtUp()
	b := e.business(0)
	require.Len(t, b.ContactPayments, 1, "one receipt in Sage, not one per invoice")
	for _, inv := range b.SalesInvoices {
		switch inv.InvoiceNumber {
		case "HH-1004":
			require.Equal(t, inv.TotalAmount.StringFixed(2), inv.OutstandingAmount.StringFixed(2), "nothing is left allocated to the old invoice")
		case "HH-1005":
			require.Equal(t, "180.00", inv.OutstandingAmount.StringFixed(2), "the receipt is allocated to the new invoice")
		}
	}
	for _, c := range e.status().Companies {
		require.Zero(t, c.OpenErrors, "company %d", c.CompanyID)
	}
}

// A customer made in GES since the connection is looked for through the business's contact
// index instead of three searches: the first reads Sage's customers whole, each later one only
// what changed in Sage since a little before the last read. A contact a bookkeeper typed into
// Sage in between is still found (by its email, the one key it shares) and linked, not
// duplicated.
func TestNewCustomersReadOnlyWhatChangedInSage(t *testing.T) {
	e := newConnectedAnHourAgo(t)
	e.caughtUp()
	e.proxy.takeCalls()

	e.exec(customerSQL)
	e.caughtUp()
	require.Equal(t, []string{"GET /contacts", "POST /contacts"}, e.proxy.takeCalls(), "the index's first read finds none of its keys")

	b := e.business(0)
	hand, err := e.handSession(b.ID).CreateContact(context.Background(), sage.ContactRequest{
		Name: "Tom Hardy", ContactTypeIDs: []string{"CUSTOMER"},
		MainContactPerson: &sage.ContactPerson{Name: "Tom Hardy", Email: "tom.hardy@example.co.uk"},
	})
	require.NoError(t, err)
	e.exec(`INSERT INTO customers (id, company_id, account_ref, first_name, last_name, email) VALUES (11, 1, 'HARD01', 'Tom', 'Hardy', 'Tom.Hardy@Example.co.uk')`)
	e.caughtUp()
	calls := e.proxy.takeCalls()
	require.Equal(t, []string{"GET /contacts", "GET /contacts"}, calls[:2], "the index's read, then the email's search: the only rule with a key in the index")
	require.NotContains(t, calls, "POST /contacts")
	require.Equal(t, hand.ID, e.mappedTo("customers", 11))
	require.Len(t, e.business(0).Contacts, 2)

	e.exec(`INSERT INTO customers (id, company_id, account_ref, first_name, last_name, email, postcode) VALUES (12, 1, 'NEW01', 'Ann', 'New', 'ann@example.co.uk', 'LS1 4AB')`)
	e.caughtUp()
	require.Equal(t, []string{"GET /contacts", "POST /contacts"}, e.proxy.takeCalls())
	require.Len(t, e.business(0).Contacts, 3)
}

// Sage lists a business's customers a page at a time, each page from what it holds then. A
// contact that stops being a customer while gessync reads them moves the rest up a page, so
// one it has not read yet (R200, first on page 2) lands on page 1, already read. That read
// does not count (a contact was edited while it ran), so the customer matching R200 is
// searched for, and linked: without the check, the index would lack R200 for good, and the
// customer would be created again (here refused: the reference is taken).
func TestAContactChangedWhileTheIndexReadsSkipsNothing(t *testing.T) {
	// The sandbox's clock is set back an hour while 450 contacts are typed in by hand, so that
	// they are not among what changed while gessync reads.
	var back atomic.Int64
	e := newConnectedAnHourAgoWith(t, sagetest.Options{RateLimit: -1, Now: func() time.Time { return time.Now().Add(-time.Duration(back.Load())) }})
	e.caughtUp()
	ctx := context.Background()
	back.Store(int64(time.Hour))
	ids := make([]string, 450)
	for i, typist := 0, e.handSession(e.business(0).ID); i < len(ids); i++ {
		c, err := typist.CreateContact(ctx, sage.ContactRequest{Name: fmt.Sprintf("Hand %03d", i), Reference: fmt.Sprintf("R%03d", i), ContactTypeIDs: []string{"CUSTOMER"}})
		require.NoError(t, err)
		ids[i] = c.ID
	}
	back.Store(0)
	hand := e.handSession(e.business(0).ID)
	var once sync.Once
	hook := func(r *http.Request) {
		if strings.HasSuffix(r.URL.Path, "/contacts") && r.URL.Query().Get("page") == "2" {
			once.Do(func() {
				_, err := hand.UpdateContact(ctx, ids[0], sage.ContactRequest{ContactTypeIDs: []string{"VENDOR"}})
				assert.NoError(t, err)
			})
		}
	}
	e.proxy.beforeRead.Store(&hook)
	e.exec(`INSERT INTO customers (id, company_id, account_ref, first_name, last_name) VALUES (41, 1, 'R200', 'Tom', 'Other')`)
	e.caughtUp()
	require.Equal(t, ids[200], e.mappedTo("customers", 41), "linked to R200")
	require.Zero(t, e.status().Companies[0].OpenErrors)
}

// A business with more customers than GESSYNC_CONTACT_INDEX has no index: its new customers
// are searched for by each rule, as before the index, and gessync_contact_index_off_total says
// why. GESSYNC_CONTACT_INDEX=0 turns the index off for every business: searches only.
func TestContactIndexOffSearchesAndIsCounted(t *testing.T) {
	e := newEnv(t)
	e.start("GESSYNC_CONTACT_INDEX=1")
	e.connect(1)
	e.exec(`UPDATE gessync.connections SET connected_at = connected_at - interval '1 hour' WHERE company_id = 1`)
	b := e.business(0)
	for _, name := range []string{"Tom Hardy", "Ann Lee"} {
		_, err := e.handSession(b.ID).CreateContact(context.Background(), sage.ContactRequest{Name: name, ContactTypeIDs: []string{"CUSTOMER"}})
		require.NoError(t, err)
	}
	e.caughtUp()
	e.proxy.takeCalls()

	e.exec(customerSQL)
	e.caughtUp()
	require.Equal(t, []string{"GET /contacts", "GET /contacts", "GET /contacts", "GET /contacts", "POST /contacts"}, e.proxy.takeCalls(),
		"the index's first read finds two customers, more than it may hold: each rule searches")
	off, ok := metric(e.metrics(), "gessync_contact_index_off_total", "reason=too_many_customers")
	require.True(t, ok)
	require.Equal(t, 1.0, off)
	require.Contains(t, e.logs.String(), "contact index off")

	e.stop()
	e.start("GESSYNC_CONTACT_INDEX=0")
	e.exec(`INSERT INTO customers (id, company_id, account_ref, first_name, last_name, email, postcode) VALUES (12, 1, 'NEW01', 'Ann', 'New', 'ann@example.co.uk', 'LS1 4AB')`)
	e.caughtUp()
	require.Equal(t, []string{"GET /contacts", "GET /contacts", "GET /contacts", "POST /contacts"}, e.proxy.takeCalls(), "no index: three searches")
	m := e.metrics()
	for _, reason := range []string{"too_many_customers", "keys_spent", "no_date", "reads_not_whole"} {
		off, ok := metric(m, "gessync_contact_index_off_total", "reason="+reason)
		require.True(t, ok, reason)
		require.Zero(t, off, "a new process, and no index to turn off: %s", reason)
	}
	require.Len(t, e.business(0).Contacts, 4)
}

// A replication cut ends a stream and its pipeline, not what gessync knows of Sage: the next
// new customer reads only what changed in Sage since the index's last read, rather than every
// customer of the business again.
func TestContactIndexOutlivesAReplicationCut(t *testing.T) {
	e := newConnectedAnHourAgo(t)
	var mu sync.Mutex
	var reads []url.Values
	hook := func(r *http.Request) {
		if strings.HasSuffix(r.URL.Path, "/contacts") && r.URL.Query().Get("contact_type_id") == "CUSTOMER" {
			mu.Lock()
			reads = append(reads, r.URL.Query())
			mu.Unlock()
		}
	}
	e.proxy.beforeRead.Store(&hook)
	taken := func() []url.Values {
		mu.Lock()
		defer mu.Unlock()
		out := reads
		reads = nil
		return out
	}
	e.exec(customerSQL)
	e.caughtUp()
	first := taken()
	require.Len(t, first, 1)
	require.Empty(t, first[0].Get("updated_or_created_since"), "the business's first read: every customer")

	var walsender int
	require.NoError(t, e.db.QueryRow(context.Background(), `SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1`, e.dbName).Scan(&walsender))
	e.exec(`SELECT pg_terminate_backend($1)`, walsender)
	e.eventually(20*time.Second, "a new stream", func() bool {
		var pid *int
		return e.db.QueryRow(context.Background(), `SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1`, e.dbName).Scan(&pid) == nil &&
			pid != nil && *pid != walsender
	})

	e.exec(`INSERT INTO customers (id, company_id, account_ref, first_name, last_name, email, postcode) VALUES (12, 1, 'NEW01', 'Ann', 'New', 'ann@example.co.uk', 'LS1 4AB')`)
	e.caughtUp()
	after := taken()
	require.Len(t, after, 1)
	require.NotEmpty(t, after[0].Get("updated_or_created_since"), "only what changed since the index's last read")
	require.Len(t, e.business(0).Contacts, 2)
}
