package cdc

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"sync"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// Stream is one logical replication session: START_REPLICATION on the slot, pgoutput protocol
// 1, decoded into Events. Construct with NewStream; Run it once.
type Stream struct {
	cfg Config

	mu     sync.Mutex
	status StreamStatus
}

// StreamStatus is what the stream last saw, for /status and metrics.
type StreamStatus struct {
	Connected bool
	// ReceivedLSN is the end of the last XLogData received.
	ReceivedLSN pglogrepl.LSN
	// ServerWALEnd is the server's WAL end as last reported in XLogData or a keepalive.
	ServerWALEnd pglogrepl.LSN
	// ReportedLSN is the flush position last sent in a standby status update.
	ReportedLSN pglogrepl.LSN
	// LastMessage is when the server last sent anything (UTC).
	LastMessage time.Time
	// LastCommitTime is the commit time of the last transaction received (UTC).
	LastCommitTime time.Time
}

// NewStream returns a Stream for cfg (see Config for defaults).
func NewStream(cfg Config) *Stream { return &Stream{cfg: cfg.withDefaults()} }

// Status returns a snapshot of the stream's positions.
func (s *Stream) Status() StreamStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.status
}

func (s *Stream) update(f func(*StreamStatus)) {
	s.mu.Lock()
	f(&s.status)
	s.mu.Unlock()
}

// ReplicationURL adds replication=database to a connection URL.
func ReplicationURL(raw string) (string, error) {
	u, err := url.Parse(raw)
	if err != nil || u.Scheme == "" {
		// A keyword/value DSN.
		return raw + " replication=database", nil
	}
	q := u.Query()
	q.Set("replication", "database")
	u.RawQuery = q.Encode()
	return u.String(), nil
}

// Run streams changes from start (the stored checkpoint, or 0 for the slot's confirmed_flush_lsn)
// into out until ctx ends or the connection fails; it returns ctx's error or the failure. safe
// returns the LSN below which every change is handled: it is the only position ever reported to
// the server as flushed (standby status updates every StatusInterval, and whenever the server
// asks). While out is full Run keeps sending status updates, so wal_sender_timeout is never hit
// however slow the consumer.
func (s *Stream) Run(ctx context.Context, start pglogrepl.LSN, safe func() pglogrepl.LSN, out chan<- Event) error {
	replURL, err := ReplicationURL(s.cfg.URL)
	if err != nil {
		return err
	}
	conn, err := pgconn.Connect(ctx, replURL)
	if err != nil {
		return fmt.Errorf("opening replication connection: %w", err)
	}
	defer func() {
		closeCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = conn.Close(closeCtx)
		s.update(func(st *StreamStatus) { st.Connected = false })
	}()
	args := []string{"proto_version '1'", fmt.Sprintf("publication_names '%s'", s.cfg.Publication), "messages 'true'"}
	if err := pglogrepl.StartReplication(ctx, conn, s.cfg.Slot, start, pglogrepl.StartReplicationOptions{PluginArgs: args}); err != nil {
		return fmt.Errorf("START_REPLICATION slot %s at LSN %s: %w", s.cfg.Slot, start, err)
	}
	s.cfg.Logger.Info("streaming", "slot", s.cfg.Slot, "publication", s.cfg.Publication, "start_lsn", start)
	s.update(func(st *StreamStatus) { st.Connected = true })

	r := &reader{s: s, conn: conn, safe: safe, out: out, dec: NewDecoder(Tables...)}
	r.received = start
	err = r.loop(ctx)
	if ctx.Err() != nil {
		// Final report of what is safe, so a clean shutdown leaves the slot as far as it may go.
		r.sendStatus(context.Background(), false)
		return ctx.Err()
	}
	return err
}

type reader struct {
	s        *Stream
	conn     *pgconn.PgConn
	safe     func() pglogrepl.LSN
	out      chan<- Event
	dec      *Decoder
	received pglogrepl.LSN
	next     time.Time
	// One receive deadline per status interval, not one context per message.
	rctx    context.Context
	rcancel context.CancelFunc
	rnext   time.Time
}

// ErrStreamEnded means the server ended the COPY stream (CopyDone), e.g. on shutdown.
var ErrStreamEnded = errors.New("replication stream ended by the server")

