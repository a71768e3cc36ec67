// Package pipeline routes each committed change to its company's ordered queue, applies it to
// Sage through transform and sink/sage, and tracks which transactions are fully handled so that
// state and cdc only ever see the safe LSN.
//
// One customer's changes (the customer, its invoices, their payments) apply in commit order;
// different customers of a company, and different companies, run in parallel (worker, lanes).
// A change is handled when Sage acknowledged it (and the id map holds the result), when it
// failed in a way that needs a person (and the sync log says so), or when the company's
// settings skip it. Retryable failures (network, 429, 5xx, lost consent) hold that customer's
// lane, and the whole company once a barrier (a delete, say) waits for it, and are retried with
// backoff; they never count as handled.
package pipeline

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/gessync/gessync/cdc"
	"github.com/gessync/gessync/sink/sage"
	"github.com/gessync/gessync/state"
)

// Store is what the pipeline needs of state.
type Store interface {
	Mapping(ctx context.Context, table string, id int64) (state.Mapping, error)
	MappingPair(ctx context.Context, table string, id int64, parentTable string, parentID int64) (self, parent state.Mapping, err error)
	MappingPairAttempt(ctx context.Context, table string, id int64, parentTable string, parentID int64, businessID string, companyID int64) (self, parent state.Mapping, first bool, err error)
	ForgetAttempt(ctx context.Context, table string, id int64, businessID string) error
	SaveMapping(ctx context.Context, m state.Mapping) error
	SaveMappingAndResolve(ctx context.Context, m state.Mapping, w state.Waker) ([]state.Entry, error)
	AttemptCreate(ctx context.Context, table string, id int64, businessID string, parentID int64) (first bool, err error)
	Attempt(ctx context.Context, table string, id int64, businessID string) (state.Attempt, error)
	AttemptUpdate(ctx context.Context, table string, id int64, businessID string) error
	OpenErrorCompany(ctx context.Context, table string, id int64) (int64, bool, error)
	Replacements(ctx context.Context) ([]state.Replacement, error)
	DeleteMapping(ctx context.Context, table string, id int64) error
	Mappings(ctx context.Context, companyID int64, table string) ([]state.Mapping, error)
	Children(ctx context.Context, companyID int64, table string, parentID int64) ([]state.Mapping, error)
	ParentsWithHash(ctx context.Context, table, hash string) (map[int64][]int64, error)
	Linked(ctx context.Context, table, businessID string, sageIDs []string) (map[string]bool, error)
	OpenOf(ctx context.Context, companyID int64, code string) ([]state.Entry, error)
	SetStatus(ctx context.Context, companyID int64, status, detail string) error
	Park(ctx context.Context, companyID int64, table string, id int64, deleted bool) error
	Backlog(ctx context.Context, companyID int64, limit int) ([]state.BacklogEntry, error)
	Unpark(ctx context.Context, e state.BacklogEntry) error
	BacklogSizes(ctx context.Context) (map[int64]int, error)
	Log(ctx context.Context, e state.Entry) error
	Resolve(ctx context.Context, table string, id int64) error
	ResolveAndWaiting(ctx context.Context, companyID int64, table string, id int64, w state.Waker) ([]state.Entry, error)
	Count(ctx context.Context, companyID int64, o state.Outcome, n int) error
}

// Rows reads current GES rows (cdc.RowReader).
type Rows interface {
	Row(ctx context.Context, table string, id int64) (cdc.Row, error)
}

// Sage is the part of a *sage.Session the pipeline calls.
type Sage interface {
	CreateContact(ctx context.Context, req sage.ContactRequest) (sage.Contact, error)
	UpdateContact(ctx context.Context, id string, req sage.ContactRequest) (sage.Contact, error)
	DeleteContact(ctx context.Context, id string) error
	CreateSalesInvoice(ctx context.Context, req sage.SalesInvoiceRequest) (sage.SalesInvoice, error)
	UpdateSalesInvoice(ctx context.Context, id string, req sage.SalesInvoiceRequest) (sage.SalesInvoice, error)
	GetSalesInvoice(ctx context.Context, id string) (sage.SalesInvoice, error)
	VoidSalesInvoice(ctx context.Context, id, reason string) (sage.SalesInvoice, error)
	CreateContactPayment(ctx context.Context, req sage.ContactPaymentRequest) (sage.ContactPayment, error)
	UpdateContactPayment(ctx context.Context, id string, req sage.ContactPaymentRequest) (sage.ContactPayment, error)
	DeleteContactPayment(ctx context.Context, id string) error
	GetContactPayment(ctx context.Context, id string) (sage.ContactPayment, error)
}

