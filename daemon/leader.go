package daemon

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"os"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/gessync/gessync/cdc"
	"github.com/gessync/gessync/pipeline"
)

// LeaderConfig tunes how gessync instances that share a slot choose the one that streams.
//
// The leader holds a PostgreSQL session advisory lock on the state database, on a dedicated
// connection, for as long as it streams; the others (standbys) try to take it every Poll. The
// leader checks its lock connection every Check: when a check fails or takes longer than
// CheckTimeout, it stops streaming at once, because the server releases a dead session's lock
// and a standby may then take over. The lock connection asks the server to probe the client
// (TCP keepalives after 5 s idle, every 2 s, 3 probes; tcp_user_timeout 10 s), so the server
// notices a vanished leader's host within about 11 s, later than the leader's own check notices
// it; a standby therefore never leads while the old leader still believes it does.
type LeaderConfig struct {
	// Poll is how often a standby tries to take the lock, default 500 ms.
	Poll time.Duration
	// Check is how often the leader checks it still holds the lock, default 1 s.
	Check time.Duration
	// CheckTimeout bounds one check, default 2 s.
	CheckTimeout time.Duration
	// Name is the lock connection's application_name (shown in pg_stat_activity and in a
	// standby's readiness reason), default "gessync <hostname> pid <pid>".
	Name string
}

func (c LeaderConfig) withDefaults() LeaderConfig {
	if c.Poll <= 0 {
		c.Poll = 500 * time.Millisecond
	}
	if c.Check <= 0 {
		c.Check = time.Second
	}
	if c.CheckTimeout <= 0 {
		c.CheckTimeout = 2 * time.Second
	}
	if c.Name == "" {
		host, _ := os.Hostname()
		c.Name = fmt.Sprintf("gessync %s pid %d", host, os.Getpid())
	}
	if len(c.Name) > 63 {
		c.Name = c.Name[:63]
	}
	return c
}

// ErrLeadershipLost is the cause of the leader's streaming context when its lock connection
// failed: the instance stops streaming and goes back to waiting as a standby.
var ErrLeadershipLost = errors.New("leader lock lost")

// leaderClassID is the first key of every gessync leader lock ("gess"); the second is a hash of
// the state schema and the slot, so instances of different slots (shards) never exclude each
// other, and instances of one slot always do.
const leaderClassID int32 = 0x67657373

// LeaderLockKey returns the two int4 keys of slot's leader lock, as passed to
// pg_try_advisory_lock(int4, int4) and seen in pg_locks (classid, objid, objsubid = 2).
func LeaderLockKey(schema, slot string) (int32, int32) {
	if schema == "" {
		schema = "gessync"
	}
	if slot == "" {
		slot = "gessync"
	}
	h := fnv.New32a()
	h.Write([]byte(schema + "\x00" + slot))
	return leaderClassID, int32(h.Sum32())
}

// leadership is the election state a Daemon carries (field lead).
type leadership struct {
	mu      sync.Mutex
	serving bool // Serve runs: leading is meaningful (Run alone always applies)
	leading bool
	reason  string
}

func (l *leadership) set(leading bool, reason string) {
	l.mu.Lock()
	l.leading, l.reason = leading, reason
	l.mu.Unlock()
}

func (l *leadership) get() (bool, string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.leading, l.reason
}

func (l *leadership) standby() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.serving && !l.leading
}

// NotHereError refuses work on a company that this instance does not apply: it is a standby
// (another instance leads its slot), or the company belongs to another shard. Reason says where
// to go instead.
type NotHereError struct {
	CompanyID int64
	Reason    string
}

func (e *NotHereError) Error() string { return fmt.Sprintf("company %d: %s", e.CompanyID, e.Reason) }

// Unwrap makes a NotHereError a pipeline.ErrNotRunning: nothing applies the company here.
func (e *NotHereError) Unwrap() error { return pipeline.ErrNotRunning }

