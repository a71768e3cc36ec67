package pipeline

import (
	"context"
	"errors"
	"hash/maphash"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gessync/gessync/cdc"
	"github.com/gessync/gessync/sink/sage"
	"github.com/gessync/gessync/state"
	"github.com/gessync/gessync/transform"
)

// worker applies one company's changes. Its router takes them in commit order and hands each to
// a lane (Config.Lanes): the lane of the customer whose records it is about (the customer, its
// invoices, their payments). So one customer's changes apply in commit order, and different
// customers' apply at once, as different companies' do.
//
// A change that cannot be pinned to one customer's lane is a barrier: the router waits until
// every lane is idle and applies it itself, before routing anything after it. Barriers are
// deletes (they carry only the key), resyncs and backlog entries (read as GES holds them now),
// a payment whose invoice's customer is unknown, changes while the company is parked, and an
// invoice or payment that another lane holds (claims): one that moved to another customer or
// invoice while its earlier change was still in a lane, or that a lane is syncing as a
// dependent.
//
// Two lanes may still meet at a record neither was routed for: a child syncing its missing
// parent. Creates that search Sage first hold their match keys (worker.matching, matchKeys),
// and look at the id map again when another searched create finished meanwhile, so such a
// record is created once and then updated.
type worker struct {
	p       *Pipeline
	company int64
	log     *slog.Logger

	// mu guards queue and closed, and every lane's queue, running and cur.
	mu    sync.Mutex
	queue []item // changes not yet routed, in commit order
	// active counts the changes given to a lane (the router's own included) and not yet
	// settled: the last to settle flushes the counters.
	active int
	closed bool
	wake   chan struct{}
	// idle is signalled when a lane runs out of changes (the router may wait for a barrier).
	idle  chan struct{}
	lanes []*lane
	// own is the router's lane: it applies barriers and drains the backlog, while every other
	// lane is idle.
	own *lane

	// kick is closed, and replaced, by kickNow: it cuts short every retry wait that began
	// before it (the company was reconnected). kickGen counts kicks.
	kickMu  sync.Mutex
	kick    chan struct{}
	kickGen uint64

	// parked: the company's Sage kept refusing; its changes go to the durable backlog until a
	// probe drains it. A lane sets it; the router drains and clears it while lanes are idle.
	parkMu    sync.Mutex
	parked    bool
	lastProbe time.Time

	// counts are outcomes not yet added to the company's counters (state.Store.Count), which
	// take one write per outcome kind when the company runs out of changes or a second has
	// passed (flushCounts), not one per change.
	countsMu  sync.Mutex
	flushMu   sync.Mutex
	counts    map[state.Outcome]int
	countedAt time.Time

	// setAside holds the company's invoices that may have payments set aside for re-allocation
	// (resyncHash): those in state when the pipeline started, and those unallocateAndRetry has
	// set aside since. It may hold more than are (a payment synced since), never fewer, so an
	// invoice not in it needs no re-allocation and no read of its payments.
	setAsideMu sync.Mutex
	setAside   map[int64]bool

	// matching holds the match keys (matchKeys) of the creates that are searching Sage, from
	// the search to the save of the record's mapping (lane.upsert): two lanes never search for
	// one Sage record at once, so two GES customers with one email become one contact, as when
	// they applied in turn. matchFree is broadcast when keys are released.
	matchMu   sync.Mutex
	matchFree *sync.Cond
	matching  map[string]bool
	// searched counts the searched creates that finished: a create that saw it unchanged since
	// its mapping was read knows no other lane created the record meanwhile.
	searched atomic.Uint64

	// claims are the invoices and payments a lane holds (a change of them routed to it, or a
	// sync of them as a dependent), with the lane's index and the number of holds: another lane
	// must not apply them meanwhile.
	claimsMu sync.Mutex
	claims   map[transform.Record]claim

	// recent maps the invoices last routed or looked up (the last recentInvoices or more) to their
	// customers, so a payment of one finds its lane without reading the id map. Only the
	// router uses it. A stale entry (the invoice moved since) only puts a payment in another
	// lane than its invoice's next change, which claims then make wait: lanes never decide
	// what is right, only what may run at once.
	recent recently[int64, int64]
	// keys are the hashes of the match columns last routed for the company's recent customers
	// and invoices (the last recentKeys or more), for rekeys. Only the router uses it.
	keys recently[transform.Record, uint64]
}

