package pipeline

import (
	"sort"
	"sync"
	"time"

	"github.com/jackc/pglogrepl"
)

// Tracker resolves per-change acknowledgements into the safe LSN: the end LSN of the last
// transaction such that it and every transaction before it are committed and fully handled.
// Transactions are registered in commit order (the order pgoutput sends them). It is safe for
// concurrent use: the dispatcher adds and commits, workers mark changes done.
type Tracker struct {
	mu     sync.Mutex
	txns   []*txn // open or not yet handled transactions, in commit order
	safe   pglogrepl.LSN
	txnLSN pglogrepl.LSN // safe LSN as moved by transactions only (what is worth persisting)
}

type txn struct {
	commitLSN  pglogrepl.LSN
	endLSN     pglogrepl.LSN
	commitTime time.Time
	pending    int
	committed  bool
}

// NewTracker starts at start: the stored checkpoint or the slot's confirmed_flush_lsn.
func NewTracker(start pglogrepl.LSN) *Tracker { return &Tracker{safe: start, txnLSN: start} }

func (t *Tracker) find(commitLSN pglogrepl.LSN, commitTime time.Time) *txn {
	if n := len(t.txns); n > 0 && t.txns[n-1].commitLSN == commitLSN {
		return t.txns[n-1]
	}
	x := &txn{commitLSN: commitLSN, commitTime: commitTime}
	t.txns = append(t.txns, x)
	return x
}

// Add registers one change of the transaction committing at commitLSN.
func (t *Tracker) Add(commitLSN pglogrepl.LSN, commitTime time.Time) {
	t.mu.Lock()
	t.find(commitLSN, commitTime).pending++
	t.mu.Unlock()
}

// Done marks one change of the transaction at commitLSN handled (acknowledged by Sage, logged as
// a failure that needs a person, or skipped by rule).
func (t *Tracker) Done(commitLSN pglogrepl.LSN) {
	t.mu.Lock()
	defer t.mu.Unlock()
	// txns is in commit order, so a binary search finds it: a linear one cost O(backlog) a
	// change, most when gessync was furthest behind.
	i := sort.Search(len(t.txns), func(i int) bool { return t.txns[i].commitLSN >= commitLSN })
	if i < len(t.txns) && t.txns[i].commitLSN == commitLSN {
		t.txns[i].pending--
		if i == 0 {
			t.advance()
		}
	}
}

// Commit records that the transaction at commitLSN is complete and ends at endLSN.
func (t *Tracker) Commit(commitLSN, endLSN pglogrepl.LSN, commitTime time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	x := t.find(commitLSN, commitTime)
	x.endLSN, x.committed = endLSN, true
	t.advance()
}

func (t *Tracker) advance() {
	i := 0
	for ; i < len(t.txns); i++ {
		x := t.txns[i]
		if !x.committed || x.pending > 0 {
			break
		}
		if x.endLSN > t.safe {
			t.safe = x.endLSN
		}
		if x.endLSN > t.txnLSN {
			t.txnLSN = x.endLSN
		}
	}
	if i > 0 {
		// Re-slicing keeps the front of the backing array until append grows it anew, and
		// costs nothing per call; copying down (as before) cost O(backlog) each time.
		clear(t.txns[:i])
		t.txns = t.txns[i:]
	}
}

// Idle moves the safe LSN to lsn (a keepalive position the server has sent everything up to)
// when no transaction is pending, so the slot advances while the published tables are quiet.
func (t *Tracker) Idle(lsn pglogrepl.LSN) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.txns) == 0 && lsn > t.safe {
		t.safe = lsn
	}
}

// Safe returns the LSN below which every change is handled.
func (t *Tracker) Safe() pglogrepl.LSN {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.safe
}

// TxnSafe returns the safe LSN as moved by handled transactions only (not by keepalives): the
// checkpoint worth persisting.
func (t *Tracker) TxnSafe() pglogrepl.LSN {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.txnLSN
}

// Pending returns how many transactions are not yet fully handled, and the commit time of the
// oldest (zero when none).
func (t *Tracker) Pending() (int, time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.txns) == 0 {
		return 0, time.Time{}
	}
	return len(t.txns), t.txns[0].commitTime
}