// NotHere returns a *NotHereError when this instance does not apply company's changes (a
// standby, or another shard's company), and nil when it does. Backfills and resyncs ask it
// first: run anywhere else, they would race the instance that streams the company.
func (d *Daemon) NotHere(companyID int64) error {
	if s := d.cfg.CDC.Shard; !s.Owns(companyID) {
		return &NotHereError{CompanyID: companyID, Reason: fmt.Sprintf("it belongs to shard %d/%d (company_id %% %d = %d), not to this instance's shard %s; use that shard's instance",
			companyID%int64(s.Of), s.Of, s.Of, companyID%int64(s.Of), s)}
	}
	if d.lead.standby() {
		_, why := d.Leading()
		return &NotHereError{CompanyID: companyID, Reason: "this instance is a standby (" + why + "); use the instance that leads"}
	}
	return nil
}

// Leader reports whether this instance holds its slot's leader lock (and so may stream).
func (d *Daemon) Leader() bool {
	leading, _ := d.lead.get()
	return leading
}

// Role is "leader" or "standby", for /status.
func (d *Daemon) Role() string {
	if d.Leader() {
		return "leader"
	}
	return "standby"
}

// Leading reports whether this instance is doing the work, for a readiness probe (/readyz): it
// leads its slot and its replication stream is connected. The reason says, in words, what it is
// doing or waiting for (a standby names the instance that leads).
func (d *Daemon) Leading() (bool, string) {
	leading, reason := d.lead.get()
	if !leading {
		if reason == "" {
			reason = "standby: not leading slot " + d.slotName()
		}
		return false, reason
	}
	if s := d.stream.Load(); s == nil || !s.Status().Connected {
		if reason == "" {
			reason = "leader of slot " + d.slotName() + ": replication not connected yet"
		}
		return false, reason
	}
	return true, "leader: streaming slot " + d.slotName()
}

func (d *Daemon) slotName() string {
	if d.cfg.CDC.Slot == "" {
		return "gessync"
	}
	return d.cfg.CDC.Slot
}

// Serve runs the daemon as one of possibly several instances sharing a slot: it waits until it
// holds the slot's leader lock (a standby meanwhile answers /healthz and /status, and Leading
// says false), waits for any previous consumer to release the replication slot, then Runs; if
// the lock connection fails it stops streaming at once and waits again. A lone instance takes
// the lock at once. Sharded, the replica identity check runs before waiting, so a standby
// refuses to start as the leader would. It returns nil when ctx ends, or Run's start-up error.
func (d *Daemon) Serve(ctx context.Context) error {
	cfg := d.cfg.Leader.withDefaults()
	d.lead.mu.Lock()
	d.lead.serving = true
	d.lead.mu.Unlock()
	if err := d.checkShard(ctx); err != nil {
		return err
	}
	// When ctx ends, a leader stops gracefully: the stream stops, the changes being applied finish
	// (their calls to Sage complete, their mappings are saved) for up to Config.StopGrace, and
	// then whatever is left is cancelled. Losing the leader lock still stops at once: another
	// instance may be leading already.
	hard, stopNow := context.WithCancel(context.WithoutCancel(ctx))
	defer stopNow()
	stopGracefully := context.AfterFunc(ctx, func() {
		d.log.Info("stopping: finishing the changes being applied; a second signal stops at once", "grace", d.cfg.StopGrace.String())
		d.drain()
		time.AfterFunc(d.cfg.StopGrace, func() {
			if hard.Err() == nil {
				d.log.Warn("stopping: the grace ran out; cutting off the calls to Sage in flight (the next start looks for what they may have created)", "grace", d.cfg.StopGrace.String())
			}
			stopNow()
		})
	})
	defer stopGracefully()
	schema := d.cfg.State.Schema
	k1, k2 := LeaderLockKey(schema, d.slotName())
	var lock *pgx.Conn
	defer func() {
		if lock != nil {
			closeConn(lock)
		}
	}()
	for {
		var err error
		lock, err = d.awaitLock(ctx, cfg, lock, k1, k2)
		if err != nil {
			return nil // ctx ended
		}
		d.log.Info("leading: holding the leader lock", "slot", d.slotName(), "lock", cfg.Name)
		d.lead.set(true, "")
		lctx, cancel := context.WithCancelCause(hard)
		var wg sync.WaitGroup
		wg.Add(1)
		go func() { defer wg.Done(); d.watchLock(lctx, cancel, cfg, lock, k1, k2) }()
		// Waiting for the slot ends at a stop's start too: nothing is being applied yet.
		wctx, endWait := context.WithCancel(lctx)
		stopWait := context.AfterFunc(ctx, endWait)
		err = d.waitSlotFree(wctx)
		stopWait()
		endWait()
		if ctx.Err() != nil {
			err = ctx.Err()
		}
		if err == nil {
			err = d.Run(lctx)
		}
		lost := errors.Is(context.Cause(lctx), ErrLeadershipLost)
		cancel(nil)
		wg.Wait()
		d.lead.set(false, "")
		switch {
		case ctx.Err() != nil:
			return nil // closing lock (deferred) releases it
		case lost:
			d.log.Warn("stopped streaming: the leader lock was lost; waiting to lead again", "slot", d.slotName(), "err", context.Cause(lctx))
			closeConn(lock)
			lock = nil
			continue
		}
		// Run refused to start (a *cdc.SetupError) while leading: give the lock up first.
		closeConn(lock)
		lock = nil
		if err == nil {
			err = fmt.Errorf("slot %s: streaming stopped", d.slotName())
		}
		return err
	}
}