// ErrNotConnected means the company has no Sage connection: its changes are skipped and counted.
var ErrNotConnected = errors.New("company not connected to Sage")

// Connections gives the Sage session and settings of a company, or ErrNotConnected.
type Connections interface {
	Session(ctx context.Context, companyID int64) (Sage, state.Connection, error)
}

// Config configures a Pipeline.
type Config struct {
	Store       Store
	Rows        Rows
	Connections Connections
	Tracker     *Tracker
	// Lanes is how many of one company's customers have changes applied at once (default 4).
	// One customer's changes (the customer, its invoices, their payments) always apply in
	// commit order; 1 applies all of a company's changes in commit order.
	Lanes int
	// MaxInFlight bounds the changes queued or being applied across companies (default 10000);
	// when reached the dispatcher waits, and so does the stream (which keeps answering keepalives).
	MaxInFlight int
	// RetryMin and RetryMax bound the backoff between retries of a retryable failure
	// (defaults 500 ms and 1 min).
	RetryMin, RetryMax time.Duration
	// ParkAfter is how long a company's Sage may keep refusing (retryable failures) before its
	// pending changes move to the durable backlog and stop holding the slot (default 5 min).
	ParkAfter time.Duration
	// ProbeEvery is how often a parked company tries its backlog again (default 30 s); a
	// reconnect tries at once.
	ProbeEvery time.Duration
	// ClockSkew is how far apart the GES database's clock (created_at) and the state database's
	// (connections.connected_at) are, measured by the caller (0 when they are one server). A
	// record created less than ClockSkew + 1 s after its company connected is looked for in
	// Sage before it is created, like the company's history (see lane.lookupFor).
	ClockSkew time.Duration
	// ContactIndex is how many customer contacts a Sage business may have for matching to keep
	// an index of them (contactIndex) rather than search Sage for every customer (default
	// 5000: 25 pages read once; negative: never; at most MaxContactIndex). ContactIndexKeys
	// bounds the keys of all indexes together (default 1<<20: 4 MiB, at about three keys a
	// contact).
	ContactIndex     int
	ContactIndexKeys int64
	// ContactIndexOff, when set, is called each time a business's contact index is turned off
	// for contactIndexRest, with why: one of the IndexOff constants (for metrics; the log says
	// it in words).
	ContactIndexOff func(reason string)
	// ContactIndexes, when set, are the indexes to use (NewContactIndexes), in place of new
	// ones built from the three fields above: a daemon keeps one set across its streams.
	ContactIndexes *ContactIndexes
	Logger         *slog.Logger
	// Observe, when set, is called once per handled change (for metrics).
	Observe func(table string, outcome state.Outcome)
}

// Pipeline is one run of dispatch and company workers over a stream of events.
type Pipeline struct {
	// replacing are the creates still to replace a Sage record that is gone (Replacing).
	replacingMu sync.Mutex
	replacing   map[recordKey]state.Replacement
	// stopping is closed by Stop: lanes finish what they apply and take nothing more.
	stopping chan struct{}
	stopOnce sync.Once
	cfg      Config
	log      *slog.Logger
	sem      chan struct{}
	mu       sync.Mutex
	workers  map[int64]*worker
	// setAside are, by company, the invoices with payments set aside for re-allocation
	// (resyncHash) when Run started; each worker takes its company's.
	setAside map[int64][]int64
	group    *errgroup.Group
	gctx     context.Context

	truncates atomic.Int64
	skipped   atomic.Int64

	// inflight counts, per record, the queued changes not yet handled, and their company: a
	// DELETE carries only the key, and its record may not be in the id map yet while its INSERT
	// waits in the company's queue.
	inflightMu sync.Mutex
	inflight   map[recordKey]inflightRecord
	// inflightTables counts the same changes by company and table.
	inflightTables map[tableKey]int

	// seed keys worker.rekeys's hashes.
	seed maphash.Seed

	// contacts are the contact indexes matching reads (matchContact).
	contacts *contactIndexes

	// batch is the current transaction's changes, held back by dispatch until its commit
	// (or maxBatch of them). Only the dispatch goroutine uses it.
	batch []routed
}

type recordKey struct {
	table string
	id    int64
}

type tableKey struct {
	company int64
	table   string
}