// claim is a lane's hold on a record: the lane's index and how many holds it has.
type claim struct{ lane, n int }

// lane applies, in order, the changes its company's router gave it. Its goroutine runs while
// it has changes and exits when it runs out.
type lane struct {
	*worker
	index int // in worker.lanes; -1 for worker.own

	queue   []item      // guarded by worker.mu
	running bool        // its goroutine is running (guarded by worker.mu)
	cur     *cdc.Change // the change being handled, for Backlog (guarded by worker.mu)

	// attempts are the create attempts recorded with a mapping read in the current try of a
	// change (lane.mappingPair), for lookupFor, which takes an attempt before its create is
	// sent; those left at the end of the try are forgotten (forgetUnsentAttempts).
	attempts map[transform.Record]attempt

	// invoice is the sales invoice lane.outstanding last read in the current upsert (a
	// payment's), for matchAllocated; nil otherwise.
	invoice *sage.SalesInvoice
	// known is what the last payment planned (lane.plan) knew of its Sage records and its
	// invoice's outstanding amount, for replanLinked.
	known transform.Known
}

func newWorker(p *Pipeline, company int64, parked bool, setAside []int64) *worker {
	w := &worker{p: p, company: company, log: p.log.With("company_id", company),
		wake: make(chan struct{}, 1), idle: make(chan struct{}, 1), kick: make(chan struct{}),
		parked: parked, setAside: map[int64]bool{}, claims: map[transform.Record]claim{}}
	for _, id := range setAside {
		w.setAside[id] = true
	}
	w.matching = map[string]bool{}
	w.matchFree = sync.NewCond(&w.matchMu)
	w.own = &lane{worker: w, index: -1}
	w.lanes = make([]*lane, p.cfg.Lanes)
	for i := range w.lanes {
		w.lanes[i] = &lane{worker: w, index: i}
	}
	return w
}

// attempt is a create attempt recorded with a mapping read: whether it was the first, and its
// Sage business.
type attempt struct {
	first    bool
	business string
}

// count notes one change's outcome for the company's counters.
func (w *worker) count(o state.Outcome) {
	w.countsMu.Lock()
	if w.counts == nil {
		w.counts = map[state.Outcome]int{}
	}
	w.counts[o]++
	w.countsMu.Unlock()
}

// countFlushEvery bounds how long outcomes wait in memory while a company's lanes stay busy.
const countFlushEvery = time.Second

func (w *worker) countsDue() bool {
	w.countsMu.Lock()
	defer w.countsMu.Unlock()
	return time.Since(w.countedAt) >= countFlushEvery
}

// flushCounts adds the noted outcomes to the company's counters. They are flushed when the
// company runs out of changes, every second while it is busy, and before a retry wait, so a crash loses at
// most a second's: they are statistics, not the record of what reached Sage (the id map and
// the sync log are, and both are written before a change is done).
func (w *worker) flushCounts(ctx context.Context) error {
	// One flush at a time: a lane whose flush finds nothing new waits until another lane's
	// write of what it took has landed, so its change is done only after.
	w.flushMu.Lock()
	defer w.flushMu.Unlock()
	w.countsMu.Lock()
	pending := w.counts
	w.counts, w.countedAt = nil, time.Now()
	w.countsMu.Unlock()
	for o, n := range pending {
		if n == 0 {
			continue
		}
		if err := w.p.cfg.Store.Count(ctx, w.company, o, n); err != nil {
			w.countsMu.Lock() // what was not written waits for the next flush
			if w.counts == nil {
				w.counts = map[state.Outcome]int{}
			}
			for o, n := range pending {
				w.counts[o] += n
			}
			w.countsMu.Unlock()
			return err
		}
		delete(pending, o)
	}
	return nil
}