// checkShard runs the read-only replica identity check of a sharded instance.
func (d *Daemon) checkShard(ctx context.Context) error {
	if !d.cfg.CDC.Shard.Enabled() {
		return nil
	}
	conn, err := pgx.Connect(ctx, d.cfg.CDC.URL)
	if err != nil {
		return fmt.Errorf("connecting to the GES database: %w", err)
	}
	defer closeConn(conn)
	cfg := d.cfg.CDC
	if cfg.Publication == "" {
		cfg.Publication = "gessync"
	}
	return cdc.CheckShardIdentity(ctx, conn, cfg)
}

// awaitLock returns a connection holding the leader lock, connecting (or reconnecting) as
// needed; it fails only when ctx ends.
func (d *Daemon) awaitLock(ctx context.Context, cfg LeaderConfig, conn *pgx.Conn, k1, k2 int32) (*pgx.Conn, error) {
	wait := cfg.Poll
	logged := ""
	for {
		if conn == nil {
			c, err := d.connectLock(ctx, cfg)
			if err != nil {
				if ctx.Err() != nil {
					return nil, ctx.Err()
				}
				reason := fmt.Sprintf("standby: cannot reach the state database to take the leader lock of slot %s: %v", d.slotName(), err)
				d.lead.set(false, reason)
				if reason != logged {
					d.log.Error("leader lock: state database unreachable", "slot", d.slotName(), "err", err)
					logged = reason
				}
				if !sleep(ctx, wait) {
					return nil, ctx.Err()
				}
				wait = min(wait*2, 5*time.Second)
				continue
			}
			conn, wait = c, cfg.Poll
		}
		got, holder, err := tryLock(ctx, cfg, conn, k1, k2)
		if err != nil {
			closeConn(conn)
			conn = nil
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			continue
		}
		if got {
			return conn, nil
		}
		reason := fmt.Sprintf("standby: %s leads slot %s", holder, d.slotName())
		d.lead.set(false, reason)
		if reason != logged {
			d.log.Info("standing by: another instance leads", "slot", d.slotName(), "leader", holder)
			logged = reason
		}
		if !sleep(ctx, cfg.Poll) {
			closeConn(conn)
			return nil, ctx.Err()
		}
	}
}

func (d *Daemon) connectLock(ctx context.Context, cfg LeaderConfig) (*pgx.Conn, error) {
	pcfg, err := pgx.ParseConfig(d.cfg.State.URL)
	if err != nil {
		return nil, fmt.Errorf("state database URL: %w", err)
	}
	pcfg.RuntimeParams["application_name"] = cfg.Name
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn, err := pgx.ConnectConfig(cctx, pcfg)
	if err != nil {
		return nil, fmt.Errorf("connecting the leader lock session: %w", err)
	}
	// Let the server notice a vanished leader in seconds rather than the OS default of hours.
	// A pooler may refuse these; the lock still works, only slower to free on a lost host.
	for _, set := range []string{"SET tcp_keepalives_idle = 5", "SET tcp_keepalives_interval = 2", "SET tcp_keepalives_count = 3", "SET tcp_user_timeout = 10000"} {
		if _, err := conn.Exec(cctx, set); err != nil {
			d.log.Warn("leader lock: could not tune TCP keepalives", "setting", set, "err", err)
		}
	}
	return conn, nil
}

