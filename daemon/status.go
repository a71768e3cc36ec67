package daemon

import (
	"context"
	"sort"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/gessync/gessync/pipeline"
)

// Status is the daemon's state for GET /status. Field names are a contract with operators.
type Status struct {
	Slot string `json:"slot"`
	// Role is "leader" while this instance holds its slot's leader lock and may stream,
	// "standby" while it waits (leader.go); RoleDetail says in words what it does or awaits.
	Role       string `json:"role"`
	RoleDetail string `json:"role_detail"`
	// CheckpointLSN is the safe LSN: everything before it is handled, and it is what the slot
	// is told is flushed.
	CheckpointLSN string `json:"checkpoint_lsn"`
	// StoredCheckpointLSN is the checkpoint last persisted in state.
	StoredCheckpointLSN string `json:"stored_checkpoint_lsn"`
	// ServerWALEndLSN is pg_current_wal_lsn() of the GES database.
	ServerWALEndLSN string `json:"server_wal_end_lsn"`
	// LagBytes is ServerWALEndLSN − CheckpointLSN.
	LagBytes int64 `json:"lag_bytes"`
	// LagSeconds is the age of the oldest commit not yet fully handled, 0 when caught up.
	LagSeconds float64 `json:"lag_seconds"`
	// ReplicationConnected is true while the replication stream is up.
	ReplicationConnected bool `json:"replication_connected"`
	// LastCommitTime is the commit time of the last transaction received (UTC), if any.
	LastCommitTime *time.Time `json:"last_commit_time,omitempty"`
	// PendingTransactions counts transactions received but not fully handled.
	PendingTransactions int             `json:"pending_transactions"`
	Companies           []CompanyStatus `json:"companies"`
}

// CompanyStatus is one company's line in Status.
type CompanyStatus struct {
	CompanyID int64 `json:"company_id"`
	Connected bool  `json:"connected"`
	// State is "connected", "connecting" (between the consent and the choice of business),
	// "lost" (reconnect needed) or "not connected".
	State        string `json:"state"`
	BusinessName string `json:"business_name,omitempty"`
	Synced       int64  `json:"synced"`
	Failed       int64  `json:"failed"`
	Skipped      int64  `json:"skipped"`
	// Pending counts the company's changes queued or being applied (its backlog).
	Pending    int        `json:"pending"`
	LastSyncAt *time.Time `json:"last_sync_at,omitempty"`
	OpenErrors int        `json:"open_errors"`
	// StateDetail says why a connection is "lost", empty otherwise.
	StateDetail string `json:"state_detail,omitempty"`
	// AccessTokenExpiresAt is when the current Sage access token expires (it is refreshed
	// before then); RefreshTokenExpiresAt is when the connection's consent runs out if it is
	// never used (each refresh moves it on).
	AccessTokenExpiresAt  *time.Time `json:"access_token_expires_at,omitempty"`
	RefreshTokenExpiresAt *time.Time `json:"refresh_token_expires_at,omitempty"`
	// OldestPendingAt is the commit time of the oldest change in Pending, absent when none.
	OldestPendingAt *time.Time `json:"oldest_pending_at,omitempty"`
	// Backlog counts the company's records parked in the durable backlog: its Sage refused for
	// longer than GESSYNC_PARK_AFTER, so they wait there (not holding the slot) until it accepts.
	Backlog int `json:"backlog"`
}

// Status gathers the daemon's status. It reads state and asks the GES database for its WAL end.
func (d *Daemon) Status(ctx context.Context) (Status, error) {
	slot := d.cfg.CDC.Slot
	if slot == "" {
		slot = "gessync"
	}
	st := Status{Slot: slot, Companies: []CompanyStatus{}}
	_, st.RoleDetail = d.Leading()
	st.Role = d.Role()
	var safe pglogrepl.LSN
	if t := d.tracker.Load(); t != nil {
		safe = t.Safe()
		n, oldest := t.Pending()
		st.PendingTransactions = n
		if !oldest.IsZero() {
			st.LagSeconds = time.Since(oldest).Seconds()
		}
	}
	st.CheckpointLSN = safe.String()
	st.StoredCheckpointLSN = pglogrepl.LSN(d.saved.Load()).String()
	if s := d.stream.Load(); s != nil {
		ss := s.Status()
		st.ReplicationConnected = ss.Connected
		if !ss.LastCommitTime.IsZero() {
			t := ss.LastCommitTime
			st.LastCommitTime = &t
		}
	}
	var end pglogrepl.LSN
	if err := d.GES.QueryRow(ctx, `SELECT pg_current_wal_lsn()`).Scan(&end); err != nil {
		return st, err
	}
	st.ServerWALEndLSN = end.String()
	if end > safe && safe != 0 {
		st.LagBytes = int64(end - safe)
	}

	conns, err := d.Store.Connections(ctx)
	if err != nil {
		return st, err
	}
	stats, err := d.Store.AllStats(ctx)
	if err != nil {
		return st, err
	}
	parked, err := d.Store.BacklogSizes(ctx)
	if err != nil {
		return st, err
	}
	open, err := d.Store.OpenErrors(ctx)
	if err != nil {
		return st, err
	}
	var backlog map[int64]pipeline.Backlog
	if p := d.pipe.Load(); p != nil {
		backlog = p.Backlog()
	}
	pending := map[int64]int{}
	for id, b := range backlog {
		pending[id] = b.Changes
	}
	seen := map[int64]bool{}
	for _, c := range conns {
		seen[c.CompanyID] = true
		s := stats[c.CompanyID]
		state := c.Status
		st.Companies = append(st.Companies, CompanyStatus{CompanyID: c.CompanyID, Connected: c.Status == "connected" && c.BusinessID != "", State: state,
			BusinessName: c.BusinessName, Synced: s.Synced, Failed: s.Failed, Skipped: s.Skipped, Pending: pending[c.CompanyID], LastSyncAt: s.LastSyncAt, OpenErrors: open[c.CompanyID], Backlog: parked[c.CompanyID]})
	}
	for id, s := range stats {
		if !seen[id] {
			st.Companies = append(st.Companies, CompanyStatus{CompanyID: id, State: "not connected", Synced: s.Synced, Failed: s.Failed, Skipped: s.Skipped, Pending: pending[id], LastSyncAt: s.LastSyncAt, OpenErrors: open[id], Backlog: parked[id]})
		}
	}
	for i := range st.Companies {
		c := &st.Companies[i]
		if b := backlog[c.CompanyID]; !b.Oldest.IsZero() {
			t := b.Oldest.UTC()
			c.OldestPendingAt = &t
		}
	}
	for _, c := range conns {
		for i := range st.Companies {
			cs := &st.Companies[i]
			if cs.CompanyID != c.CompanyID {
				continue
			}
			cs.StateDetail = c.StatusDetail
			if c.Token != nil && !c.Token.Expiry.IsZero() {
				t := c.Token.Expiry.UTC()
				cs.AccessTokenExpiresAt = &t
			}
			if !c.RefreshExpiry.IsZero() {
				t := c.RefreshExpiry.UTC()
				cs.RefreshTokenExpiresAt = &t
			}
		}
	}
	sort.Slice(st.Companies, func(i, j int) bool { return st.Companies[i].CompanyID < st.Companies[j].CompanyID })
	return st, nil
}