func (w *worker) isSetAside(invoice int64) bool {
	w.setAsideMu.Lock()
	defer w.setAsideMu.Unlock()
	return w.setAside[invoice]
}

func (w *worker) markSetAside(invoice int64, aside bool) {
	w.setAsideMu.Lock()
	defer w.setAsideMu.Unlock()
	if aside {
		w.setAside[invoice] = true
	} else {
		delete(w.setAside, invoice)
	}
}

func (w *worker) isParked() bool {
	w.parkMu.Lock()
	defer w.parkMu.Unlock()
	return w.parked
}

// setParked parks or unparks the company; either way the next probe is ProbeEvery from now.
func (w *worker) setParked(parked bool) {
	w.parkMu.Lock()
	w.parked, w.lastProbe = parked, time.Now()
	w.parkMu.Unlock()
	select {
	case w.wake <- struct{}{}: // a lane parked it: the router sets its probe timer
	default:
	}
}

// probeIn is how long until a parked company tries its backlog again (≤ 0: now); ok is false
// when the company is not parked.
func (w *worker) probeIn() (d time.Duration, ok bool) {
	w.parkMu.Lock()
	defer w.parkMu.Unlock()
	return time.Until(w.lastProbe.Add(w.p.cfg.ProbeEvery)), w.parked
}

func (w *worker) probeNow() {
	w.parkMu.Lock()
	w.lastProbe = time.Time{}
	w.parkMu.Unlock()
}

// kicked returns a channel closed by the next kick, and the number of kicks so far.
func (w *worker) kicked() (<-chan struct{}, uint64) {
	w.kickMu.Lock()
	defer w.kickMu.Unlock()
	return w.kick, w.kickGen
}

func (w *worker) kickNow() {
	w.kickMu.Lock()
	close(w.kick)
	w.kick = make(chan struct{})
	w.kickGen++
	w.kickMu.Unlock()
}

// Kick makes company's worker retry at once the changes it is waiting to retry, and try its
// backlog (after a reconnect, say).
func (p *Pipeline) Kick(company int64) {
	p.mu.Lock()
	w, ok := p.workers[company]
	p.mu.Unlock()
	if ok {
		w.kickNow()
	}
}

// item is one entry of a company's queue: a change, for a resync an optional callback, and the
// records its lane claimed for it (released once it is handled).
type item struct {
	ch      cdc.Change
	done    func(error)
	claimed []transform.Record
	// rekeys: the change may move its record's match keys (worker.rekeys), so it is not
	// coalesced into a later change of its record while another record's change of the table
	// is in flight: skipping it would leave Sage holding a key GES freed while that one
	// applies (Pipeline.othersInFlight).
	rekeys bool
}

