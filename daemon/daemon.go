// Package daemon wires gessync's stages into one long-running process: cdc's stream feeds the
// pipeline, the pipeline applies changes through sink/sage, state keeps the checkpoint, and the
// loop restarts the stream from the safe LSN after any failure. cmd/gessync builds a Daemon from
// configuration; web serves its Status and connect flow.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/sync/errgroup"

	"github.com/gessync/gessync/cdc"
	"github.com/gessync/gessync/pipeline"
	"github.com/gessync/gessync/sink/sage"
	"github.com/gessync/gessync/state"
)

// Config configures a Daemon.
type Config struct {
	// CDC is the replication side (GES database URL, slot, publication).
	CDC cdc.Config
	// State is the state store; its URL defaults to CDC.URL.
	State state.Config
	// Sage is the Sage client configuration.
	Sage sage.Config
	// CheckpointInterval is how often a moved checkpoint is persisted, default 1 s.
	CheckpointInterval time.Duration
	// RestartMin and RestartMax bound the wait before the stream restarts after a failure
	// (defaults 1 s and 30 s).
	RestartMin, RestartMax time.Duration
	// RetryMin and RetryMax bound a company's retries of a retryable Sage failure.
	RetryMin, RetryMax time.Duration
	// ParkAfter is how long a company's Sage may refuse before its changes move to the durable
	// backlog (pipeline.Config.ParkAfter; default 5 min).
	ParkAfter time.Duration
	// Lanes is how many of one company's customers have changes applied at once
	// (pipeline.Config.Lanes; default 4).
	Lanes int
	// ContactIndex is how many customers a Sage business may have for gessync to match new
	// customers against an index of them rather than search Sage for each
	// (pipeline.Config.ContactIndex; 0: 5000; negative: never, every customer is searched for).
	ContactIndex int
	// RefreshEvery is how often quiet connections are checked (default 1 h); RefreshWithin is
	// how long before its 31-day expiry a refresh token is renewed (default 7 days).
	RefreshEvery, RefreshWithin time.Duration
	// StopGrace is how long Serve, once its ctx ends, lets the calls to Sage in flight finish
	// before it cancels them (default 20 s): a create cut off mid-call may be committed by Sage
	// unacknowledged, and then the next start must search for it.
	StopGrace time.Duration
	// Leader tunes the election among instances sharing a slot (leader.go; Serve).
	Leader LeaderConfig
	Logger *slog.Logger
}

// OpenError is a failure to open the GES or the state database at start-up.
type OpenError struct {
	Database string // "GES" or "state"
	Err      error
}

func (e *OpenError) Error() string {
	return "opening the " + e.Database + " database: " + e.Err.Error()
}
func (e *OpenError) Unwrap() error { return e.Err }

// Daemon is gessync running: one replication stream, one pipeline, many companies.
type Daemon struct {
	cfg    Config
	log    *slog.Logger
	Store  *state.Store
	GES    *pgxpool.Pool
	Rows   *cdc.RowReader
	Client *sage.Client
	// Metrics are the daemon's Prometheus metrics (metrics.go).
	Metrics *Metrics

	tracker atomic.Pointer[pipeline.Tracker]
	stream  atomic.Pointer[cdc.Stream]
	pipe    atomic.Pointer[pipeline.Pipeline]
	// contacts are the contact indexes every stream's pipeline shares: what Sage holds
	// outlives a replication cut.
	contacts *pipeline.ContactIndexes
	slotInfo cdc.SlotInfo
	saved    atomic.Uint64 // last persisted checkpoint
	lead     leadership    // leader election state (leader.go)

	mu       sync.Mutex
	sessions map[int64]cachedSession
	// conns caches each company's connection row for connectionTTL: every change needs it,
	// and reading it (a query, the tokens opened, the settings decoded) cost more than the
	// rest of the change's state. forget drops it at once.
	conns map[int64]cachedConn
	// connGen counts forget calls per company: a read that started before one is not cached.
	connGen map[int64]uint64

	bf backfills

	// draining ends when Serve's ctx ends (drain): the stream stops and the pipeline finishes
	// what it applies (Pipeline.Stop); Run then returns.
	draining context.Context
	drain    context.CancelFunc
}

type cachedConn struct {
	conn state.Connection
	at   time.Time
}

// connectionTTL is how long a connected company's connection read from state serves its
// changes. A change this process makes (connect, settings, disconnect) is seen at once; one
// made by another process within this time. A company that is not connected, or is being
// connected, is read afresh for every change: a change is never skipped on an old reading.
const connectionTTL = time.Second

