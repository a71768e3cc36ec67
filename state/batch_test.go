package state

import (
	"context"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/gessync/gessync/internal/pglocal"
)

var (
	pg    *pglocal.Server
	dbSeq atomic.Int64
)

func TestMain(m *testing.M) { os.Exit(pglocal.RunTests(m, "state", &pg)) }

// newStore opens a Store on a database of its own, and a plain connection to it.
func newStore(t *testing.T) (*Store, *pgx.Conn) {
	t.Helper()
	ctx := context.Background()
	name := fmt.Sprintf("state_%d", dbSeq.Add(1))
	require.NoError(t, pg.CreateDatabase(ctx, name, ""))
	st, err := Open(ctx, Config{URL: pg.URL(name)})
	require.NoError(t, err)
	t.Cleanup(st.Close)
	c, err := pgx.Connect(ctx, pg.URL(name))
	require.NoError(t, err)
	t.Cleanup(func() { c.Close(context.Background()) })
	return st, c
}

// holdRunners makes both batch runners wait on an advisory lock that the returned function
// releases, so that statements submitted meanwhile queue up; it returns once both wait.
func holdRunners(t *testing.T, st *Store, c *pgx.Conn) (release func()) {
	t.Helper()
	ctx := context.Background()
	_, err := c.Exec(ctx, `SELECT pg_advisory_lock(4242)`)
	require.NoError(t, err)
	var wg sync.WaitGroup
	for range batchRunners {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := st.batch.exec(ctx, `SELECT pg_advisory_xact_lock_shared(4242)`)
			assert.NoError(t, err)
		}()
	}
	require.Eventually(t, func() bool {
		var n int
		require.NoError(t, c.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%pg_advisory_xact_lock_shared%'`).Scan(&n))
		return n == batchRunners
	}, 10*time.Second, 5*time.Millisecond)
	return func() {
		_, err := c.Exec(ctx, `SELECT pg_advisory_unlock(4242)`)
		require.NoError(t, err)
		wg.Wait()
	}
}

// queued waits until n statements wait in st's batcher.
func queued(t *testing.T, st *Store, n int) {
	t.Helper()
	require.Eventually(t, func() bool { return len(st.batch.reqs) == n }, 10*time.Second, time.Millisecond)
}

func TestStatementsWaitingTogetherShareOneRoundTrip(t *testing.T) {
	st, c := newStore(t)
	ctx := context.Background()
	release := holdRunners(t, st, c)
	trips, stmts := st.batch.roundTrips.Load(), st.batch.statements.Load()

	const n = 20
	var wg sync.WaitGroup
	firsts := make([]bool, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			first, err := st.AttemptCreate(ctx, "invoices", int64(i+1), "biz", 0)
			assert.NoError(t, err)
			firsts[i] = first
		}()
	}
	queued(t, st, n)
	release()
	wg.Wait()

	// The twenty went in at most one batch per runner (the held statements were counted when
	// they were sent, before trips and stmts were read).
	assert.LessOrEqual(t, st.batch.roundTrips.Load()-trips, int64(batchRunners))
	assert.Equal(t, int64(n), st.batch.statements.Load()-stmts)
	for i, first := range firsts {
		assert.True(t, first, "attempt %d is the first", i+1)
	}
	var rows int
	require.NoError(t, c.QueryRow(ctx, `SELECT count(*) FROM gessync.create_attempts`).Scan(&rows))
	assert.Equal(t, n, rows, "every attempt committed")
}

func TestABadStatementInABatchCostsTheOthersNothing(t *testing.T) {
	st, c := newStore(t)
	ctx := context.Background()
	release := holdRunners(t, st, c)

	const n = 10
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = st.SaveMapping(ctx, Mapping{Table: "customers", GESID: int64(i + 1), CompanyID: 1, BusinessID: "biz", SageID: fmt.Sprintf("c%d", i+1), PayloadHash: "h"})
		}()
	}
	var badErr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		_, badErr = st.batch.exec(ctx, `SELECT 1 / (SELECT count(*) - count(*) FROM gessync.id_map)`)
	}()
	var found []Mapping
	wg.Add(1)
	go func() {
		defer wg.Done()
		m, err := st.Mapping(ctx, "customers", 999)
		assert.ErrorIs(t, err, ErrNotFound)
		found = append(found, m)
	}()
	queued(t, st, n+2)
	release()
	wg.Wait()

	require.Error(t, badErr)
	assert.Contains(t, badErr.Error(), "division by zero")
	for i, err := range errs {
		require.NoError(t, err, "mapping %d", i+1)
		m, err := st.Mapping(ctx, "customers", int64(i+1))
		require.NoError(t, err)
		assert.Equal(t, fmt.Sprintf("c%d", i+1), m.SageID)
	}
	require.Len(t, found, 1)
	assert.Equal(t, Mapping{Table: "customers", GESID: 999}, found[0])
}

func TestAStatementWhoseCallerGaveUpIsNotRun(t *testing.T) {
	st, c := newStore(t)
	ctx := context.Background()
	release := holdRunners(t, st, c)

	gone, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- st.SaveMapping(gone, Mapping{Table: "customers", GESID: 7, CompanyID: 1, BusinessID: "biz", SageID: "c7"})
	}()
	queued(t, st, 1)
	cancel()
	require.ErrorIs(t, <-done, context.Canceled)
	release()

	// A statement submitted after it runs (the runners are free again) and the cancelled one
	// never did.
	_, err := st.AttemptCreate(ctx, "customers", 8, "biz", 0)
	require.NoError(t, err)
	_, err = st.Mapping(ctx, "customers", 7)
	assert.ErrorIs(t, err, ErrNotFound)
}

func TestAStatementAfterCloseIsRefusedNotLost(t *testing.T) {
	st, _ := newStore(t)
	st.Close()
	_, err := st.AttemptCreate(context.Background(), "customers", 1, "biz", 0)
	require.ErrorIs(t, err, errStoreClosed)
}
