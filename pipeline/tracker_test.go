package pipeline

import (
	"math/rand"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/stretchr/testify/require"
)

func TestTrackerSafeLSN(t *testing.T) {
	t.Parallel()
	now := time.Now()
	for _, tc := range []struct {
		name string
		run  func(tr *Tracker)
		want pglogrepl.LSN
	}{
		{"ok - starts at the checkpoint", func(tr *Tracker) {}, 100},
		{"ok - a handled transaction moves it to its end", func(tr *Tracker) {
			tr.Add(200, now)
			tr.Done(200)
			tr.Commit(200, 250, now)
		}, 250},
		{"ok - a pending change holds it", func(tr *Tracker) {
			tr.Add(200, now)
			tr.Commit(200, 250, now)
		}, 100},
		{"ok - a later handled transaction waits for an earlier one", func(tr *Tracker) {
			tr.Add(200, now)
			tr.Commit(200, 250, now)
			tr.Add(300, now)
			tr.Done(300)
			tr.Commit(300, 350, now)
		}, 100},
		{"ok - both handled, out of order", func(tr *Tracker) {
			tr.Add(200, now)
			tr.Commit(200, 250, now)
			tr.Add(300, now)
			tr.Done(300)
			tr.Commit(300, 350, now)
			tr.Done(200)
		}, 350},
		{"ok - keepalive advances when idle", func(tr *Tracker) { tr.Idle(500) }, 500},
		{"ok - keepalive ignored while a transaction is pending", func(tr *Tracker) {
			tr.Add(200, now)
			tr.Idle(500)
		}, 100},
		{"ok - keepalive never moves it back", func(tr *Tracker) { tr.Idle(50) }, 100},
		{"ok - an empty committed transaction counts as handled", func(tr *Tracker) { tr.Commit(200, 250, now) }, 250},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tr := NewTracker(100)
			tc.run(tr)
			require.Equal(t, tc.want, tr.Safe())
		})
	}
}

// The safe LSN never passes a transaction with a change not yet done, whatever order workers
// finish in; and once everything is done it reaches the last end LSN.
func TestTrackerNeverPassesAnUnhandledChange(t *testing.T) {
	t.Parallel()
	rng := rand.New(rand.NewSource(1))
	for round := 0; round < 200; round++ {
		tr := NewTracker(10)
		type change struct{ commit pglogrepl.LSN }
		var open []change
		ends := map[pglogrepl.LSN]pglogrepl.LSN{}
		undone := map[pglogrepl.LSN]int{}
		lsn := pglogrepl.LSN(100)
		var lastEnd pglogrepl.LSN
		for txn := 0; txn < 20; txn++ {
			// A keepalive (below) reports at most lsn+5; the walsender sends the next commit after it.
			commit := lsn + pglogrepl.LSN(rng.Intn(50)+6)
			n := rng.Intn(4)
			for i := 0; i < n; i++ {
				tr.Add(commit, time.Time{})
				open = append(open, change{commit})
				undone[commit]++
			}
			end := commit + 8
			tr.Commit(commit, end, time.Time{})
			ends[commit], lsn, lastEnd = end, end, end
			// Workers finish a random subset, in random order.
			rng.Shuffle(len(open), func(i, j int) { open[i], open[j] = open[j], open[i] })
			k := rng.Intn(len(open) + 1)
			for _, c := range open[:k] {
				tr.Done(c.commit)
				undone[c.commit]--
			}
			open = open[k:]
			if rng.Intn(3) == 0 {
				tr.Idle(lsn + 5)
			}
			safe := tr.Safe()
			for commit, n := range undone {
				if n > 0 {
					require.LessOrEqual(t, safe, commit, "safe LSN %s passed transaction %s with %d undone changes", safe, commit, n)
				}
			}
		}
		for _, c := range open {
			tr.Done(c.commit)
		}
		require.GreaterOrEqual(t, tr.Safe(), lastEnd)
		require.Equal(t, lastEnd, tr.TxnSafe())
	}
}

// BenchmarkTrackerDoneBehind is one change marked done while up to 10,000 transactions wait
// before the safe LSN can move (gessync well behind), newest first, as lanes may finish them:
// ns/op is one Done.
func BenchmarkTrackerDoneBehind(b *testing.B) {
	const behind = 10000
	var t *Tracker
	for i := 0; i < b.N; i++ {
		if i%behind == 0 {
			b.StopTimer()
			t = NewTracker(0)
			for k := 1; k <= behind; k++ {
				t.Add(pglogrepl.LSN(k*100), time.Time{})
				t.Commit(pglogrepl.LSN(k*100), pglogrepl.LSN(k*100+50), time.Time{})
			}
			b.StartTimer()
		}
		t.Done(pglogrepl.LSN((behind - i%behind) * 100))
	}
}
