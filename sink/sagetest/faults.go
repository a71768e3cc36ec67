package sagetest

import (
	"encoding/json"
	"fmt"
	"maps"
	"math/rand/v2"
	"net"
	"net/http"
	"time"
)

// Duration is a time.Duration written in JSON as Go's duration string ("250ms", "2s").
type Duration time.Duration

// MarshalJSON writes the duration as a string such as "250ms".
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// UnmarshalJSON reads a duration string ("250ms") or a number of milliseconds.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		var ms int64
		if err := json.Unmarshal(b, &ms); err != nil {
			return fmt.Errorf("duration: want a string like \"250ms\" or milliseconds: %s", b)
		}
		*d = Duration(time.Duration(ms) * time.Millisecond)
		return nil
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

// FaultSet is a set of faults for API calls under /v3.1. Rates are shares from 0 to 1 drawn
// independently per call; the *Next counters fault that many calls and count down.
type FaultSet struct {
	// FailAll answers every call 500 [{"$dataCode":"UnexpectedError",…}] until cleared.
	FailAll bool `json:"fail_all,omitempty"`
	// Latency delays every call before it is handled.
	Latency Duration `json:"latency,omitempty"`
	// ErrorRate is the share of calls answered 500 UnexpectedError.
	ErrorRate float64 `json:"error_rate,omitempty"`
	// ResetRate is the share of calls whose connection is closed (TCP reset) without a reply,
	// before anything is done.
	ResetRate float64 `json:"reset_rate,omitempty"`
	// DropRate is the share of writes (POST, PUT, DELETE) that are applied, after which the
	// connection is closed without a reply ("commit then drop").
	DropRate float64 `json:"drop_rate,omitempty"`
	// FailNext, ResetNext and DropNext fault the next N calls (writes, for DropNext) the same way.
	FailNext  int `json:"fail_next,omitempty"`
	ResetNext int `json:"reset_next,omitempty"`
	DropNext  int `json:"drop_next,omitempty"`
}

// BusinessFaults are the faults and account states of one business.
type BusinessFaults struct {
	FaultSet
	// SubscriptionLapsed answers every call 401 AuthorizationFailure
	// "No active subscription. (MSE)", as Sage does when a trial or subscription has ended.
	SubscriptionLapsed bool `json:"subscription_lapsed,omitempty"`
	// ReadOnly makes the connected user a read-only user: every write is answered 403
	// MultiUserAccessDenied.
	ReadOnly bool `json:"read_only,omitempty"`
	// RevokeTokens is an action, not a state: when set, every access and refresh token issued
	// for the business so far stops working (401 AuthorizationFailure "Access denied." and 400
	// invalid_grant), as when the user disconnects the app. It is not kept: Faults reports it
	// false. Tokens issued afterwards work.
	RevokeTokens bool `json:"revoke_tokens,omitempty"`
}

// Faults is the sandbox's fault configuration, as PUT and GET /_sandbox/faults carry it:
// {"fail_all":true, "latency":"100ms", …, "businesses":{"<id>":{"read_only":true, …}}}.
// The embedded FaultSet applies to every call, before the token is even checked; Businesses
// apply to calls for that business after authentication.
type Faults struct {
	FaultSet
	Businesses map[string]BusinessFaults `json:"businesses,omitempty"`
}

