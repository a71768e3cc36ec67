package e2e_test

import (
	"context"
	"fmt"
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
	e, _, gone := receiptGone(t, false)
	e.resyncForce("payments", 30)
	b := e.business(0)
	require.Len(t, b.ContactPayments, 1, "created again")
	require.NotEqual(t, gone, b.ContactPayments[0].ID)
	require.Equal(t, "250.00", b.ContactPayments[0].TotalAmount.StringFixed(2))
	require.Zero(t, e.status().Companies[0].OpenErrors)
}

// The same for a customer's contact (a customer's create always searches Sage first, so it
// reads the replaced record on the resync itself).
func TestResyncCreatesAgainAContactDeletedInSage(t *testing.T) {
	e, _, gone := contactGone(t)
	e.resyncForce("customers", 11)
	b := e.business(0)
	require.Len(t, b.Contacts, 1, "created again")
	require.NotEqual(t, gone, b.Contacts[0].ID)
	require.Zero(t, e.status().Companies[0].OpenErrors)
}

// receiptGone syncs payment 30 (made in GES before the connection when history), deletes its
// receipt in Sage by hand and edits the payment to 250.00: the update is refused (not found).
// It returns the env, the Sage business id and the gone receipt's id; contactGone's twin.
func receiptGone(t *testing.T, history bool) (*env, string, string) {
	e, biz := twoCustomersTwoInvoices(t)
	e.exec(paymentSQL)
	if history {
		e.exec(`UPDATE payments SET created_at = now() - interval '2 hours' WHERE id = 30`)
	}
	e.caughtUp()
	b := e.business(0)
	require.Len(t, b.ContactPayments, 1)
	gone := b.ContactPayments[0].ID
	require.NoError(t, e.handSession(biz).DeleteContactPayment(context.Background(), gone))
	e.exec(`UPDATE payments SET amount = 250.00 WHERE id = 30`)
	e.caughtUp()
	require.Equal(t, 1, e.status().Companies[0].OpenErrors, "the update is refused: Sage has no such receipt")
	return e, biz, gone
}

// contactGone syncs customer 11, deletes its contact in Sage by hand and edits the customer:
// the update is refused (not found). It returns the env, the Sage business id and the gone
// contact's id.
func contactGone(t *testing.T) (*env, string, string) {
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
	return e, b.ID, gone
}

// replacesOf is the Sage record the next create of (table, id) replaces, as state records it
// (create_attempts.replaces), or "<none>".
func (e *env) replacesOf(table string, id int64) string {
	e.t.Helper()
	var r string
	if err := e.db.QueryRow(context.Background(), `SELECT replaces FROM gessync.create_attempts WHERE ges_table = $1 AND ges_id = $2`, table, id).Scan(&r); err != nil {
		return "<none>"
	}
	return r
}

// mappedTo is the Sage id (table, id) is mapped to, or "<none>".
func (e *env) mappedTo(table string, id int64) string {
	e.t.Helper()
	var r string
	if err := e.db.QueryRow(context.Background(), `SELECT sage_id FROM gessync.id_map WHERE ges_table = $1 AND ges_id = $2`, table, id).Scan(&r); err != nil {
		return "<none>"
	}
	return r
}

// contactGoneAndForgotten syncs customer 11, deletes its contact in Sage by hand, has its next
// edit refused (not found), and presses Resync while the business is read-only: the mapping is
// forgotten, and the re-create refused (403), so nothing reached Sage. It returns the env and
// the gone contact's id.
func contactGoneAndForgotten(t *testing.T) (*env, string) {
	e, biz, gone := contactGone(t)
	e.setFaults(fmt.Sprintf(`{"businesses":{%q:{"read_only":true}}}`, biz))
	e.resyncForce("customers", 11)
	e.setFaults(`{}`)
	require.Equal(t, gone, e.replacesOf("customers", 11), "ForgetSageRecord noted the gone contact")
	require.Equal(t, "<none>", e.mappedTo("customers", 11))
	return e, gone
}

