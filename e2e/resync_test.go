package e2e_test

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// resyncForce presses Resync on (table, id) of company 1 and waits until the company has
// nothing pending, the resync's change handled.
func (e *env) resyncForce(table string, id int64) {
	e.t.Helper()
	require.Less(e.t, e.api(http.MethodPost, "/api/companies/1/resync", "", map[string]any{"table": table, "id": id, "force": true}, nil), 300)
	e.eventually(30*time.Second, "the resync handled", func() bool {
		st, ok := e.tryStatus()
		return ok && len(st.Companies) > 0 && st.Companies[0].Pending == 0
	})
}

// A receipt deleted in Sage by hand the day after gessync created it: the payment's next edit is
// refused (not found), and Resync creates it again. The new create carries an idempotency_id of
// its own: with the first one's, which Sage keeps for 7 days, it was refused (the sandbox) or
// answered with the receipt that is gone.
func TestResyncCreatesAgainAReceiptDeletedInSage(t *testing.T) {
	e, biz := twoCustomersTwoInvoices(t)
	e.exec(paymentSQL)
	e.caughtUp()
	b := e.business(0)
	require.Len(t, b.ContactPayments, 1)
	gone := b.ContactPayments[0].ID
	require.NoError(t, e.handSession(biz).DeleteContactPayment(context.Background(), gone))
	e.exec(`UPDATE payments SET amount = 250.00 WHERE id = 30`)
	e.caughtUp()
	require.Equal(t, 1, e.status().Companies[0].OpenErrors, "the update is refused: Sage has no such receipt")

	e.resyncForce("payments", 30)
	b = e.business(0)
	require.Len(t, b.ContactPayments, 1, "created again")
	require.NotEqual(t, gone, b.ContactPayments[0].ID)
	require.Equal(t, "250.00", b.ContactPayments[0].TotalAmount.StringFixed(2))
	require.Zero(t, e.status().Companies[0].OpenErrors)
}

// The same for a customer's contact (a customer's create always searches Sage first, so it
// reads the replaced record on the resync itself).
func TestResyncCreatesAgainAContactDeletedInSage(t *testing.T) {
	e := newConnectedAnHourAgo(t)
	e.exec(customer11SQL)
	e.caughtUp()
	b := e.business(0)
	require.Len(t, b.Contacts, 1)
	gone := b.Contacts[0].ID
	require.NoError(t, e.handSession(b.ID).DeleteContact(context.Background(), gone))
	e.exec(`UPDATE customers SET town = 'Halifax', updated_at = now() WHERE id = 11`)
	e.caughtUp()
	require.Equal(t, 1, e.status().Companies[0].OpenErrors, "the update is refused: Sage has no such contact")

	e.resyncForce("customers", 11)
	b = e.business(0)
	require.Len(t, b.Contacts, 1, "created again")
	require.NotEqual(t, gone, b.Contacts[0].ID)
	require.Zero(t, e.status().Companies[0].OpenErrors)
}
