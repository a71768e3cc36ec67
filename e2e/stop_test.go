package e2e_test

import (
	"context"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// SIGTERM lets a change whose call to Sage is in flight finish: Sage's reply is saved before
// the daemon exits, so no create is left unacknowledged (one cut off mid-call may be committed
// by Sage and makes the next start search for it), and the next start has nothing to send.
func TestSIGTERMLetsTheCallInFlightFinish(t *testing.T) {
	e := newEnv(t)
	e.start()
	e.connect(1)
	e.exec(customerSQL)
	e.caughtUp()

	h := e.holdFirstWrite(http.MethodPost, "/sales_invoices")
	e.exec(invoiceSQL)
	h.waitHeld(e, "the invoice's create")
	p := e.proc()
	require.NoError(t, p.cmd.Process.Signal(syscall.SIGTERM))
	e.eventually(10*time.Second, "the daemon stopping", func() bool {
		select {
		case <-p.done: // stopped without waiting for the call: the assertions below say so
			return true
		default:
			return strings.Contains(e.logs.String(), "stopping: finishing the changes being applied")
		}
	})
	h.letGo()
	select {
	case <-p.done:
	case <-time.After(15 * time.Second):
		t.Fatal("the daemon did not exit after its call finished")
	}
	require.Zero(t, p.cmd.ProcessState.ExitCode(), "a graceful stop exits 0")
	e.setProc(nil)

	var attempts, mapped int
	require.NoError(t, e.db.QueryRow(context.Background(), `SELECT count(*) FROM gessync.create_attempts`).Scan(&attempts))
	require.Zero(t, attempts, "the create's reply was saved before the exit")
	require.NoError(t, e.db.QueryRow(context.Background(), `SELECT count(*) FROM gessync.id_map WHERE ges_table = 'invoices' AND ges_id = 20`).Scan(&mapped))
	require.Equal(t, 1, mapped)

	e.proxy.takeCalls()
	e.start()
	e.caughtUp()
	for _, c := range e.proxy.takeCalls() {
		require.NotContains(t, c, "/sales_invoices", "nothing of the invoice is sent or searched for again")
	}
	require.Len(t, e.business(0).SalesInvoices, 1)
}

// A change waiting to be retried (Sage refusing) does not hold a stop for the whole grace: it
// is given up at once, not marked done, and sent on the next start.
func TestSIGTERMGivesUpAChangeWaitingToBeRetried(t *testing.T) {
	e := newEnv(t)
	e.start("GESSYNC_STOP_GRACE=5m")
	e.connect(1)
	e.setFaults(`{"fail_all":true}`)
	e.exec(customerSQL)
	e.eventually(20*time.Second, "the customer's create refused and waiting to be retried", func() bool {
		return strings.Contains(e.logs.String(), `"will retry"`)
	})
	p := e.proc()
	require.NoError(t, p.cmd.Process.Signal(syscall.SIGTERM))
	select {
	case <-p.done:
	case <-time.After(time.Minute):
		t.Fatal("the stop waited for the change being retried")
	}
	require.Zero(t, p.cmd.ProcessState.ExitCode())
	e.setProc(nil)

	e.setFaults(`{}`)
	e.start()
	e.caughtUp()
	require.Len(t, e.business(0).Contacts, 1, "the change given up was replayed")
}