type inflightRecord struct {
	company int64
	n       int // changes queued or being handled
	deletes int // of which deletes
}

// changeID is the id of the record a change is about (new row, or key of a delete).
func changeID(ch cdc.Change) (int64, bool) {
	if ch.New != nil {
		return ch.New.ID()
	}
	return ch.Key.ID()
}

func (p *Pipeline) track(ch cdc.Change, company int64) {
	id, ok := changeID(ch)
	if !ok {
		return
	}
	p.inflightMu.Lock()
	k := recordKey{ch.Table, id}
	r := p.inflight[k]
	r.company = company
	r.n++
	if ch.Op == cdc.Delete {
		r.deletes++
	}
	p.inflight[k] = r
	p.inflightTables[tableKey{company, ch.Table}]++
	p.inflightMu.Unlock()
}

// supersededInQueue reports whether a later insert or update of ch's record waits in the queue
// behind it (the in-flight count includes ch itself): that change carries the newer row, so ch
// need not be sent; repeated updates of a record coalesce into one call. A later delete does
// not count: if ch's create reached Sage before a crash, only replaying it (idempotently) lets
// the delete find the record.
func (p *Pipeline) supersededInQueue(ch cdc.Change) bool {
	id, ok := changeID(ch)
	if !ok {
		return false
	}
	p.inflightMu.Lock()
	defer p.inflightMu.Unlock()
	r := p.inflight[recordKey{ch.Table, id}]
	return r.n-r.deletes > 1
}

// othersInFlight reports whether changes of other records of ch's table wait in company's
// queues or are being applied: a change that moves match keys is coalesced only when none do,
// since one of them could search Sage, or take a key, between it and the change that
// supersedes it.
func (p *Pipeline) othersInFlight(ch cdc.Change, company int64) bool {
	id, ok := changeID(ch)
	if !ok {
		return true
	}
	p.inflightMu.Lock()
	defer p.inflightMu.Unlock()
	return p.inflightTables[tableKey{company, ch.Table}] > p.inflight[recordKey{ch.Table, id}].n
}

// untrack is called once a change is handled, after its id map entry is written.
func (p *Pipeline) untrack(ch cdc.Change) {
	id, ok := changeID(ch)
	if !ok {
		return
	}
	p.inflightMu.Lock()
	k := recordKey{ch.Table, id}
	if r, ok := p.inflight[k]; ok {
		t := tableKey{r.company, ch.Table}
		if p.inflightTables[t]--; p.inflightTables[t] <= 0 {
			delete(p.inflightTables, t)
		}
		if ch.Op == cdc.Delete {
			r.deletes--
		}
		if r.n--; r.n <= 0 {
			delete(p.inflight, k)
		} else {
			p.inflight[k] = r
		}
	}
	p.inflightMu.Unlock()
}

