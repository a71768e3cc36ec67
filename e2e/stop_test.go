package e2e_test

import (
	"context"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
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
	e.exitsCleanly(p, 15*time.Second, "the daemon did not exit after its call finished")

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
	e.exitsCleanly(p, time.Minute, "the stop waited for the change being retried")

	e.setFaults(`{}`)
	e.start()
	e.caughtUp()
	require.Len(t, e.business(0).Contacts, 1, "the change given up was replayed")
}

// A leader waiting for another consumer to release the slot applies nothing, so a stop does
// not wait out the grace (5 min here) before it exits. Found by a breaker: the wait ran under the
// context that only the grace ends.
func TestSIGTERMWhileWaitingForTheSlotStopsAtOnce(t *testing.T) {
	e := newEnv(t)
	e.start()
	e.stop()
	sep := "?"
	if strings.Contains(e.gesURL, "?") {
		sep = "&"
	}
	conn, err := pgconn.Connect(context.Background(), e.gesURL+sep+"replication=database")
	require.NoError(t, err)
	defer conn.Close(context.Background())
	require.NoError(t, pglogrepl.StartReplication(context.Background(), conn, e.dbName, 0,
		pglogrepl.StartReplicationOptions{PluginArgs: []string{"proto_version '1'", "publication_names 'gessync'"}}))
	e.launch("GESSYNC_STOP_GRACE=5m")
	e.eventually(20*time.Second, "waiting for the slot", func() bool {
		st, ok := e.tryStatus()
		return ok && strings.Contains(st.RoleDetail, "release the slot")
	})
	p := e.proc()
	require.NoError(t, p.cmd.Process.Signal(syscall.SIGTERM))
	e.exitsCleanly(p, time.Minute, "the stop waited for the grace although nothing was being applied")
}

// exitsCleanly waits up to limit for the daemon p to exit, fails with why when it does not,
// and requires exit status 0.
func (e *env) exitsCleanly(p *proc, limit time.Duration, why string) {
	e.t.Helper()
	select {
	case <-p.done:
	case <-time.After(limit):
		e.t.Fatal(why)
	}
	require.Zero(e.t, p.cmd.ProcessState.ExitCode(), "a graceful stop exits 0")
	e.setProc(nil)
}