// connection returns company's connection (state.Store.Connection) through the cache.
func (d *Daemon) connection(ctx context.Context, companyID int64) (state.Connection, error) {
	d.mu.Lock()
	c, ok := d.conns[companyID]
	gen := d.connGen[companyID]
	d.mu.Unlock()
	if ok && time.Since(c.at) < connectionTTL {
		return c.conn, nil
	}
	conn, err := d.Store.Connection(ctx, companyID)
	if err != nil || conn.Status != "connected" || conn.BusinessID == "" {
		return conn, err
	}
	d.mu.Lock()
	if d.connGen[companyID] == gen { // no forget since the read began
		if d.conns == nil {
			d.conns = map[int64]cachedConn{}
		}
		d.conns[companyID] = cachedConn{conn: conn, at: time.Now()}
	}
	d.mu.Unlock()
	return conn, nil
}

type cachedSession struct {
	connectedAt time.Time
	businessID  string
	s           *sage.Session
}

// New opens the state store and the GES pool. It does not touch replication: Run does.
func New(ctx context.Context, cfg Config) (*Daemon, error) {
	if cfg.State.URL == "" {
		cfg.State.URL = cfg.CDC.URL
	}
	if cfg.CheckpointInterval <= 0 {
		cfg.CheckpointInterval = time.Second
	}
	if cfg.RestartMin <= 0 {
		cfg.RestartMin = time.Second
	}
	if cfg.RestartMax <= 0 {
		cfg.RestartMax = 30 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	cfg.CDC.Logger = cfg.Logger.With("component", "cdc")
	store, err := state.Open(ctx, cfg.State)
	if err != nil {
		return nil, &OpenError{Database: "state", Err: err}
	}
	// Every stored token must open with the configured key: better to refuse now than to
	// retry for ever later.
	if _, err := store.Connections(ctx); err != nil {
		store.Close()
		return nil, &OpenError{Database: "state", Err: err}
	}
	pool, err := pgxpool.New(ctx, cfg.CDC.URL)
	if err == nil {
		err = pool.Ping(ctx)
	}
	if err != nil {
		store.Close()
		return nil, &OpenError{Database: "GES", Err: err}
	}
	m := newMetrics()
	d := &Daemon{
		cfg: cfg, log: cfg.Logger, Store: store, GES: pool, Rows: cdc.NewRowReader(pool),
		Client:   sage.New(cfg.Sage, sage.WithLogger(cfg.Logger.With("component", "sink")), sage.WithObserver(m)),
		Metrics:  m,
		sessions: map[int64]cachedSession{},
	}
	d.contacts = pipeline.NewContactIndexes(pipeline.Config{ContactIndex: cfg.ContactIndex, ContactIndexOff: m.contactIndexOff, Logger: cfg.Logger})
	d.draining, d.drain = context.WithCancel(context.Background())
	if d.cfg.StopGrace <= 0 {
		d.cfg.StopGrace = 20 * time.Second
	}
	m.attach(d)
	return d, nil
}

// Close releases the pools.
func (d *Daemon) Close() {
	d.GES.Close()
	d.Store.Close()
}

// Session returns company's Sage session and connection (pipeline.Connections). The
// connection is at most connectionTTL old, and a change this process made to it applies from
// the next change on.
func (d *Daemon) Session(ctx context.Context, companyID int64) (pipeline.Sage, state.Connection, error) {
	conn, err := d.connection(ctx, companyID)
	if errors.Is(err, state.ErrNotFound) {
		return nil, conn, pipeline.ErrNotConnected
	}
	if err != nil {
		return nil, conn, err
	}
	if conn.Status == "connecting" || (conn.BusinessID == "" && conn.Status == "lost") {
		// Being connected, or a connect that failed: the change waits for the connection; it
		// is never skipped. Only a company with no connection at all skips.
		return nil, conn, ErrConnecting
	}
	if conn.BusinessID == "" {
		return nil, conn, pipeline.ErrNotConnected
	}
	return d.session(conn), conn, nil
}

// ErrConnecting means the company's connection is being made (between the OAuth callback and
// the business being chosen); its changes wait and retry.
var ErrConnecting = errors.New("company is being connected to Sage")

func (d *Daemon) session(conn state.Connection) *sage.Session {
	d.mu.Lock()
	defer d.mu.Unlock()
	c, ok := d.sessions[conn.CompanyID]
	if ok && c.connectedAt.Equal(conn.ConnectedAt) && c.businessID == conn.BusinessID {
		return c.s
	}
	tok := conn.Token
	if !conn.RefreshExpiry.IsZero() {
		tok = sage.WithRefreshExpiry(tok, conn.RefreshExpiry)
	}
	s := d.Client.Session(sage.Connection{CompanyID: conn.CompanyID, BusinessID: conn.BusinessID, Token: tok}, d.Store)
	d.sessions[conn.CompanyID] = cachedSession{connectedAt: conn.ConnectedAt, businessID: conn.BusinessID, s: s}
	return s
}

func (d *Daemon) forget(companyID int64) {
	d.mu.Lock()
	delete(d.sessions, companyID)
	delete(d.conns, companyID)
	if d.connGen == nil {
		d.connGen = map[int64]uint64{}
	}
	d.connGen[companyID]++
	d.mu.Unlock()
}

// Run prepares replication (publication, slot, checks) and streams until ctx ends, restarting the
// stream and pipeline from the safe LSN after a failure. It returns nil on a clean stop, or the
// start-up error (a *cdc.SetupError names what to fix).
func (d *Daemon) Run(ctx context.Context) error {
	// soft ends with ctx or when a graceful stop begins (Serve): what waits or starts up ends
	// then; only the pipeline, under ctx, finishes what it applies.
	soft, stopSoft := context.WithCancel(ctx)
	defer stopSoft()
	defer context.AfterFunc(d.draining, stopSoft)()
	info, err := cdc.Prepare(soft, d.cfg.CDC)
	if err != nil {
		return err
	}
	d.slotInfo = info
	slot := d.cfg.CDC.Slot
	if slot == "" {
		slot = "gessync"
	}
	start, ok, err := d.Store.Checkpoint(soft, slot)
	if err != nil {
		return err
	}
	if !ok {
		start = info.ConfirmedFlush
		d.log.Info("no stored checkpoint: starting at the slot's confirmed position", "slot", slot, "lsn", start)
	} else {
		d.log.Info("resuming from the stored checkpoint", "slot", slot, "lsn", start)
	}
	d.saved.Store(uint64(start))

	// The helpers below end with Run, also when it returns first (a graceful stop, an error).
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); d.persistCheckpoints(ctx, slot) }()
	go func() { defer wg.Done(); d.refreshQuietConnections(ctx) }()
	defer func() { cancel(); wg.Wait() }()
	if err := d.resumeBackfills(soft); err != nil {
		return err
	}
	if info.Created && ok {
		// The slot was gone (dropped, or lost with the server) and is new: changes committed
		// between the stored checkpoint and now were never streamed. Bring every connected
		// company back in step by backfilling it, and say so.
		if err := d.recoverLostSlot(soft, slot, start, info); err != nil {
			return err
		}
	}
	defer func() { cancel(); d.bf.wg.Wait() }()

	wait := d.cfg.RestartMin
	for {
		tracker := pipeline.NewTracker(start)
		d.tracker.Store(tracker)
		began := time.Now()
		err := d.runOnce(ctx, soft, tracker, start)
		if soft.Err() != nil {
			d.saveCheckpoint(context.Background(), slot)
			return nil
		}
		if time.Since(began) > time.Minute {
			wait = d.cfg.RestartMin
		}
		d.log.Error("stream stopped; restarting from the safe position", "err", err, "safe_lsn", tracker.Safe(), "wait", wait)
		d.saveCheckpoint(ctx, slot)
		select {
		case <-soft.Done():
			d.saveCheckpoint(context.Background(), slot)
			return nil
		case <-time.After(wait):
		}
		wait = min(wait*2, d.cfg.RestartMax)
		start = tracker.Safe()
	}
}