// New returns a Pipeline; Run drives it.
func New(cfg Config) *Pipeline {
	if cfg.Lanes <= 0 {
		cfg.Lanes = 4
	}
	if cfg.MaxInFlight <= 0 {
		cfg.MaxInFlight = 10000
	}
	if cfg.RetryMin <= 0 {
		cfg.RetryMin = 500 * time.Millisecond
	}
	if cfg.RetryMax <= 0 {
		cfg.RetryMax = time.Minute
	}
	if cfg.ParkAfter <= 0 {
		cfg.ParkAfter = 5 * time.Minute
	}
	if cfg.ProbeEvery <= 0 {
		cfg.ProbeEvery = 30 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	log := cfg.Logger.With("component", "pipeline")
	contacts := cfg.ContactIndexes
	if contacts == nil {
		contacts = NewContactIndexes(cfg)
	}
	return &Pipeline{contacts: contacts.xs, stopping: make(chan struct{}), seed: maphash.MakeSeed(), cfg: cfg, log: log, sem: make(chan struct{}, cfg.MaxInFlight), workers: map[int64]*worker{}, inflight: map[recordKey]inflightRecord{}, inflightTables: map[tableKey]int{}, replacing: map[recordKey]state.Replacement{}}
}

// Replacing notes that the next create of r's record replaces r.Replaces, a Sage record that is
// gone (state.ForgetSageRecord): it must not reuse the first create's idempotency_id. Run reads
// those recorded before it; the caller of ForgetSageRecord tells a running pipeline.
func (p *Pipeline) Replacing(r state.Replacement) {
	p.replacingMu.Lock()
	defer p.replacingMu.Unlock()
	p.replacing[recordKey{r.Table, r.GESID}] = r
}

// replaces is the Sage record a create of (table, id) in businessID replaces, or "".
func (p *Pipeline) replaces(table string, id int64, businessID string) string {
	p.replacingMu.Lock()
	defer p.replacingMu.Unlock()
	if r, ok := p.replacing[recordKey{table, id}]; ok && r.BusinessID == businessID {
		return r.Replaces
	}
	return ""
}

// replaced forgets (table, id)'s replacement: its create was acknowledged.
func (p *Pipeline) replaced(table string, id int64) {
	p.replacingMu.Lock()
	delete(p.replacing, recordKey{table, id})
	p.replacingMu.Unlock()
}

// Stop asks Run to stop gracefully: it reads no more events, each lane finishes the change it is
// applying (its calls to Sage and its state writes run to their end, under Run's ctx) and
// handles nothing more, and a change waiting to be retried is given up; then Run returns nil.
// Changes not handled are not marked done, so the slot replays them. Stop may be called more
// than once, and before or during Run.
func (p *Pipeline) Stop() { p.stopOnce.Do(func() { close(p.stopping) }) }

// stopped reports whether Stop was called.
func (p *Pipeline) stopped() bool {
	select {
	case <-p.stopping:
		return true
	default:
		return false
	}
}

// errStopped ends a change's retries when the pipeline stops (Pipeline.Stop).
var errStopped = errors.New("pipeline stopping")

// Run reads events until in closes or ctx ends, then waits for the company workers. It returns
// ctx's error, or the first worker error (a failure of state, which stops the pipeline so that
// nothing is acknowledged without being recorded).
func (p *Pipeline) Run(ctx context.Context, in <-chan cdc.Event) error {
	// Read before any worker can start (Resync starts one once the group is published):
	// invoices whose payments a crash or a failure left set aside, which re-allocate when next
	// handled (lane.reallocate), and companies with a backlog from before.
	setAside, err := p.cfg.Store.ParentsWithHash(ctx, "payments", resyncHash)
	if err != nil {
		return err
	}
	sizes, err := p.cfg.Store.BacklogSizes(ctx)
	if err != nil {
		return err
	}
	replacing, err := p.cfg.Store.Replacements(ctx)
	if err != nil {
		return err
	}
	for _, r := range replacing {
		p.Replacing(r)
	}
	g, gctx := errgroup.WithContext(ctx)
	p.mu.Lock()
	p.group, p.gctx, p.setAside = g, gctx, setAside
	p.mu.Unlock()
	// Companies with a backlog start parked, and try to drain it.
	for company := range sizes {
		p.startWorker(company, true)
	}
	g.Go(func() error {
		defer p.closeWorkers()
		for {
			select {
			case <-gctx.Done():
				return gctx.Err()
			case <-p.stopping:
				return nil
			case ev, ok := <-in:
				if !ok {
					return nil
				}
				if err := p.dispatch(gctx, ev); errors.Is(err, errStopped) {
					return nil
				} else if err != nil {
					return err
				}
			}
		}
	})
	return g.Wait()
}

func (p *Pipeline) closeWorkers() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, w := range p.workers {
		w.close()
	}
}

// maxBatch bounds how many of a transaction's changes dispatch holds back (tracked, not yet
// queued) before its commit: a large transaction goes to the workers in slices of this size.
const maxBatch = 512

// routed is a change and the company whose worker it goes to.
type routed struct {
	company int64
	ch      cdc.Change
}

// flush queues the held-back changes on their companies' workers, in order.
func (p *Pipeline) flush() {
	for i, r := range p.batch {
		p.worker(r.company).push(item{ch: r.ch})
		p.batch[i] = routed{}
	}
	p.batch = p.batch[:0]
}

