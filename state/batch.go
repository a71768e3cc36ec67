package state

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// batcher sends the statements of many goroutines (the pipeline's company workers) to
// PostgreSQL together: the statements waiting when a runner comes free go as one pgx.Batch,
// which is one round trip, one wake-up of the backend and one implicit transaction
// (PostgreSQL's extended query protocol, several Bind/Execute before one Sync). A statement
// sent alone costs PostgreSQL ~35 µs more than one in a batch, and the daemon ~12 µs more: at
// thousands of changes a second that is most of what state costs (BENCHMARKS.md).
//
// Batching is only for statements that stand alone: each is one statement whose effect does
// not depend on another of the batch, and that touches only its own record's rows, so two
// batches in flight never wait on each other. A batch that fails as a whole (an error in any
// statement aborts its implicit transaction, which undoes the statements before it) is run
// again statement by statement, each with its caller's context, so every caller gets its own
// statement's answer (only when PostgreSQL refused a statement: after a lost connection or a
// timeout the batch may have committed, and every caller gets the error). A scan function may
// therefore run twice; it must start from scratch and return what it read.
type batcher struct {
	pool *pgxpool.Pool
	reqs chan *batched
	done chan struct{}
	wg   sync.WaitGroup
	// mu orders submit's check of closed and its send before close; once makes close safe to
	// call twice.
	mu     sync.RWMutex
	closed bool
	once   sync.Once
	// roundTrips and statements count the round trips made (a batch, or a statement alone)
	// and the statements they carried.
	roundTrips, statements atomic.Int64
}

// batched is one statement waiting in a batcher.
type batched struct {
	ctx  context.Context
	sql  string
	args []any
	// scan reads a query's rows into a value of its own; nil for a statement run for its
	// command tag. The caller reads tag and val only after done is closed.
	scan func(pgx.Rows) (any, error)
	tag  pgconn.CommandTag
	val  any
	err  error
	done chan struct{}
}

const (
	// batchRunners is how many batches may be in flight at once.
	batchRunners = 2
	// batchMax bounds the statements of one batch.
	batchMax = 128
	// batchTimeout bounds one batch; a batch that takes longer is run again statement by
	// statement under its callers' own contexts.
	batchTimeout = 10 * time.Second
)

// errStoreClosed is returned for a statement submitted after Close.
var errStoreClosed = errors.New("state store closed")

func newBatcher(pool *pgxpool.Pool) *batcher {
	b := &batcher{pool: pool, reqs: make(chan *batched, batchMax), done: make(chan struct{})}
	for range batchRunners {
		b.wg.Add(1)
		go b.run()
	}
	return b
}

// close stops the runners once the batches in flight are answered; statements still queued are
// answered with errStoreClosed.
func (b *batcher) close() {
	b.once.Do(func() {
		b.mu.Lock() // every submit that saw closed false has queued its statement
		b.closed = true
		b.mu.Unlock()
		close(b.done)
		b.wg.Wait()
		for {
			select {
			case r := <-b.reqs:
				r.err = errStoreClosed
				close(r.done)
			default:
				return
			}
		}
	})
}

// exec runs sql with args in the next batch and returns its command tag.
func (b *batcher) exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	r := &batched{ctx: ctx, sql: sql, args: args}
	if err := b.submit(r); err != nil {
		return pgconn.CommandTag{}, err
	}
	return r.tag, nil
}

// query runs sql with args in the next batch and returns what scan read of its rows. scan may
// be called twice (see batcher); what it returns is handed over only once the batch is done.
func query[T any](b *batcher, ctx context.Context, scan func(pgx.Rows) (T, error), sql string, args ...any) (T, error) {
	r := &batched{ctx: ctx, sql: sql, args: args, scan: func(rows pgx.Rows) (any, error) { return scan(rows) }}
	var zero T
	if err := b.submit(r); err != nil {
		return zero, err
	}
	return r.val.(T), nil
}