// Found by a breaker: when the Resync's re-create does not reach Sage, the customer's next edit
// (streamed, not a resync) creates the contact with the new idempotency_id too. With the first
// create's, Sage refused it (another body), or, when the edit put back what the first create
// sent, answered with the contact that is gone, and gessync mapped the customer to it.
func TestAStreamedEditAfterResyncCreatesTheContactAgain(t *testing.T) {
	for _, town := range []string{"Hebden Bridge", "Bradford"} { // Bradford: the first body
		t.Run(town, func(t *testing.T) {
			e, gone := contactGoneAndForgotten(t)
			e.exec(`UPDATE customers SET town = $1, updated_at = now() WHERE id = 11`, town)
			e.caughtUp()
			b := e.business(0)
			require.Len(t, b.Contacts, 1, "created again")
			require.NotEqual(t, gone, e.mappedTo("customers", 11), "not mapped to the contact that is gone")
			require.Equal(t, b.Contacts[0].ID, e.mappedTo("customers", 11))
			require.Zero(t, e.status().Companies[0].OpenErrors)
		})
	}
}

// The same for a history payment (made in GES before the connection): its next edit creates the
// receipt again.
func TestAStreamedEditAfterResyncCreatesAHistoryReceiptAgain(t *testing.T) {
	e, biz, gone := receiptGone(t, true)
	e.setFaults(fmt.Sprintf(`{"businesses":{%q:{"read_only":true}}}`, biz))
	e.resyncForce("payments", 30)
	e.setFaults(`{}`)
	require.Equal(t, gone, e.replacesOf("payments", 30))

	e.exec(`UPDATE payments SET amount = 260.00 WHERE id = 30`)
	e.caughtUp()
	b := e.business(0)
	require.Len(t, b.ContactPayments, 1, "created again")
	require.Equal(t, "260.00", b.ContactPayments[0].TotalAmount.StringFixed(2))
	require.Zero(t, e.status().Companies[0].OpenErrors)
}

// A daemon killed while the Resync's re-create is being retried (Sage failing) forgets the
// queued resync, but not what the create replaces: read from state at the next start, it is
// used by the customer's next edit.
func TestAReplacementSurvivesARestart(t *testing.T) {
	e, biz, gone := contactGone(t)
	e.setFaults(fmt.Sprintf(`{"businesses":{%q:{"fail_all":true}}}`, biz))
	e.proxy.takeCalls()
	require.Less(t, e.api(http.MethodPost, "/api/companies/1/resync", "", map[string]any{"table": "customers", "id": 11, "force": true}, nil), 300)
	e.eventually(20*time.Second, "the resync tried", func() bool {
		for _, c := range e.proxy.takeCalls() {
			if c == "GET /contacts" {
				return true
			}
		}
		return false
	})
	e.kill()
	e.setFaults(`{}`)
	require.Equal(t, gone, e.replacesOf("customers", 11))

	e.start()
	e.caughtUp()
	e.exec(`UPDATE customers SET town = 'Hebden Bridge', updated_at = now() WHERE id = 11`)
	e.caughtUp()
	require.Len(t, e.business(0).Contacts, 1, "created again")
	require.NotEqual(t, gone, e.mappedTo("customers", 11))
	require.Zero(t, e.status().Companies[0].OpenErrors)
}

// A payment whose receipt is gone from Sage, and whose re-create was refused, is then deleted in
// GES: nothing is left to do, so its errors are resolved and its create attempt forgotten. They
// stayed open before: with no mapping, the delete was not even routed to its company.
func TestDeletingARecordThatIsNotInSageClearsItsErrors(t *testing.T) {
	e, biz := twoCustomersTwoInvoices(t)
	e.exec(paymentSQL)
	e.caughtUp()
	require.NoError(t, e.handSession(biz).DeleteContactPayment(context.Background(), e.business(0).ContactPayments[0].ID))
	e.exec(`UPDATE payments SET amount = 250.00 WHERE id = 30`)
	e.caughtUp()
	e.setFaults(fmt.Sprintf(`{"businesses":{%q:{"read_only":true}}}`, biz))
	e.resyncForce("payments", 30)
	e.setFaults(`{}`)
	require.Equal(t, 2, e.status().Companies[0].OpenErrors, "not found, then the re-create refused")

	e.exec(`DELETE FROM payments WHERE id = 30`)
	e.caughtUp()
	require.Zero(t, e.status().Companies[0].OpenErrors, "the payment is gone: nothing for a person to do")
	require.Equal(t, "<none>", e.replacesOf("payments", 30), "its create attempt is forgotten")
	require.Empty(t, e.business(0).ContactPayments)
}