// refreshQuietConnections renews, every RefreshEvery, the tokens of every connection whose
// refresh token expires within RefreshWithin, whether or not the company has changes: Sage
// refuses a refresh token after 31 days, and a quiet company would otherwise lose its
// connection. A refusal marks the connection lost with a sync-log entry.
func (d *Daemon) refreshQuietConnections(ctx context.Context) {
	every, within := d.cfg.RefreshEvery, d.cfg.RefreshWithin
	if every <= 0 {
		every = time.Hour
	}
	if within <= 0 {
		within = 7 * 24 * time.Hour
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		conns, err := d.Store.Connections(ctx)
		if err != nil {
			d.log.Error("token refresh: reading connections", "err", err)
			continue
		}
		for _, c := range conns {
			if c.BusinessID == "" || c.Status != "connected" {
				continue
			}
			err := d.session(c).RefreshIfDue(ctx, within)
			switch {
			case err == nil:
			case errors.Is(err, sage.ErrConnectionLost):
				d.log.Warn("token refresh refused: company must reconnect", "company_id", c.CompanyID)
				if err := pipeline.MarkConnectionLost(ctx, d.Store, c.CompanyID, "Sage refused to renew this company's connection (consent withdrawn or expired)."); err != nil {
					d.log.Error("marking connection lost", "company_id", c.CompanyID, "err", err)
				}
			default:
				d.log.Warn("token refresh failed; will try again", "company_id", c.CompanyID, "err", err)
			}
		}
	}
}

