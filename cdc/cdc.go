// Package cdc owns gessync's logical replication connection to the GES database.
//
// It creates the publication and the slot when asked, checks that customers, invoices and
// payments are published with the columns gessync needs, decodes pgoutput protocol 1
// (https://www.postgresql.org/docs/15/protocol-logicalrep-message-formats.html) into typed
// Change values, answers keepalives on a timer, and reports to PostgreSQL only the LSN the rest
// of the daemon declared safe (never what it merely received).
package cdc

import (
	"time"

	"github.com/jackc/pglogrepl"
)

// Op is the kind of a row change.
type Op uint8

const (
	// Insert is a pgoutput Insert message: New holds the whole row.
	Insert Op = iota + 1
	// Update is a pgoutput Update message: New holds the row, with unchanged TOASTed columns marked.
	Update
	// Delete is a pgoutput Delete message: with GES's default replica identity only Key is set.
	Delete
)

func (o Op) String() string {
	switch o {
	case Insert:
		return "insert"
	case Update:
		return "update"
	case Delete:
		return "delete"
	}
	return "unknown"
}

// Value is one column of a row in PostgreSQL's text format, as pgoutput sends it.
type Value struct {
	// Text is the column's text representation (numeric "85.00", date "2026-11-29",
	// timestamptz "2026-11-29 13:56:32.123456+00", jsonb as JSON text).
	Text string
	// Null is true for SQL NULL.
	Null bool
	// Unchanged is true for a TOASTed value the update did not change ('u' in pgoutput):
	// the value is not in the message and must never be read as empty.
	Unchanged bool
}

// Row maps column names to values. Columns gessync does not know are kept and ignored.
type Row map[string]Value

// ID returns the row's "id" column parsed as an integer, and false when absent or malformed.
func (r Row) ID() (int64, bool) { return r.Int("id") }

// Int returns column name parsed as a base-10 integer, and false when absent, null or malformed.
func (r Row) Int(name string) (int64, bool) {
	v, ok := r[name]
	if !ok || v.Null || v.Unchanged {
		return 0, false
	}
	var n int64
	if v.Text == "" {
		return 0, false
	}
	neg := false
	s := v.Text
	if s[0] == '-' {
		neg, s = true, s[1:]
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	if neg {
		n = -n
	}
	return n, true
}

// HasUnchanged reports whether any column is an unchanged TOAST value.
func (r Row) HasUnchanged() bool {
	for _, v := range r {
		if v.Unchanged {
			return true
		}
	}
	return false
}

// Change is one committed row change of a published table.
type Change struct {
	// Table is the relation name: "customers", "invoices" or "payments".
	Table string
	Op    Op
	// New is the new row for Insert and Update; nil for Delete.
	New Row
	// Key is the old key for Delete (the primary key columns under the default replica
	// identity), and for an Update that changed the key; nil otherwise.
	Key Row
	// XID is the transaction's id (pgoutput Begin).
	XID uint32
	// CommitLSN is the LSN of the transaction's commit record (Begin.FinalLSN); with Seq it
	// identifies the change uniquely and orders it.
	CommitLSN pglogrepl.LSN
	// CommitTime is the transaction's commit time, UTC.
	CommitTime time.Time
	// Seq is the change's position inside its transaction, from 0.
	Seq int
}

// EventKind tells the kinds of Event the cdc stream emits, in WAL order.
type EventKind uint8

const (
	// EventChange carries one row change of a transaction.
	EventChange EventKind = iota + 1
	// EventCommit closes a transaction: every change of it has been emitted before it.
	EventCommit
	// EventTruncate reports a TRUNCATE of a published table (gessync does not delete Sage
	// records for it; it is logged and counted).
	EventTruncate
	// EventKeepalive carries, in EndLSN, a position the server has sent everything up to while
	// no transaction was open (a keepalive's ServerWALEnd). When nothing before it is pending,
	// it is safe to acknowledge, so the slot advances while GES is quiet.
	EventKeepalive
)

// Event is what the stream hands the pipeline, one at a time, in WAL order.
type Event struct {
	Kind   EventKind
	Change Change // EventChange
	// CommitLSN and EndLSN are set on EventCommit (and EndLSN on EventTruncate's transaction's
	// commit). EndLSN is pgoutput Commit's TransactionEndLSN: the position to acknowledge once
	// every change of the transaction is handled.
	CommitLSN  pglogrepl.LSN
	EndLSN     pglogrepl.LSN
	CommitTime time.Time
	// Tables names the truncated relations on EventTruncate.
	Tables []string
	// Changes counts the changes of the transaction on EventCommit.
	Changes int
}

// Tables are the GES relations gessync publishes, in dependency order.
var Tables = []string{"customers", "invoices", "payments"}