// tryLock tries the lock once; when another session holds it, holder names it.
func tryLock(ctx context.Context, cfg LeaderConfig, conn *pgx.Conn, k1, k2 int32) (bool, string, error) {
	qctx, cancel := context.WithTimeout(ctx, cfg.CheckTimeout)
	defer cancel()
	var got bool
	if err := conn.QueryRow(qctx, `SELECT pg_try_advisory_lock($1, $2)`, k1, k2).Scan(&got); err != nil {
		return false, "", fmt.Errorf("taking the leader lock: %w", err)
	}
	if got {
		return true, "", nil
	}
	var name string
	var pid int32
	err := conn.QueryRow(qctx, `SELECT coalesce(a.application_name, ''), l.pid FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid
		WHERE l.locktype = 'advisory' AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
		AND l.classid::bigint = $1 AND l.objid::bigint = $2 AND l.objsubid = 2 AND l.granted`, int64(uint32(k1)), int64(uint32(k2))).Scan(&name, &pid)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return false, "another instance (just released)", nil
	case err != nil:
		return false, "", fmt.Errorf("reading the leader lock holder: %w", err)
	case name == "":
		return false, fmt.Sprintf("the session of PID %d", pid), nil
	}
	return false, fmt.Sprintf("%q (PID %d)", name, pid), nil
}

// heldSQL checks, on the lock connection itself, that this session still holds the lock.
const heldSQL = `SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()
	AND classid::bigint = $1 AND objid::bigint = $2 AND objsubid = 2 AND granted)`

// watchLock checks the lock every cfg.Check until ctx ends; the first failed, slow or negative
// check cancels ctx with ErrLeadershipLost.
func (d *Daemon) watchLock(ctx context.Context, lost context.CancelCauseFunc, cfg LeaderConfig, conn *pgx.Conn, k1, k2 int32) {
	t := time.NewTicker(cfg.Check)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		qctx, cancel := context.WithTimeout(ctx, cfg.CheckTimeout)
		var held bool
		err := conn.QueryRow(qctx, heldSQL, int64(uint32(k1)), int64(uint32(k2))).Scan(&held)
		cancel()
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			lost(fmt.Errorf("%w: slot %s: checking the lock connection: %w", ErrLeadershipLost, d.slotName(), err))
			return
		}
		if !held {
			lost(fmt.Errorf("%w: slot %s: the session no longer holds it", ErrLeadershipLost, d.slotName()))
			return
		}
	}
}

// waitSlotFree waits until no walsender is streaming the slot: after a failover the previous
// leader's walsender may live on for a moment (or, if its host vanished, until the GES
// server's wal_sender_timeout), and a slot takes one consumer at a time.
func (d *Daemon) waitSlotFree(ctx context.Context) error {
	slot := d.slotName()
	began := time.Now()
	warned := false
	for {
		var pid *int32
		err := d.GES.QueryRow(ctx, `SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1`, slot).Scan(&pid)
		switch {
		case errors.Is(err, pgx.ErrNoRows):
			return nil // Prepare creates it
		case err != nil:
			if ctx.Err() != nil {
				return ctx.Err()
			}
			d.lead.set(true, fmt.Sprintf("leader of slot %s: cannot read the slot: %v", slot, err))
		case pid == nil:
			d.lead.set(true, "")
			return nil
		default:
			d.lead.set(true, fmt.Sprintf("leader of slot %s: waiting for PID %d to release the slot", slot, *pid))
			if !warned && time.Since(began) > 10*time.Second {
				d.log.Warn("the replication slot is still in use by another walsender; it is released when that client is gone or after the GES server's wal_sender_timeout",
					"slot", slot, "active_pid", *pid)
				warned = true
			}
		}
		if !sleep(ctx, 100*time.Millisecond) {
			return ctx.Err()
		}
	}
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

func closeConn(c *pgx.Conn) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = c.Close(ctx)
}
