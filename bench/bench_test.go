package bench

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"
)

// TestMain lets the test binary be the bench daemon the suite starts (see ChildEnv).
func TestMain(m *testing.M) {
	if IsChild() {
		if err := ChildMain(); err != nil {
			fmt.Fprintln(os.Stderr, "bench child:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// TestSmoke runs the whole suite at tiny sizes, as `gessync bench --smoke` does, and checks that
// every part produced figures: the suite cannot rot unnoticed.
func TestSmoke(t *testing.T) {
	rep, out := runSmoke(t, Smoke())
	d := rep.Decode
	if d == nil || d.RecvRate <= 0 || d.CDCRate <= 0 || d.Ratio <= 0 {
		t.Fatalf("decode figures missing: %+v", d)
	}
	for _, r := range []*RateResult{rep.Limited, rep.Off} {
		if r == nil || len(r.Steps) == 0 || r.Steps[0].Handled <= 0 || r.Steps[0].P50 <= 0 {
			t.Fatalf("rate figures missing: %+v", r)
		}
	}
	if c := rep.Calls; c == nil || c.Changes == 0 || c.Calls == 0 || len(c.NoOp) == 0 || c.CoalesceCalls == 0 {
		t.Fatalf("calls figures missing: %+v", c)
	}
	if m := rep.Memory; m == nil || len(m.Runs) < 2 || m.Runs[0].HWMKB <= 0 || m.BigTxnHWM <= 0 {
		t.Fatalf("memory figures missing: %+v", m)
	}
	for _, c := range []*CatchupResult{rep.Catchup, rep.OffDrain} {
		if c == nil || c.FromStart <= 0 || c.Calls == 0 {
			t.Fatalf("catch-up or drain figures missing: %+v", c)
		}
	}
	for _, want := range []string{"decode ceiling", "pg_recvlogical", "limit on", "limit off", "calls per change", "memory", "catch-up", "drain with the limit off"} {
		if !strings.Contains(out, want) {
			t.Errorf("report lacks %q", want)
		}
	}
}

// TestSmokeOverTLS runs the limit-off part with the sandbox served over TLS (--tls): the daemon
// trusts it through SSL_CERT_FILE and speaks HTTP/2 with it, over a handful of connections.
func TestSmokeOverTLS(t *testing.T) {
	o := Smoke()
	o.Parts, o.TLS = []string{"off"}, true
	rep, _ := runSmoke(t, o)
	if r := rep.Off; r == nil || len(r.Steps) == 0 || r.Steps[0].Handled <= 0 || r.Steps[0].Missing != 0 {
		t.Fatalf("limit-off figures missing over TLS: %+v", r)
	}
	if rep.Off.HTTP2 == 0 {
		t.Errorf("no call came over HTTP/2")
	}
	if c := rep.Off.Conns; c <= 0 || c > 20 {
		t.Errorf("%d TCP connections to the sandbox: HTTP/2 should carry the calls over a few", c)
	}
}

// runSmoke runs the suite with o, this test binary as the bench daemon, and returns the report
// and its text; a failed run fails the test with the progress lines.
func runSmoke(t *testing.T, o Options) (*Report, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var out, log bytes.Buffer
	o.ChildArgs = []string{"-test.run=^$"}
	o.Out, o.Log = &out, &log
	rep, err := Run(ctx, o)
	t.Logf("report:\n%s", out.String())
	if err != nil {
		t.Fatalf("bench: %v\nprogress:\n%s", err, log.String())
	}
	return rep, out.String()
}
