package e2e_test

import (
	"crypto/sha256"
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// incompressible returns n bytes of text that PostgreSQL stores out of line (TOASTed).
func incompressible(n int) string {
	var b strings.Builder
	for i := 0; b.Len() < n; i++ {
		fmt.Fprintf(&b, "%x ", sha256.Sum256([]byte(fmt.Sprint(i))))
	}
	return b.String()[:n]
}

func TestAnUpdateThatLeavesToastedNotesUnchangedNeverBlanksThem(t *testing.T) {
	e := newEnv(t)
	e.start()
	e.connect(1)
	notes := incompressible(12000)
	e.exec(`INSERT INTO customers (id, company_id, first_name, last_name, notes) VALUES (10, 1, 'Toast', 'Ed', $1)`, notes)
	e.caughtUp()
	before := e.business(0).Contacts[0].Notes
	require.NotEmpty(t, before)
	e.exec(`UPDATE customers SET email = 'toast@example.com', updated_at = now() WHERE id = 10`) // notes: unchanged TOAST
	e.caughtUp()
	c := e.business(0).Contacts[0]
	require.Equal(t, "toast@example.com", c.MainContactPerson.Email)
	require.Equal(t, before, c.Notes, "the TOASTed notes survive an update that did not touch them")
}

func TestARowUpdatedManyTimesInOneTransactionArrivesOnceWithItsLastValue(t *testing.T) {
	e := newEnv(t)
	e.start()
	e.connect(1)
	var writes atomic.Int64
	hook := func(r *http.Request, status int) bool {
		if strings.Contains(r.URL.Path, "/contacts") {
			writes.Add(1)
		}
		return true
	}
	e.proxy.afterWrite.Store(&hook)
	var sql strings.Builder
	sql.WriteString(`BEGIN; INSERT INTO customers (id, company_id, first_name, last_name, email) VALUES (10, 1, 'Many', 'Edits', 'e0@example.com');`)
	for i := 1; i <= 50; i++ {
		fmt.Fprintf(&sql, `UPDATE customers SET email = 'e%d@example.com', updated_at = now() WHERE id = 10;`, i)
	}
	sql.WriteString(`COMMIT`)
	e.exec(sql.String())
	e.caughtUp()
	b := e.business(0)
	require.Len(t, b.Contacts, 1)
	require.Equal(t, "e50@example.com", b.Contacts[0].MainContactPerson.Email)
	require.Equal(t, int64(1), writes.Load(), "51 changes of one record in one transaction make one Sage write")
}

func TestColumnsAddedWhileRunningAndWhileStoppedAreIgnored(t *testing.T) {
	e := newEnv(t)
	e.start()
	e.connect(1)
	e.exec(`ALTER TABLE customers ADD COLUMN loyalty_tier text DEFAULT 'gold'`)
	e.exec(customerSQL)
	e.caughtUp()
	e.stop()
	e.exec(`ALTER TABLE invoices ADD COLUMN engineer_initials text`)
	e.start()
	e.exec(invoiceSQL)
	e.exec(`UPDATE invoices SET engineer_initials = 'JH' WHERE id = 20`)
	e.caughtUp()
	b := e.business(0)
	require.Len(t, b.Contacts, 1)
	require.Len(t, b.SalesInvoices, 1)
	e.requireNoOpenErrors()
}

func TestTruncateIsReportedAndTheStreamGoesOn(t *testing.T) {
	e := newSyncedSample(t)
	e.exec(`TRUNCATE payments`)
	e.exec(`INSERT INTO customers (id, company_id, first_name, last_name) VALUES (11, 1, 'After', 'Truncate')`)
	e.caughtUp()
	require.Len(t, e.business(0).Contacts, 2, "changes after the TRUNCATE still sync")
	require.Len(t, e.business(0).ContactPayments, 1, "Sage's records are kept")
	require.Contains(t, e.logs.String(), "TRUNCATE", "the TRUNCATE is reported")
}

func TestTheSlotAdvancesWhileOnlyOtherTablesChange(t *testing.T) {
	e := newEnv(t)
	e.start()
	e.connect(1)
	e.exec(customerSQL)
	e.caughtUp()
	for i := 0; i < 50; i++ {
		e.exec(`UPDATE companies SET name = name WHERE id = 1`) // unpublished table: WAL, no change
	}
	target := e.walLSN()
	e.eventually(30*time.Second, "the slot's confirmed position passes the unpublished writes", func() bool { return e.slotFlush() >= target })
}

func TestWalSenderTimeoutIsNeverHitWhileSageIsSlow(t *testing.T) {
	e := newEnv(t)
	e.exec(`ALTER SYSTEM SET wal_sender_timeout = '2s'`)
	e.exec(`SELECT pg_reload_conf()`)
	t.Cleanup(func() {
		e.exec(`ALTER SYSTEM RESET wal_sender_timeout`)
		e.exec(`SELECT pg_reload_conf()`)
	})
	e.start()
	e.connect(1)
	e.setFaults(`{"latency": "2500ms"}`) // every Sage call outlasts wal_sender_timeout
	e.exec(customerSQL)
	e.exec(invoiceSQL)
	e.caughtUpWithin(2 * time.Minute)
	e.setFaults(`{}`)
	require.Len(t, e.business(0).SalesInvoices, 1)
	require.NotContains(t, e.logs.String(), "stream stopped", "the replication connection was never dropped")
}