// recoverLostSlot backfills every connected company after the slot was recreated, and writes
// one sync-log entry per company saying why.
func (d *Daemon) recoverLostSlot(ctx context.Context, slot string, stored pglogrepl.LSN, info cdc.SlotInfo) error {
	d.log.Error("replication slot was missing and has been recreated: changes made while it was gone were not streamed; backfilling every connected company",
		"slot", slot, "stored_checkpoint", stored, "new_slot_lsn", info.ConfirmedFlush)
	conns, err := d.Store.Connections(ctx)
	if err != nil {
		return err
	}
	for _, c := range conns {
		if c.BusinessID == "" || !d.cfg.CDC.Shard.Owns(c.CompanyID) { // another shard's slot is not lost
			continue
		}
		msg := fmt.Sprintf("The replication slot %s was missing and has been recreated, so changes made in GES since %s may not have been streamed. gessync is backfilling this company to bring Sage back in step.", slot, stored)
		if err := d.Store.Log(ctx, state.Entry{CompanyID: c.CompanyID, Level: state.LevelWarning, Code: "slot.recreated", Message: msg,
			Action: "Records deleted in GES while the slot was gone may remain in Sage: run gessync reconcile for this company."}); err != nil {
			return err
		}
		if _, err := d.StartBackfill(ctx, c.CompanyID, nil); err != nil && !errors.Is(err, state.ErrBackfillRunning) {
			return err
		}
	}
	return nil
}

// runOnce runs one stream and pipeline from start until either fails or soft ends. soft is
// Run's: it ends with ctx or when a graceful stop begins.
func (d *Daemon) runOnce(ctx, soft context.Context, tracker *pipeline.Tracker, start pglogrepl.LSN) error {
	events := make(chan cdc.Event, 1024)
	stream := cdc.NewStream(d.cfg.CDC)
	d.stream.Store(stream)
	skew, err := d.clockSkew(ctx)
	if err != nil {
		return err
	}
	p := pipeline.New(pipeline.Config{
		Store: d.Store, Rows: d.Rows, Connections: d, Tracker: tracker, ClockSkew: skew,
		RetryMin: d.cfg.RetryMin, RetryMax: d.cfg.RetryMax, ParkAfter: d.cfg.ParkAfter, ProbeEvery: min(30*time.Second, d.cfg.ParkAfter),
		Lanes: d.cfg.Lanes, ContactIndexes: d.contacts,
		Logger: d.log, Observe: d.Metrics.observeChange,
	})
	d.pipe.Store(p)
	g, gctx := errgroup.WithContext(ctx)
	// A graceful stop (soft ends before ctx) ends the stream at once and lets the pipeline
	// finish what it applies.
	sctx, stopStream := context.WithCancel(gctx)
	defer stopStream()
	defer context.AfterFunc(soft, func() { stopStream(); p.Stop() })()
	g.Go(func() error {
		err := stream.Run(sctx, start, tracker.Safe, events)
		if soft.Err() != nil && gctx.Err() == nil {
			return nil
		}
		return err
	})
	g.Go(func() error { return p.Run(gctx, events) })
	return g.Wait()
}

// clockSkew measures how far apart the GES and state databases' clocks are (SELECT now() on
// each, the round trips added): GES stamps created_at, state stamps connected_at, and the
// pipeline compares them. It is 0 when both are one server.
func (d *Daemon) clockSkew(ctx context.Context) (time.Duration, error) {
	var ges, st time.Time
	t0 := time.Now()
	if err := d.GES.QueryRow(ctx, `SELECT clock_timestamp()`).Scan(&ges); err != nil {
		return 0, fmt.Errorf("reading the GES database's clock: %w", err)
	}
	t1 := time.Now()
	if err := d.Store.Pool().QueryRow(ctx, `SELECT clock_timestamp()`).Scan(&st); err != nil {
		return 0, fmt.Errorf("reading the state database's clock: %w", err)
	}
	t2 := time.Now()
	// Each reading was taken somewhere within its round trip: compare both clocks' offsets from
	// this machine's at the middle of each, and add the round trips as the uncertainty.
	skew := ges.Sub(t0.Add(t1.Sub(t0)/2)) - st.Sub(t1.Add(t2.Sub(t1)/2))
	if skew < 0 {
		skew = -skew
	}
	return skew + t2.Sub(t0), nil
}

func (d *Daemon) persistCheckpoints(ctx context.Context, slot string) {
	t := time.NewTicker(d.cfg.CheckpointInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			d.saveCheckpoint(ctx, slot)
		}
	}
}

// saveCheckpoint persists the transaction-moved safe LSN when it has moved.
func (d *Daemon) saveCheckpoint(ctx context.Context, slot string) {
	t := d.tracker.Load()
	if t == nil {
		return
	}
	lsn := t.TxnSafe()
	if uint64(lsn) <= d.saved.Load() {
		return
	}
	if err := d.Store.SaveCheckpoint(ctx, slot, lsn); err != nil {
		d.log.Error("saving checkpoint", "err", err)
		return
	}
	d.saved.Store(uint64(lsn))
}