func (w *worker) push(it item) {
	w.mu.Lock()
	w.queue = append(w.queue, it)
	w.mu.Unlock()
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

func (w *worker) close() {
	w.mu.Lock()
	w.closed = true
	w.mu.Unlock()
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

func (w *worker) next() (item, bool, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	it, ok := popFront(&w.queue)
	return it, ok, !ok && w.closed
}

// popFront takes the first item of *q, if it has one.
func popFront(q *[]item) (item, bool) {
	if len(*q) == 0 {
		return item{}, false
	}
	it := (*q)[0]
	(*q)[0] = item{}
	*q = (*q)[1:]
	return it, true
}

// settle notes that a lane has finished a change (handled or not), and reports whether it was
// the company's last: nothing else in a lane or waiting to be routed.
func (w *worker) settle() (last bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.active--
	return w.active == 0 && len(w.queue) == 0
}

// failPending abandons every change not yet routed (the worker is stopping).
func (w *worker) failPending() {
	w.mu.Lock()
	q := w.queue
	w.queue = nil
	w.mu.Unlock()
	w.abandon(q...)
}

// abandon releases the claims of changes that will not be handled (the worker is stopping) and
// answers their resync callbacks with ErrNotRunning.
func (w *worker) abandon(q ...item) {
	for _, it := range q {
		w.unclaim(it.claimed)
		if it.done != nil {
			it.done(ErrNotRunning)
		}
	}
}

// run is the router: it routes the company's changes in commit order, applies barriers and
// drains the backlog itself, and returns when the worker is closed or ctx ends.
func (w *worker) run(ctx context.Context) error {
	defer w.failPending()
	defer func() {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = w.flushCounts(ctx)
	}()
	_, seenKick := w.kicked()
	for ctx.Err() == nil && !w.p.stopped() {
		if _, gen := w.kicked(); gen != seenKick {
			seenKick = gen
			w.probeNow() // reconnected: try the backlog now
		}
		if in, parked := w.probeIn(); parked && in <= 0 {
			if !w.waitIdle(ctx) {
				return nil
			}
			if err := w.own.drain(ctx); err != nil {
				if ctx.Err() != nil {
					return nil
				}
				return err
			}
		}
		it, ok, closed := w.next()
		if !ok {
			if closed {
				return nil
			}
			var probe <-chan time.Time
			if in, parked := w.probeIn(); parked {
				probe = time.After(in)
			}
			kick, _ := w.kicked()
			select {
			case <-w.wake:
			case <-kick:
			case <-probe:
			case <-w.p.stopping:
			case <-ctx.Done():
			}
			continue
		}
		l := w.route(ctx, &it)
		if l != nil {
			w.enqueue(ctx, l, it)
			continue
		}
		w.log.Debug("barrier: waiting for every lane", "table", it.ch.Table, "op", it.ch.Op, "lsn", it.ch.CommitLSN)
		w.own.setCurrent(&it.ch) // it counts in Backlog while it waits
		if !w.waitIdle(ctx) {
			w.abandon(it)
			return nil
		}
		w.mu.Lock()
		w.active++
		w.mu.Unlock()
		if err := w.own.step(ctx, it); err != nil {
			return err
		}
	}
	return nil
}

// enqueue gives it to lane l, starting l's goroutine if it is not running.
func (w *worker) enqueue(ctx context.Context, l *lane, it item) {
	w.mu.Lock()
	l.queue = append(l.queue, it)
	start := !l.running
	l.running = true
	w.active++
	w.mu.Unlock()
	if start {
		w.p.group.Go(func() error { return l.run(ctx) })
	}
}

// waitIdle waits until no lane has a change; false when ctx ended or the pipeline began to stop
// first.
func (w *worker) waitIdle(ctx context.Context) bool {
	for {
		w.mu.Lock()
		busy := false
		for _, l := range w.lanes {
			busy = busy || l.running
		}
		w.mu.Unlock()
		if !busy {
			return true
		}
		select {
		case <-w.idle:
		case <-w.p.stopping:
			return false
		case <-ctx.Done():
			return false
		}
	}
}

// laneFor is the lane of a customer's records.
func (w *worker) laneFor(customer int64) int {
	// Fibonacci hashing: consecutive ids spread over the lanes.
	return int((uint64(customer) * 0x9E3779B97F4A7C15 >> 32) % uint64(len(w.lanes)))
}

// route picks the lane of it.ch and claims for that lane the invoice and payment it is
// about; nil means a barrier. Whatever is uncertain (a state read fails, an id is missing) is
// a barrier, which is always safe.
func (w *worker) route(ctx context.Context, it *item) *lane {
	ch := it.ch
	it.rekeys = w.rekeys(ch)
	if len(w.lanes) == 0 || it.done != nil || ch.CommitLSN == 0 || ch.Op == cdc.Delete || ch.New == nil || w.isParked() {
		return nil
	}
	id, ok := ch.New.ID()
	if !ok {
		return nil
	}
	var claims []transform.Record
	var l int
	switch ch.Table {
	case "customers":
		l = w.laneFor(id)
	case "invoices":
		customer, ok := ch.New.Int("customer_id")
		if !ok {
			return nil
		}
		w.remember(id, customer)
		l, claims = w.laneFor(customer), []transform.Record{{Table: "invoices", ID: id}}
	case "payments":
		invoice, ok := ch.New.Int("invoice_id")
		if !ok {
			return nil
		}
		inv := transform.Record{Table: "invoices", ID: invoice}
		if l, ok = w.claimedBy(inv); !ok {
			customer, ok := w.recent.get(invoice)
			if !ok {
				// The invoice's customer when it last reached Sage.
				m, err := w.p.cfg.Store.Mapping(ctx, "invoices", invoice)
				if err != nil || m.ParentID == 0 || m.CompanyID != w.company {
					return nil
				}
				customer = m.ParentID
				w.remember(invoice, customer)
			}
			l = w.laneFor(customer)
		}
		claims = []transform.Record{{Table: "payments", ID: id}, inv}
	default:
		return nil
	}
	if _, ok := matchColumns[ch.Table]; ok {
		// A change of this table in another lane may free a key this one would find taken.
		keys := keysOf(ch.Table)
		if other, ok := w.claimedBy(keys); ok && other != l {
			return nil
		}
		if it.rekeys {
			claims = append(claims, keys)
		}
	}
	if !w.claim(l, claims) {
		return nil
	}
	it.claimed = claims
	return w.lanes[l]
}

// matchColumns are, per table, the GES columns behind what Sage keeps unique, or matches on,
// across a company's records (matchKeys): a contact's reference, email, and name with postcode;
// an invoice's number.
var matchColumns = map[string][]string{
	"customers": {"account_ref", "title", "first_name", "last_name", "company_name", "email", "postcode", "archived"},
	"invoices":  {"invoice_number"},
}

// keysOf is the claim a lane holds while it applies a change that may move table's match keys
// (item.rekeys): while it does, another lane's change of that table waits (a barrier), or it
// could search Sage and find a key still held that GES has freed (two customers merged into
// one contact), or be refused a key the first change is about to free.
func keysOf(table string) transform.Record {
	return transform.Record{Table: "match keys of " + table}
}

// recentKeys bounds worker.keys.
const recentKeys = 128

// rekeys reports whether ch is an update that may change its record's match columns: they
// differ from those last routed for it, or none were (so inserts do not, and unknown records
// do). It remembers them for the next change.
func (w *worker) rekeys(ch cdc.Change) bool {
	cols, ok := matchColumns[ch.Table]
	row := ch.New
	if row == nil {
		row = ch.Key
	}
	id, idOK := row.ID()
	if !ok || !idOK {
		return false
	}
	rec := transform.Record{Table: ch.Table, ID: id}
	prev, seen := w.keys.get(rec)
	if ch.New == nil {
		w.keys.forget(rec)
		return false
	}
	var h maphash.Hash
	h.SetSeed(w.p.seed)
	for _, c := range cols {
		v := ch.New[c]
		if v.Unchanged {
			w.keys.forget(rec)
			return ch.Op != cdc.Insert
		}
		if v.Null {
			h.WriteByte(1)
		} else {
			h.WriteByte(0)
			h.WriteString(v.Text)
		}
		h.WriteByte(0)
	}
	sum := h.Sum64()
	w.keys.put(rec, sum, recentKeys)
	return ch.Op != cdc.Insert && (!seen || prev != sum)
}

// recentInvoices bounds worker.recent.
const recentInvoices = 256

// remember notes invoice's customer for the routing of its payments (worker.recent).
func (w *worker) remember(invoice, customer int64) { w.recent.put(invoice, customer, recentInvoices) }

// recently is a map of the last n to m entries put (n the bound given to put, m twice it): it
// keeps two generations, and drops the older when the newer is full. Only one goroutine uses it.
type recently[K comparable, V any] struct{ cur, old map[K]V }

func (r *recently[K, V]) get(k K) (V, bool) {
	if v, ok := r.cur[k]; ok {
		return v, true
	}
	v, ok := r.old[k]
	return v, ok
}

func (r *recently[K, V]) put(k K, v V, n int) {
	if r.cur == nil || len(r.cur) >= n {
		r.old, r.cur = r.cur, map[K]V{}
	}
	delete(r.old, k)
	r.cur[k] = v
}

func (r *recently[K, V]) forget(k K) {
	delete(r.cur, k)
	delete(r.old, k)
}

// claimedBy is the lane holding rec, if one does.
func (w *worker) claimedBy(rec transform.Record) (int, bool) {
	w.claimsMu.Lock()
	defer w.claimsMu.Unlock()
	c, ok := w.claims[rec]
	return c.lane, ok
}

// claim holds every one of recs for lane l, or none of them when another lane holds one.
func (w *worker) claim(l int, recs []transform.Record) bool {
	w.claimsMu.Lock()
	defer w.claimsMu.Unlock()
	for _, r := range recs {
		if c, ok := w.claims[r]; ok && c.lane != l {
			return false
		}
	}
	for _, r := range recs {
		c := w.claims[r]
		c.lane = l
		c.n++
		w.claims[r] = c
	}
	return true
}

// unclaim releases one hold on each of recs.
func (w *worker) unclaim(recs []transform.Record) {
	w.claimsMu.Lock()
	defer w.claimsMu.Unlock()
	for _, r := range recs {
		c := w.claims[r]
		if c.n--; c.n <= 0 {
			delete(w.claims, r)
		} else {
			w.claims[r] = c
		}
	}
}

// hold claims for l the record a dependent sync is about (rec, and a payment's invoice from
// its row), so no other lane's change of it runs meanwhile; ok is false when another lane holds
// one of them: its change there decides what Sage holds. release undoes it.
func (l *lane) hold(rec transform.Record, row cdc.Row) (release func(), ok bool) {
	if rec.Table == "customers" {
		return func() {}, true // customers are routed by id
	}
	recs := []transform.Record{rec}
	if rec.Table == "payments" {
		if inv, ok := row.Int("invoice_id"); ok {
			recs = append(recs, transform.Record{Table: "invoices", ID: inv})
		}
	}
	return l.holdAll(recs)
}

// holdAll claims every one of recs for l, or none when another lane holds one of them.
func (l *lane) holdAll(recs []transform.Record) (release func(), ok bool) {
	if l.index < 0 {
		return func() {}, true // the router's lane runs alone
	}
	if !l.claim(l.index, recs) {
		return nil, false
	}
	return func() { l.unclaim(recs) }, true
}

// run applies the lane's changes until it has none, then exits.
func (l *lane) run(ctx context.Context) (err error) {
	for {
		l.mu.Lock()
		it, ok := popFront(&l.queue)
		if !ok || ctx.Err() != nil || err != nil || l.p.stopped() {
			q := l.queue
			l.queue, l.running = nil, false
			l.mu.Unlock()
			if ok {
				q = append(q, it)
			}
			l.abandon(q...)
			select {
			case l.idle <- struct{}{}:
			default:
			}
			return err
		}
		l.mu.Unlock()
		err = l.step(ctx, it)
	}
}

// step handles one change: parks it, skips it when a later change of its record is queued, or
// applies it; then marks it done. It returns an error only when state fails.
func (l *lane) step(ctx context.Context, it item) error {
	w := l.worker
	ch := it.ch
	l.setCurrent(&ch)
	var err error
	switch {
	case w.isParked():
		err = w.park(ctx, ch)
	case ch.CommitLSN != 0 && ch.Op != cdc.Delete && w.p.supersededInQueue(ch) && (!it.rekeys || !w.p.othersInFlight(ch, w.company)):
		// Coalesced: a later change of this record is queued and brings its newest state.
		w.count(state.Skipped)
	default:
		err = l.handle(ctx, ch)
	}
	if last := w.settle(); err == nil && (last || w.countsDue()) {
		// Before the change is done: whoever sees the company caught up sees its counters.
		err = w.flushCounts(ctx)
	}
	l.setCurrent(nil)
	w.unclaim(it.claimed)
	if ch.CommitLSN != 0 {
		w.p.untrack(ch)
	}
	if it.done != nil {
		it.done(err)
	}
	if err != nil {
		if ctx.Err() != nil || errors.Is(err, errStopped) {
			return nil
		}
		return err
	}
	<-w.p.sem
	w.p.cfg.Tracker.Done(ch.CommitLSN)
	return nil
}

func (l *lane) setCurrent(ch *cdc.Change) {
	l.mu.Lock()
	l.cur = ch
	l.mu.Unlock()
}

// Backlog is one company's changes waiting in the pipeline.
type Backlog struct {
	// Changes counts the changes queued or being applied (a change Sage keeps refusing with a
	// retryable error stays here until it goes through).
	Changes int
	// Oldest is the commit time of the oldest of them (for a resync, when it was queued); zero
	// when there are none.
	Oldest time.Time
}

// Backlog returns each company's backlog, including the changes being applied.
func (p *Pipeline) Backlog() map[int64]Backlog {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make(map[int64]Backlog, len(p.workers))
	for id, w := range p.workers {
		var b Backlog
		add := func(ch *cdc.Change) {
			b.Changes++
			if b.Oldest.IsZero() || (!ch.CommitTime.IsZero() && ch.CommitTime.Before(b.Oldest)) {
				b.Oldest = ch.CommitTime
			}
		}
		w.mu.Lock()
		for _, l := range append([]*lane{w.own}, w.lanes...) {
			if l.cur != nil {
				add(l.cur)
			}
			for i := range l.queue {
				add(&l.queue[i].ch)
			}
		}
		for i := range w.queue {
			add(&w.queue[i].ch)
		}
		w.mu.Unlock()
		out[id] = b
	}
	return out
}

// matchKeys are what a searched create of rec (op) looks for in Sage, or could make there: the
// record itself; a contact's reference, email, and name with postcode (matchContact); an
// invoice's number (matchInvoice, linkExisting); a receipt's contact (matchPayment). Two creates
// that share a key could find, or make, one Sage record.
func matchKeys(rec transform.Record, op transform.Op) []string {
	keys := []string{"record " + rec.String()}
	switch {
	case op.Contact != nil:
		c := op.Contact
		if c.Reference != "" {
			keys = append(keys, "reference "+strings.ToLower(c.Reference))
		}
		if p := c.MainContactPerson; p != nil && p.Email != "" {
			keys = append(keys, "email "+strings.ToLower(p.Email))
		}
		if a := c.MainAddress; a != nil && a.PostalCode != "" && c.Name != "" {
			keys = append(keys, "name "+normalise(c.Name)+" "+normalise(a.PostalCode))
		}
	case op.SalesInvoice != nil:
		keys = append(keys, "invoice number "+strings.ToLower(op.SalesInvoice.InvoiceNumber))
	case op.ContactPayment != nil:
		keys = append(keys, "receipts of "+op.ContactPayment.ContactID)
	}
	return keys
}

// lockMatch waits until no other create holds any of keys, then holds them all.
func (w *worker) lockMatch(keys []string) {
	w.matchMu.Lock()
	defer w.matchMu.Unlock()
	for slices.ContainsFunc(keys, func(k string) bool { return w.matching[k] }) {
		w.matchFree.Wait()
	}
	for _, k := range keys {
		w.matching[k] = true
	}
}

// unlockMatch releases keys (held by lockMatch).
func (w *worker) unlockMatch(keys []string) {
	w.searched.Add(1)
	w.matchMu.Lock()
	for _, k := range keys {
		delete(w.matching, k)
	}
	w.matchMu.Unlock()
	w.matchFree.Broadcast()
}
