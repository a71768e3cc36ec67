package e2e_test

import (
	"context"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// connectedAnHourAgo moves company's connection time an hour back, as if it had connected then:
// records GES creates from now on are new since the connection.
func (e *env) connectedAnHourAgo(company int) {
	e.t.Helper()
	e.exec(`UPDATE gessync.connections SET connected_at = connected_at - interval '1 hour' WHERE company_id = $1`, company)
}

// A record made in GES since its company connected cannot already be in Sage, so it costs one
// write: no search of the contacts, the invoices or the receipts first. A payment reads its
// invoice once (what is outstanding, for overpayments), and an update of a payment that changes
// nothing Sage sees makes no call at all. A record older than the connection is still looked
// for before it is created.
func TestNewRecordsCostOneWriteEachAndOldOnesAreStillMatched(t *testing.T) {
	e := newEnv(t)
	e.start()
	e.connect(1)
	e.connectedAnHourAgo(1)
	e.caughtUp()
	e.proxy.takeCalls()

	e.exec(customerSQL)
	e.exec(invoiceSQL)
	e.exec(paymentSQL)
	e.caughtUp()
	require.Equal(t, []string{
		"POST /contacts",
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

	// Created in GES two hours ago, before the connection: it may be in Sage already, so the
	// contacts are searched (and, finding nothing, it is created).
	e.exec(`INSERT INTO customers (id, company_id, account_ref, first_name, last_name, email, postcode, created_at)
		VALUES (11, 1, 'OKAF01', 'Chidi', 'Okafor', 'c.okafor@example.co.uk', 'M14 5TP', now() - interval '2 hours')`)
	e.caughtUp()
	calls := e.proxy.takeCalls()
	require.NotEmpty(t, calls)
	require.Equal(t, "POST /contacts", calls[len(calls)-1])
	require.Contains(t, calls, "GET /contacts", "a customer older than the connection is looked for in Sage first")
	require.Len(t, e.business(0).Contacts, 2)
}

// A create whose reply never arrived, of a record made since the connection, is looked for in
// Sage on the next attempt (the attempt was recorded before it was sent): edited in between,
// it is linked and updated, never created twice, and never refused for reusing its
// idempotency_id with another body.
func TestLostReplyOfANewRecordEditedMeanwhileIsLinkedNotDuplicated(t *testing.T) {
	e := newEnv(t)
	e.start()
	e.connect(1)
	e.connectedAnHourAgo(1)
	e.caughtUp()

	var fired atomic.Bool
	hook := func(r *http.Request, status int) bool {
		if r.Method == http.MethodPost && strings.HasSuffix(r.URL.Path, "/contacts") && status == 201 && fired.CompareAndSwap(false, true) {
			e.kill()
			return false
		}
		return true
	}
	e.proxy.afterWrite.Store(&hook)
	e.exec(customerSQL)
	e.eventually(30*time.Second, "daemon killed after Sage created the contact", func() bool { return fired.Load() && e.daemon == nil })
	e.proxy.afterWrite.Store(nil)
	e.exec(`UPDATE customers SET email = 'margaret@bennett.example.co.uk', updated_at = now() WHERE id = 10`)

	e.start()
	e.caughtUp()
	b := e.business(0)
	require.Len(t, b.Contacts, 1)
	require.Equal(t, "margaret@bennett.example.co.uk", b.Contacts[0].MainContactPerson.Email)
	st := e.status()
	for _, c := range st.Companies {
		require.Zero(t, c.OpenErrors, "company %d", c.CompanyID)
	}
	var attempts int
	require.NoError(t, e.db.QueryRow(context.Background(), `SELECT count(*) FROM gessync.create_attempts`).Scan(&attempts))
	require.Zero(t, attempts, "an acknowledged create forgets its attempt")
}
