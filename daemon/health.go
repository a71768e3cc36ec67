package daemon

import (
	"context"
	"fmt"
	"time"
)

// DefaultReadyMaxLag is how old the oldest unhandled commit may be before the daemon stops
// reporting ready.
const DefaultReadyMaxLag = 5 * time.Minute

// Readiness is the answer of GET /readyz. Field names are a contract with operators.
type Readiness struct {
	// Ready is true when every check below passed.
	Ready bool `json:"ready"`
	// ReplicationConnected is true while the replication stream is up.
	ReplicationConnected bool `json:"replication_connected"`
	// StateReachable is true when the state database answered a ping.
	StateReachable bool `json:"state_reachable"`
	// LagSeconds is the age of the oldest commit not yet fully handled (0 when caught up);
	// MaxLagSeconds is the bound it must stay under.
	LagSeconds    float64 `json:"lag_seconds"`
	MaxLagSeconds float64 `json:"max_lag_seconds"`
	// Problems says, in words, each check that failed.
	Problems []string `json:"problems,omitempty"`
}

// Ready checks that replication is connected, that changes are being handled (the oldest
// unhandled commit is younger than maxLag; DefaultReadyMaxLag when 0), and that the state
// database answers.
func (d *Daemon) Ready(ctx context.Context, maxLag time.Duration) Readiness {
	if maxLag <= 0 {
		maxLag = DefaultReadyMaxLag
	}
	r := Readiness{MaxLagSeconds: maxLag.Seconds()}
	if !d.Leader() {
		// A standby: another instance leads this slot (leader.go). Say so first.
		_, why := d.Leading()
		r.Problems = append(r.Problems, why)
	}
	if s := d.stream.Load(); s != nil {
		r.ReplicationConnected = s.Status().Connected
	}
	if !r.ReplicationConnected {
		r.Problems = append(r.Problems, "replication is not connected")
	}
	if t := d.tracker.Load(); t != nil {
		if _, oldest := t.Pending(); !oldest.IsZero() {
			r.LagSeconds = time.Since(oldest).Seconds()
		}
	}
	if r.LagSeconds > r.MaxLagSeconds {
		r.Problems = append(r.Problems, fmt.Sprintf("the oldest unhandled commit is %.0f s old (bound %.0f s)", r.LagSeconds, r.MaxLagSeconds))
	}
	pctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	if err := d.Store.Pool().Ping(pctx); err != nil {
		r.Problems = append(r.Problems, "the state database does not answer: "+err.Error())
	} else {
		r.StateReachable = true
	}
	r.Ready = len(r.Problems) == 0
	return r
}