func (p *Pipeline) dispatch(ctx context.Context, ev cdc.Event) error {
	t := p.cfg.Tracker
	if ev.Kind != cdc.EventChange {
		p.flush()
	}
	switch ev.Kind {
	case cdc.EventKeepalive:
		t.Idle(ev.EndLSN)
	case cdc.EventCommit:
		t.Commit(ev.CommitLSN, ev.EndLSN, ev.CommitTime)
	case cdc.EventTruncate:
		p.truncates.Add(1)
		p.log.Warn("TRUNCATE of published tables ignored: Sage records are kept", "tables", ev.Tables, "lsn", ev.CommitLSN)
	case cdc.EventChange:
		ch := ev.Change
		t.Add(ch.CommitLSN, ch.CommitTime)
		company, ok, err := p.companyOf(ctx, ch)
		if err != nil {
			return err
		}
		if !ok {
			p.skipped.Add(1)
			t.Done(ch.CommitLSN)
			return nil
		}
		select {
		case p.sem <- struct{}{}:
		default:
			// Full: what is held back must reach the workers, or nothing would free a slot.
			p.flush()
			select {
			case p.sem <- struct{}{}:
			case <-p.stopping:
				return errStopped // not dispatched: the slot replays it
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		// Tracked now, queued at the commit: a worker must never start on a change that a
		// later change of the same transaction supersedes (see supersededInQueue).
		p.track(ch, company)
		p.batch = append(p.batch, routed{company, ch})
		if len(p.batch) >= maxBatch {
			p.flush()
		}
	}
	return nil
}

// companyOf finds the change's company: from the new row; for a delete, from its key's company_id
// when the replica identity carries it, else from a queued change of the record, else the id map.
func (p *Pipeline) companyOf(ctx context.Context, ch cdc.Change) (int64, bool, error) {
	if ch.New != nil {
		c, ok := ch.New.Int("company_id")
		return c, ok, nil
	}
	id, ok := ch.Key.ID()
	if !ok {
		return 0, false, nil
	}
	if c, ok := ch.Key.Int("company_id"); ok {
		return c, true, nil // a replica identity with company_id (as sharding needs) names it
	}
	p.inflightMu.Lock()
	r, queued := p.inflight[recordKey{ch.Table, id}]
	p.inflightMu.Unlock()
	if queued {
		return r.company, true, nil // its insert or update is still queued: follow it
	}
	m, err := p.cfg.Store.Mapping(ctx, ch.Table, id)
	if errors.Is(err, state.ErrNotFound) {
		// Never reached Sage: nothing to delete there, but errors a person was asked to look
		// at go with it (lane.delete).
		return p.cfg.Store.OpenErrorCompany(ctx, ch.Table, id)
	}
	if err != nil {
		return 0, false, err
	}
	return m.CompanyID, true, nil
}

func (p *Pipeline) worker(company int64) *worker { return p.startWorker(company, false) }

// startWorker returns company's worker, starting it (parked, when asked) if it is not running.
func (p *Pipeline) startWorker(company int64, parked bool) *worker {
	p.mu.Lock()
	defer p.mu.Unlock()
	w, ok := p.workers[company]
	if !ok {
		w = newWorker(p, company, parked, p.setAside[company])
		p.workers[company] = w
		p.group.Go(func() error { return w.run(p.gctx) })
	}
	return w
}

// Skipped counts changes skipped because their company is unknown (e.g. deletes of records that
// never reached Sage).
func (p *Pipeline) Skipped() int64 { return p.skipped.Load() }

// Truncates counts TRUNCATEs seen.
func (p *Pipeline) Truncates() int64 { return p.truncates.Load() }

// ErrNotRunning means the pipeline is not running (starting, or restarting after a failure):
// try again shortly.
var ErrNotRunning = errors.New("pipeline not running")

// Resync queues row, the current GES row of table, into company's ordered queue as if it had
// just been updated: it goes through the same settings check and upsert path as a streamed
// change, after the changes already queued. It does not take part in the safe LSN (its
// CommitLSN is 0, which no transaction has). The outcome shows in the sync log and counters.
//
// The worker re-reads the row when it gets to it, so it always pushes GES's latest state. done,
// when not nil, is called once the request is handled (nil) or dropped (an error).
func (p *Pipeline) Resync(ctx context.Context, companyID int64, table string, row cdc.Row, done func(error)) error {
	p.mu.Lock()
	running := p.group != nil && p.gctx.Err() == nil
	p.mu.Unlock()
	if !running {
		return ErrNotRunning
	}
	if c, ok := row.Int("company_id"); !ok || c != companyID {
		return fmt.Errorf("%s row belongs to company %d, not %d", table, c, companyID)
	}
	select {
	case p.sem <- struct{}{}:
	case <-p.stopping:
		return ErrNotRunning
	case <-ctx.Done():
		return ctx.Err()
	}
	p.worker(companyID).push(item{ch: cdc.Change{Table: table, Op: cdc.Update, New: row, CommitTime: time.Now().UTC()}, done: done})
	return nil
}