func (r *reader) loop(ctx context.Context) error {
	interval := r.s.cfg.StatusInterval
	r.next = time.Now().Add(interval)
	defer func() {
		if r.rcancel != nil {
			r.rcancel()
		}
	}()
	for {
		if !time.Now().Before(r.next) {
			// Ask for a keepalive in reply: its position lets an idle slot advance.
			if err := r.sendStatus(ctx, true); err != nil {
				return err
			}
		}
		if r.rctx == nil || !r.rnext.Equal(r.next) {
			if r.rcancel != nil {
				r.rcancel()
			}
			r.rctx, r.rcancel = context.WithDeadline(ctx, r.next)
			r.rnext = r.next
		}
		raw, err := r.conn.ReceiveMessage(r.rctx)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if pgconn.Timeout(err) {
				r.rctx = nil
				continue // a tick: time to send a status update
			}
			return fmt.Errorf("receiving from slot %s: %w", r.s.cfg.Slot, err)
		}
		switch msg := raw.(type) {
		case *pgproto3.CopyData:
			if err := r.handle(ctx, msg.Data); err != nil {
				return err
			}
		case *pgproto3.ErrorResponse:
			return fmt.Errorf("slot %s: server error: %w", r.s.cfg.Slot, pgconn.ErrorResponseToPgError(msg))
		case *pgproto3.CopyDone:
			return ErrStreamEnded
		}
	}
}

func (r *reader) handle(ctx context.Context, data []byte) error {
	if len(data) == 0 {
		return nil
	}
	now := time.Now().UTC()
	switch data[0] {
	case pglogrepl.PrimaryKeepaliveMessageByteID:
		k, err := pglogrepl.ParsePrimaryKeepaliveMessage(data[1:])
		if err != nil {
			return fmt.Errorf("parsing keepalive: %w", err)
		}
		r.s.update(func(st *StreamStatus) { st.ServerWALEnd, st.LastMessage = k.ServerWALEnd, now })
		if !r.dec.InTransaction() && k.ServerWALEnd > r.received {
			if err := r.emit(ctx, Event{Kind: EventKeepalive, EndLSN: k.ServerWALEnd}); err != nil {
				return err
			}
		}
		if k.ReplyRequested {
			return r.sendStatus(ctx, false)
		}
	case pglogrepl.XLogDataByteID:
		x, err := pglogrepl.ParseXLogData(data[1:])
		if err != nil {
			return fmt.Errorf("parsing XLogData: %w", err)
		}
		end := x.WALStart + pglogrepl.LSN(len(x.WALData))
		if end > r.received {
			r.received = end
		}
		r.s.update(func(st *StreamStatus) {
			st.ServerWALEnd, st.ReceivedLSN, st.LastMessage = x.ServerWALEnd, r.received, now
		})
		return r.dec.Decode(x.WALData, x.WALStart, func(ev Event) error {
			if ev.Kind == EventCommit {
				if ev.EndLSN > r.received {
					r.received = ev.EndLSN
				}
				r.s.update(func(st *StreamStatus) { st.LastCommitTime = ev.CommitTime })
			}
			return r.emit(ctx, ev)
		})
	}
	return nil
}

// emit hands ev to the consumer, sending status updates on time while it waits.
func (r *reader) emit(ctx context.Context, ev Event) error {
	if time.Now().Before(r.next) {
		select {
		case r.out <- ev: // the common case: room in the channel, no timer needed
			return nil
		default:
		}
	}
	for {
		wait := time.Until(r.next)
		if wait <= 0 {
			if err := r.sendStatus(ctx, true); err != nil {
				return err
			}
			continue
		}
		timer := time.NewTimer(wait)
		select {
		case r.out <- ev:
			timer.Stop()
			return nil
		case <-ctx.Done():
			timer.Stop()
			return ctx.Err()
		case <-timer.C:
		}
	}
}

// sendStatus reports safe() as the write, flush and apply positions. Flush is set explicitly:
// pglogrepl would otherwise copy the write position into a zero flush.
func (r *reader) sendStatus(ctx context.Context, reply bool) error {
	safe := r.safe()
	r.next = time.Now().Add(r.s.cfg.StatusInterval)
	if safe == 0 {
		return nil // nothing known yet: report nothing rather than 0/0
	}
	err := pglogrepl.SendStandbyStatusUpdate(ctx, r.conn, pglogrepl.StandbyStatusUpdate{
		WALWritePosition: safe, WALFlushPosition: safe, WALApplyPosition: safe,
		ClientTime: time.Now(), ReplyRequested: reply,
	})
	if err != nil {
		return fmt.Errorf("sending standby status update at LSN %s: %w", safe, err)
	}
	r.s.update(func(st *StreamStatus) { st.ReportedLSN = safe })
	return nil
}