// submit queues r and waits for its answer. When it returns an error other than r.err, the
// runner may still be using r: the caller must not read it.
func (b *batcher) submit(r *batched) error {
	r.done = make(chan struct{})
	b.mu.RLock()
	if b.closed {
		b.mu.RUnlock()
		return errStoreClosed
	}
	select {
	case b.reqs <- r:
	case <-r.ctx.Done():
		b.mu.RUnlock()
		return r.ctx.Err()
	}
	b.mu.RUnlock()
	select {
	case <-r.done:
		return r.err
	case <-r.ctx.Done():
		// The statement may still run; the caller gives up waiting, as with a cancelled query.
		return r.ctx.Err()
	}
}

func (b *batcher) run() {
	defer b.wg.Done()
	batch := make([]*batched, 0, batchMax)
	for {
		select {
		case r := <-b.reqs:
			batch = append(batch[:0], r)
		case <-b.done:
			return
		}
	more:
		for len(batch) < batchMax {
			select {
			case r := <-b.reqs:
				batch = append(batch, r)
			default:
				break more
			}
		}
		b.send(batch)
		for i := range batch {
			close(batch[i].done)
			batch[i] = nil
		}
	}
}

// send runs batch: alone under its caller's context when it is one statement, else as one
// pgx.Batch, and statement by statement when that fails.
func (b *batcher) send(batch []*batched) {
	live := batch[:0:0]
	for _, r := range batch {
		if err := r.ctx.Err(); err != nil {
			r.err = err // its caller has stopped waiting: do not run it
			continue
		}
		live = append(live, r)
	}
	switch len(live) {
	case 0:
		return
	case 1:
		b.one(live[0])
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), batchTimeout)
	defer cancel()
	b.roundTrips.Add(1)
	b.statements.Add(int64(len(live)))
	pb := &pgx.Batch{}
	for _, r := range live {
		pb.Queue(r.sql, r.args...)
	}
	br := b.pool.SendBatch(ctx, pb)
	var failed error
	for _, r := range live {
		failed = errors.Join(failed, r.answer(br.Exec, br.Query))
	}
	failed = errors.Join(failed, br.Close())
	if failed == nil {
		return
	}
	var pgErr *pgconn.PgError
	if !errors.As(failed, &pgErr) {
		// A lost connection or the batch's timeout: whether it committed is unknown, so no
		// statement runs again here (a counter would count twice); each caller gets the error.
		for _, r := range live {
			r.err = failed
		}
		return
	}
	// PostgreSQL refused a statement, which rolled back the implicit transaction: each again,
	// alone, so that only the statement at fault fails.
	for _, r := range live {
		r.tag, r.val, r.err = pgconn.CommandTag{}, nil, nil
		if err := r.ctx.Err(); err != nil {
			r.err = err
			continue
		}
		b.one(r)
	}
}

// one runs r alone on the pool under its caller's context.
func (b *batcher) one(r *batched) {
	b.roundTrips.Add(1)
	b.statements.Add(1)
	r.answer(
		func() (pgconn.CommandTag, error) { return b.pool.Exec(r.ctx, r.sql, r.args...) },
		func() (pgx.Rows, error) { return b.pool.Query(r.ctx, r.sql, r.args...) })
}

// answer runs r through exec, or through query and its scan, and sets r's tag or value and its
// error. It returns the error that came from PostgreSQL or the connection, which r.err holds
// too; an error of r's scan about the rows is r's alone and is not returned.
func (r *batched) answer(exec func() (pgconn.CommandTag, error), query func() (pgx.Rows, error)) error {
	if r.scan == nil {
		r.tag, r.err = exec()
		return r.err
	}
	rows, err := query()
	if err != nil {
		r.err = err
		return err
	}
	val, scanErr := r.scan(rows)
	rows.Close()
	if err := rows.Err(); err != nil {
		r.err = err // PostgreSQL's or the connection's, before any of ours about the rows
		return err
	}
	r.val, r.err = val, scanErr
	return nil
}
