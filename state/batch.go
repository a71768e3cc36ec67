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
// statement's answer. A scan function may therefore run twice; it must start from scratch.
type batcher struct {
	pool *pgxpool.Pool
	reqs chan *batched
	done chan struct{}
	wg   sync.WaitGroup
	// sent counts the round trips made (a batch, or a statement alone) and the statements
	// they carried.
	roundTrips, statements atomic.Int64
}

// batched is one statement waiting in a batcher.
type batched struct {
	ctx  context.Context
	sql  string
	args []any
	// scan reads a query's rows; nil for a statement run for its command tag.
	scan func(pgx.Rows) error
	tag  pgconn.CommandTag
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
}

// exec runs sql with args in the next batch and returns its command tag.
func (b *batcher) exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	r := &batched{ctx: ctx, sql: sql, args: args}
	err := b.submit(r)
	return r.tag, err
}

// query runs sql with args in the next batch and hands its rows to scan (which may be called
// twice; see batcher).
func (b *batcher) query(ctx context.Context, scan func(pgx.Rows) error, sql string, args ...any) error {
	return b.submit(&batched{ctx: ctx, sql: sql, args: args, scan: scan})
}

func (b *batcher) submit(r *batched) error {
	r.done = make(chan struct{})
	select {
	case b.reqs <- r:
	case <-b.done:
		return errStoreClosed
	case <-r.ctx.Done():
		return r.ctx.Err()
	}
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
		if r.scan == nil {
			r.tag, r.err = br.Exec()
			failed = errors.Join(failed, r.err)
			continue
		}
		rows, err := br.Query()
		if err != nil {
			r.err = err
			failed = errors.Join(failed, err)
			continue
		}
		scanErr := r.scan(rows) // an error of ours about the rows: this statement's alone
		rows.Close()
		if err := rows.Err(); err != nil {
			r.err = err
			failed = errors.Join(failed, err)
			continue
		}
		r.err = scanErr
	}
	failed = errors.Join(failed, br.Close())
	if failed == nil {
		return
	}
	// The implicit transaction was rolled back (or its fate is unknown after a lost
	// connection; every statement batched here can safely run twice): each again, alone.
	for _, r := range live {
		r.tag, r.err = pgconn.CommandTag{}, nil
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
	if r.scan == nil {
		r.tag, r.err = b.pool.Exec(r.ctx, r.sql, r.args...)
		return
	}
	rows, err := b.pool.Query(r.ctx, r.sql, r.args...)
	if err != nil {
		r.err = err
		return
	}
	r.err = r.scan(rows)
	rows.Close()
	if r.err == nil {
		r.err = rows.Err()
	}
}