// SetFaults replaces the fault configuration (PUT /_sandbox/faults). It panics on a rate
// outside 0..1, a negative count or latency, or an unknown business.
func (s *Sandbox) SetFaults(f Faults) {
	if err := s.checkFaults(f); err != nil {
		panic("sagetest: SetFaults: " + err.Error())
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	f.Businesses = maps.Clone(f.Businesses)
	for id, bf := range f.Businesses {
		if bf.RevokeTokens {
			b, _ := s.businesses.get(id)
			b.tokenGen++
			bf.RevokeTokens = false
			f.Businesses[id] = bf
		}
	}
	s.faults = f
}

// Faults returns the current fault configuration (GET /_sandbox/faults).
func (s *Sandbox) Faults() Faults {
	s.mu.Lock()
	defer s.mu.Unlock()
	f := s.faults
	f.Businesses = maps.Clone(f.Businesses)
	return f
}

func (s *Sandbox) checkFaults(f Faults) error {
	check := func(where string, fs FaultSet) error {
		for name, r := range map[string]float64{"error_rate": fs.ErrorRate, "reset_rate": fs.ResetRate, "drop_rate": fs.DropRate} {
			if r < 0 || r > 1 {
				return fmt.Errorf("%s%s must be between 0 and 1", where, name)
			}
		}
		if fs.FailNext < 0 || fs.ResetNext < 0 || fs.DropNext < 0 || fs.Latency < 0 {
			return fmt.Errorf("%scounts and latency must not be negative", where)
		}
		return nil
	}
	if err := check("", f.FaultSet); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for id, bf := range f.Businesses {
		if _, ok := s.businesses.get(id); !ok {
			return fmt.Errorf("businesses: no business %s", id)
		}
		if err := check("businesses."+id+".", bf.FaultSet); err != nil {
			return err
		}
	}
	return nil
}

// faultDecision is what the faults do to one call before it is handled.
type faultDecision struct {
	latency time.Duration
	fail    bool
	reset   bool
}

// preFaults decides the faults of the global set (businessID "") or of a business's set for one
// call, counting down the *Next counters it uses.
func (s *Sandbox) preFaults(businessID string) faultDecision {
	s.mu.Lock()
	defer s.mu.Unlock()
	d, _ := withFaultSet(s, businessID, func(fs *FaultSet) faultDecision {
		d := faultDecision{latency: time.Duration(fs.Latency)}
		switch {
		case fs.FailAll:
			d.fail = true
		case fs.FailNext > 0:
			fs.FailNext--
			d.fail = true
		case fs.ErrorRate > 0 && rand.Float64() < fs.ErrorRate:
			d.fail = true
		}
		if !d.fail {
			switch {
			case fs.ResetNext > 0:
				fs.ResetNext--
				d.reset = true
			case fs.ResetRate > 0 && rand.Float64() < fs.ResetRate:
				d.reset = true
			}
		}
		return d
	})
	return d
}

// dropAfterCommit reports whether the reply to a write just applied for the business is lost,
// by the global set or the business's.
func (s *Sandbox) dropAfterCommit(businessID string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	drop := func(fs *FaultSet) bool {
		switch {
		case fs.DropNext > 0:
			fs.DropNext--
			return true
		case fs.DropRate > 0:
			return rand.Float64() < fs.DropRate
		}
		return false
	}
	global, _ := withFaultSet(s, "", drop)
	own, _ := withFaultSet(s, businessID, drop)
	return global || own
}

// withFaultSet runs f on the global fault set (businessID "") or the business's, keeping any
// change to its counters; ok is false when the business has no faults. Callers hold s.mu.
func withFaultSet[T any](s *Sandbox, businessID string, f func(*FaultSet) T) (v T, ok bool) {
	if businessID == "" {
		return f(&s.faults.FaultSet), true
	}
	bf, ok := s.faults.Businesses[businessID]
	if !ok {
		return v, false
	}
	v = f(&bf.FaultSet)
	s.faults.Businesses[businessID] = bf
	return v, true
}

// resetConn closes the client's connection without a reply. Behind a server that cannot be
// hijacked (an httptest.ResponseRecorder) it aborts the handler with http.ErrAbortHandler.
func resetConn(w http.ResponseWriter) {
	conn, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		panic(http.ErrAbortHandler)
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		_ = tc.SetLinger(0) // RST rather than FIN
	}
	_ = conn.Close()
}

// sleep waits d or until the request is cancelled.
func sleep(r *http.Request, d time.Duration) {
	if d <= 0 {
		return
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-r.Context().Done():
	}
}
