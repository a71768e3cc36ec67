package bench

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/gessync/gessync/sink/sage"
)

// RateStep is one offered rate held for a while.
type RateStep struct {
	Offered  float64 // changes a second asked of the generator
	Achieved float64 // changes a second committed in GES
	Handled  float64 // changes a second from the first commit to lag 0
	Changes  int
	MaxLag   float64 // seconds, the daemon's lag_seconds (GET /readyz) sampled every 250 ms
	P50, P99 time.Duration
	Max      time.Duration
	Missing  int // changes whose Sage write was not seen
	Calls    int
	CPU      cpuShare
	Pass     bool // lag stayed under 2 s and every change reached Sage
}

func (s RateStep) String() string {
	mark := "ok  "
	if !s.Pass {
		mark = "FAIL"
	}
	return fmt.Sprintf("%s offered %7.1f/s  committed %7.1f/s  handled %7.1f/s  max lag %5.2f s  p50 %6.0f ms  p99 %6.0f ms  max %6.0f ms  calls/change %.2f  missing %d  CPU: %s",
		mark, s.Offered, s.Achieved, s.Handled, s.MaxLag, ms(s.P50), ms(s.P99), ms(s.Max), float64(s.Calls)/float64(max(s.Changes, 1)), s.Missing, s.CPU)
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// RateResult is a series of steps on one world.
type RateResult struct {
	Title string
	Steps []RateStep
	// Sustained is the highest offered rate that passed, and its step.
	Sustained float64
	Best      RateStep
	// Ceiling is what the limits allow across all companies in changes a second (0: none).
	Ceiling, SageCeiling float64
	Conns                int64 // TCP connections the sandbox accepted during the steps
	HTTP2                int64 // calls of the steps that came over HTTP/2 (--tls)
	// CallsPerChange is what the calibration step measured (limit on).
	CallsPerChange float64
	Calibration    RateStep
}

func (r RateResult) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s\n", r.Title)
	if r.Calibration.Changes > 0 {
		fmt.Fprintf(&b, "  calibration: %s\n", r.Calibration)
	}
	for _, s := range r.Steps {
		fmt.Fprintf(&b, "  %s\n", s)
	}
	fmt.Fprintf(&b, "  sustained with lag < 2 s: %.1f changes/s (p50 %.0f ms, p99 %.0f ms)", r.Sustained, ms(r.Best.P50), ms(r.Best.P99))
	if r.Ceiling > 0 {
		fmt.Fprintf(&b, " = %.0f %% of the client-limit ceiling %.1f/s, %.0f %% of Sage's limit %.1f/s", 100*r.Sustained/r.Ceiling, r.Ceiling, 100*r.Sustained/r.SageCeiling, r.SageCeiling)
	}
	fmt.Fprintf(&b, "\n  TCP connections opened to Sage during the steps: %d", r.Conns)
	if r.HTTP2 > 0 {
		fmt.Fprintf(&b, " (TLS; %d calls over HTTP/2)", r.HTTP2)
	}
	return b.String()
}

// mixCallsPerChange is the throughput mix's fewest Sage calls per change (POST contact, POST
// invoice, PUT invoice, GET invoice + POST payment), the first guess before calibration.
const mixCallsPerChange = 5.0 / 4.0

// step offers rate changes a second for dur and waits until they are handled.
func (r *runner) step(ctx context.Context, w *world, rate float64, dur time.Duration, cycles map[int64]*cycle) (RateStep, error) {
	total := max(int(rate*dur.Seconds()), 1)
	s := RateStep{Offered: rate, Changes: total}
	before, _ := w.rec.snapshot()
	m := r.meter(w.child.cmd.Process.Pid)
	var mu sync.Mutex
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(250 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				if lag, err := w.lag(ctx); err == nil {
					mu.Lock()
					s.MaxLag = max(s.MaxLag, lag)
					mu.Unlock()
				}
			}
		}
	}()
	start := time.Now()
	lr, err := w.run(ctx, rate, total, cycles)
	if err == nil {
		s.CPU = m.read()
		err = w.caughtUp(ctx, max(3*dur, 2*time.Minute))
	}
	close(stop)
	wg.Wait()
	if err != nil {
		return s, err
	}
	s.Achieved = lr.Achieved
	s.Handled = float64(total) / time.Since(start).Seconds()
	lat, missing := w.latencies(lr.Markers)
	s.P50, s.P99, s.Missing = pct(lat, 0.5), pct(lat, 0.99), missing
	if len(lat) > 0 {
		s.Max = lat[len(lat)-1]
	}
	after, _ := w.rec.snapshot()
	_, s.Calls = diffCalls(before, after)
	s.Pass = s.MaxLag < 2 && missing == 0
	return s, nil
}

func (r *runner) profile(name string) string {
	if r.opts.ProfileDir == "" {
		return ""
	}
	return filepath.Join(r.opts.ProfileDir, name+".pprof")
}

// profileSelf starts a CPU profile of the bench process itself (the sandbox, the recorder and
// the load generator) into the profile directory as name.pprof; stop ends it. Both are no-ops
// without --profile-dir.
func (r *runner) profileSelf(name string) (stop func(), err error) {
	path := r.profile(name)
	if path == "" {
		return func() {}, nil
	}
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, err
	}
	return func() { pprof.StopCPUProfile(); f.Close() }, nil
}

// endToEnd runs the parts that need the daemon.
func (r *runner) endToEnd(ctx context.Context, rep *Report) error {
	o, out := r.opts, r.opts.Out
	clientRPM := o.ClientRPM
	if clientRPM <= 0 {
		clientRPM = sage.DefaultRequestsPerMinute
	}
	sandboxRPM := o.SandboxRPM
	if sandboxRPM <= 0 {
		sandboxRPM = 200
	}
	perCompany := float64(min(clientRPM, sandboxRPM)) / 60 / mixCallsPerChange // changes a second
	if r.want("e2e") || r.want("calls") || r.want("catchup") || r.want("memory") {
		r.logf("e2e: %d companies, connecting", o.Companies)
		w, err := r.newWorld(ctx, "bench_e2e", o.Companies, o.SandboxRPM, o.ClientRPM)
		if err != nil {
			return err
		}
		defer w.close()
		if err := w.start(ctx, true, r.profile("daemon-e2e-connect")); err != nil {
			return err
		}
		w.setLatency(o.Latency)
		cycles := map[int64]*cycle{}
		// Calibrate: one cycle per company, well under the limit, gives the mix's calls per
		// change as the pipeline makes them today; the ceiling follows from it.
		calRate := 0.3 * perCompany * float64(o.Companies)
		r.logf("e2e: calibrating calls per change at %.1f changes/s", calRate)
		cal, err := r.step(ctx, w, calRate, time.Duration(float64(4*o.Companies)/calRate*float64(time.Second)), cycles)
		if err != nil {
			return err
		}
		cpc := float64(cal.Calls) / float64(max(cal.Changes, 1))
		if cpc > 0 {
			perCompany = float64(min(clientRPM, sandboxRPM)) / 60 / cpc
		}
		r.logf("  %s", cal)
		if r.want("e2e") {
			res := RateResult{
				Title: fmt.Sprintf("end to end, limit on: %d companies, sandbox latency %s, sandbox limit %d/min and client limit %d/min per business, mix = new customer, issued invoice, invoice edit, part payment; calibration (one cycle per company) made %.2f Sage calls per change",
					o.Companies, o.Latency, sandboxRPM, clientRPM, cpc),
				Ceiling:        perCompany * float64(o.Companies),
				SageCeiling:    float64(sandboxRPM) / 60 / cpc * float64(o.Companies),
				CallsPerChange: cpc, Calibration: cal,
			}
			conns0, h20 := w.rec.conns.Load(), w.rec.h2.Load()
			for _, f := range o.LimitFractions {
				rate := f * res.Ceiling
				r.logf("e2e limit on: offering %.1f changes/s for %s", rate, o.Step)
				s, err := r.step(ctx, w, rate, o.Step, cycles)
				if err != nil {
					return err
				}
				r.logf("  %s", s)
				res.Steps = append(res.Steps, s)
				if s.Pass && rate > res.Sustained {
					res.Sustained, res.Best = rate, s
				}
				if !s.Pass {
					break
				}
			}
			res.Conns, res.HTTP2 = w.rec.conns.Load()-conns0, w.rec.h2.Load()-h20
			rep.Limited = &res
			fmt.Fprintf(out, "%s\n\n", res)
		}
		if r.want("memory") {
			rep.Memory = &MemoryResult{}
			if err := r.memoryRun(ctx, w, perCompany*0.8, rep.Memory); err != nil {
				return err
			}
			// The same companies at the smallest run's total load: what the companies
			// themselves cost, apart from the traffic they bring.
			if low := slices.Min(o.MemoryCompanies); low < o.Companies {
				if err := r.memoryRun(ctx, w, perCompany*0.8*float64(low)/float64(o.Companies), rep.Memory); err != nil {
					return err
				}
				rep.Memory.Runs[len(rep.Memory.Runs)-1].SameLoad = true
			}
		}
		if r.want("calls") {
			c, err := r.calls(ctx, w)
			if err != nil {
				return fmt.Errorf("calls: %w", err)
			}
			rep.Calls = c
			fmt.Fprintf(out, "%s\n\n", c)
		}
		if r.want("catchup") {
			c, err := r.catchup(ctx, w, cycles)
			if err != nil {
				return fmt.Errorf("catch-up: %w", err)
			}
			rep.Catchup = c
			fmt.Fprintf(out, "%s\n\n", c)
		}
		w.close()
	}
	if r.want("memory") {
		for _, n := range o.MemoryCompanies {
			if n == o.Companies {
				continue
			}
			w, err := r.newWorld(ctx, fmt.Sprintf("bench_mem%d", n), n, o.SandboxRPM, o.ClientRPM)
			if err != nil {
				return err
			}
			if err := w.start(ctx, true, ""); err != nil {
				w.close()
				return err
			}
			w.setLatency(o.Latency)
			err = r.memoryRun(ctx, w, perCompany*0.8, rep.Memory)
			w.close()
			if err != nil {
				return err
			}
		}
		if err := r.bigTxn(ctx, rep.Memory); err != nil {
			return fmt.Errorf("large transaction: %w", err)
		}
		fmt.Fprintf(out, "%s\n\n", rep.Memory)
	}
	if r.want("off") {
		r.logf("e2e limit off: %d companies, connecting", o.Companies)
		w, err := r.newWorld(ctx, "bench_off", o.Companies, -1, 1_000_000)
		if err != nil {
			return err
		}
		defer w.close()
		if err := w.start(ctx, true, ""); err != nil {
			return err
		}
		w.setLatency(o.Latency)
		// A fresh daemon for the profile: the steps only.
		w.stop()
		if err := w.start(ctx, false, r.profile("daemon-limit-off")); err != nil {
			return err
		}
		stopSelf, err := r.profileSelf("bench-limit-off")
		if err != nil {
			return err
		}
		res := RateResult{Title: fmt.Sprintf("end to end, limit off (sandbox and client): %d companies, sandbox latency %s, same mix", o.Companies, o.Latency)}
		conns0, h20 := w.rec.conns.Load(), w.rec.h2.Load()
		cycles := map[int64]*cycle{}
		for _, rate := range o.OffRates {
			r.logf("e2e limit off: offering %.0f changes/s for %s", rate, o.Step)
			s, err := r.step(ctx, w, rate, o.Step, cycles)
			if err != nil {
				return err
			}
			r.logf("  %s", s)
			res.Steps = append(res.Steps, s)
			if s.Pass && rate > res.Sustained {
				res.Sustained, res.Best = rate, s
			}
			if !s.Pass {
				break
			}
		}
		stopSelf()
		res.Conns, res.HTTP2 = w.rec.conns.Load()-conns0, w.rec.h2.Load()-h20
		rep.Off = &res
		fmt.Fprintf(out, "%s\n\n", res)
		d, err := r.drain(ctx, w, cycles, o.OffDrainChanges, "daemon-off-drain")
		if err != nil {
			return fmt.Errorf("limit-off drain: %w", err)
		}
		d.Title = "drain with the limit off (the daemon alone bounds it; the load generator idle)"
		rep.OffDrain = d
		fmt.Fprintf(out, "%s\n\n", d)
		w.stop()
	}
	return nil
}

// MemoryResult is the daemon's peak RSS under load for several company counts, and during one
// large transaction.
type MemoryResult struct {
	Runs []MemoryRun
	// BigTxn: rows, peak RSS (kB) and RSS before it, time to handle it.
	BigTxnRows           int
	BigTxnHWM, BigTxnRSS int64
	BigTxnTime           time.Duration
	BigTxnCPU            cpuShare
}

// MemoryRun is one company count's peak RSS.
type MemoryRun struct {
	Companies int
	Rate      float64
	Changes   int
	HWMKB     int64
	// SameLoad: the run offered the smallest run's total rate, not 80 % of each company's.
	SameLoad bool
}

func (m MemoryResult) String() string {
	var b strings.Builder
	b.WriteString("memory (the daemon process's VmHWM, fresh process per run, load at 80 % of each company's limit):\n")
	var lo, hi, same *MemoryRun
	for i, r := range m.Runs {
		load := ""
		if r.SameLoad {
			load = " (the smallest run's total load)"
		}
		fmt.Fprintf(&b, "  %4d companies, %6.1f changes/s, %6d changes: peak RSS %6.1f MiB%s\n", r.Companies, r.Rate, r.Changes, float64(r.HWMKB)/1024, load)
		switch {
		case r.SameLoad:
			same = &m.Runs[i]
		case lo == nil || r.Companies < lo.Companies:
			lo = &m.Runs[i]
		}
		if !r.SameLoad && (hi == nil || r.Companies > hi.Companies) {
			hi = &m.Runs[i]
		}
	}
	if lo != nil && hi != nil && lo != hi {
		fmt.Fprintf(&b, "  %d → %d companies, each at 80 %% of its limit (%.0f× the traffic): peak RSS %+.0f %% (target within 20 %%)\n",
			lo.Companies, hi.Companies, hi.Rate/lo.Rate, 100*(float64(hi.HWMKB)/float64(lo.HWMKB)-1))
	}
	if lo != nil && same != nil {
		fmt.Fprintf(&b, "  %d → %d companies at the same total traffic: peak RSS %+.0f %%\n", lo.Companies, same.Companies, 100*(float64(same.HWMKB)/float64(lo.HWMKB)-1))
	}
	if m.BigTxnRows > 0 {
		fmt.Fprintf(&b, "  one transaction of %d customers rows (company not connected): RSS %.1f MiB before, peak %.1f MiB; handled in %.1f s (%.0f changes/s; CPU: %s)",
			m.BigTxnRows, float64(m.BigTxnRSS)/1024, float64(m.BigTxnHWM)/1024, m.BigTxnTime.Seconds(), float64(m.BigTxnRows)/m.BigTxnTime.Seconds(), m.BigTxnCPU)
	}
	return b.String()
}

// memoryRun restarts the world's daemon (a fresh VmHWM), offers perCompany changes a second per
// company for MemoryStep, and records the peak RSS.
func (r *runner) memoryRun(ctx context.Context, w *world, perCompany float64, m *MemoryResult) error {
	w.stop()
	if err := w.start(ctx, false, ""); err != nil {
		return err
	}
	n := len(w.companies)
	rate := perCompany * float64(n)
	total := max(int(rate*r.opts.MemoryStep.Seconds()), 1)
	r.logf("memory: %d companies, %.1f changes/s, %d changes", n, rate, total)
	if _, err := w.run(ctx, rate, total, map[int64]*cycle{}); err != nil {
		return err
	}
	if err := w.caughtUp(ctx, max(3*r.opts.MemoryStep, 2*time.Minute)); err != nil {
		return err
	}
	ps, err := readProc(w.child.cmd.Process.Pid)
	if err != nil {
		return err
	}
	m.Runs = append(m.Runs, MemoryRun{Companies: n, Rate: rate, Changes: total, HWMKB: ps.HWMKB})
	r.logf("  peak RSS %.1f MiB", float64(ps.HWMKB)/1024)
	return nil
}

// bigTxn commits one transaction of BigTxnRows customers of a company that is not connected
// (so no Sage call bounds it) and watches the daemon's RSS while it handles it.
func (r *runner) bigTxn(ctx context.Context, m *MemoryResult) error {
	rows := r.opts.BigTxnRows
	w, err := r.newWorld(ctx, "bench_bigtxn", 1, 0, 0)
	if err != nil {
		return err
	}
	defer w.close()
	if err := w.start(ctx, false, r.profile("daemon-bigtxn")); err != nil {
		return err
	}
	pid := w.child.cmd.Process.Pid
	ps, err := readProc(pid)
	if err != nil {
		return err
	}
	m.BigTxnRows, m.BigTxnRSS = rows, ps.RSSKB
	db, err := pgx.Connect(ctx, w.url)
	if err != nil {
		return err
	}
	defer db.Close(ctx)
	r.logf("memory: one transaction of %d rows", rows)
	if _, err := db.Exec(ctx, `INSERT INTO customers (id, company_id, account_ref, title, first_name, last_name, email, address_line1, town, postcode, notes)
		SELECT g, 1, 'BIG' || g, 'Mr', 'John', 'Big ' || g, 'big' || g || '@example.co.uk', '1 High Street', 'York', 'YO1 7HH', 'Side gate code 1234. Dog friendly.'
		FROM generate_series(1, $1::bigint) g`, rows); err != nil {
		return err
	}
	meter := r.meter(pid)
	start := time.Now()
	if err := w.caughtUp(ctx, 60*time.Minute); err != nil {
		return err
	}
	m.BigTxnTime = time.Since(start)
	m.BigTxnCPU = meter.read()
	ps, err = readProc(pid)
	if err != nil {
		return err
	}
	m.BigTxnHWM = ps.HWMKB
	return nil
}

// CatchupResult is the time to lag 0 after an hour's traffic with the daemon stopped.
type CatchupResult struct {
	// Title, when set, replaces the catch-up's own description (the limit-off drain).
	Title        string
	Changes      int
	Companies    int
	Generate     time.Duration
	FromStart    time.Duration // daemon process start to lag 0
	FromStreamin time.Duration // replication connected to lag 0
	Calls        int
	CPU          cpuShare
	// Statements lists the statements PostgreSQL ran (--statements), or "".
	Statements string
}

func (c CatchupResult) String() string {
	if c.Title != "" {
		return fmt.Sprintf("%s: %d changes over %d companies committed in %.1f s with the daemon stopped\n  lag 0 after %.1f s from daemon start (%.1f s from streaming): %.0f changes/s, %d Sage calls; CPU: %s; gessync CPU per change %.2f ms",
			c.Title, c.Changes, c.Companies, c.Generate.Seconds(), c.FromStart.Seconds(), c.FromStreamin.Seconds(), float64(c.Changes)/c.FromStreamin.Seconds(), c.Calls, c.CPU,
			1000*c.CPU.Daemon*c.FromStart.Seconds()/float64(max(c.Changes, 1))) + c.Statements
	}
	return fmt.Sprintf("catch-up: an hour's traffic = %d changes over %d companies (the throughput mix), committed in %.1f s with the daemon stopped\n  lag 0 after %.1f s from daemon start (%.1f s from streaming): %.1f changes/s, %d Sage calls; CPU: %s",
		c.Changes, c.Companies, c.Generate.Seconds(), c.FromStart.Seconds(), c.FromStreamin.Seconds(), float64(c.Changes)/c.FromStart.Seconds(), c.Calls, c.CPU)
}

func (r *runner) catchup(ctx context.Context, w *world, cycles map[int64]*cycle) (*CatchupResult, error) {
	return r.drain(ctx, w, cycles, r.opts.HourlyChanges, "daemon-catchup")
}

// drain commits n changes of the mix with the daemon stopped, then starts it and times it to
// lag 0: with the limit off, nothing but gessync, PostgreSQL and the sandbox's latency bound
// how fast it goes, and the load generator is idle meanwhile.
func (r *runner) drain(ctx context.Context, w *world, cycles map[int64]*cycle, n int, profile string) (*CatchupResult, error) {
	res := &CatchupResult{Changes: n, Companies: len(w.companies)}
	if err := w.caughtUp(ctx, 10*time.Minute); err != nil {
		return nil, err
	}
	w.stop()
	r.logf("catch-up: %d changes with the daemon stopped", res.Changes)
	lr, err := w.run(ctx, 0, res.Changes, cycles)
	if err != nil {
		return nil, err
	}
	res.Generate = lr.Elapsed
	before, _ := w.rec.snapshot()
	if err := r.resetStatements(ctx); err != nil {
		return nil, err
	}
	start := time.Now()
	if err := w.start(ctx, false, r.profile(profile)); err != nil {
		return nil, err
	}
	streaming := time.Now()
	m := r.meter(w.child.cmd.Process.Pid)
	if err := w.caughtUp(ctx, 60*time.Minute); err != nil {
		return nil, err
	}
	res.CPU = m.read()
	res.FromStart, res.FromStreamin = time.Since(start), time.Since(streaming)
	after, _ := w.rec.snapshot()
	_, res.Calls = diffCalls(before, after)
	if _, missing := w.latencies(lr.Markers); missing > 0 {
		return nil, fmt.Errorf("%d changes never reached Sage", missing)
	}
	if res.Statements, err = r.statements(ctx, n); err != nil {
		return nil, err
	}
	return res, nil
}

// resetStatements empties pg_stat_statements (with --statements).
func (r *runner) resetStatements(ctx context.Context) error {
	if !r.opts.Statements {
		return nil
	}
	conn, err := pgx.Connect(ctx, r.pg.URL("postgres"))
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, `CREATE EXTENSION IF NOT EXISTS pg_stat_statements; SELECT pg_stat_statements_reset()`)
	return err
}

// statements lists, with --statements, what PostgreSQL ran since resetStatements other than
// the bench's own load and probes: calls and execution time per one of the n changes, busiest
// first.
func (r *runner) statements(ctx context.Context, n int) (string, error) {
	if !r.opts.Statements {
		return "", nil
	}
	conn, err := pgx.Connect(ctx, r.pg.URL("postgres"))
	if err != nil {
		return "", err
	}
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, `SELECT calls, total_exec_time, regexp_replace(left(query, 110), '\s+', ' ', 'g')
		FROM pg_stat_statements WHERE calls >= $1 / 20 AND query !~* 'pg_stat_statements' ORDER BY calls DESC LIMIT 25`, n)
	if err != nil {
		return "", err
	}
	defer rows.Close()
	var b strings.Builder
	var calls, ms float64
	for rows.Next() {
		var c int64
		var t float64
		var q string
		if err := rows.Scan(&c, &t, &q); err != nil {
			return "", err
		}
		calls += float64(c)
		ms += t
		fmt.Fprintf(&b, "    %5.2f/change %6.1f µs each  %s\n", float64(c)/float64(n), 1000*t/float64(c), q)
	}
	return fmt.Sprintf("  statements: %.2f a change, %.0f µs of execution a change\n%s", calls/float64(n), 1000*ms/float64(n), b.String()), rows.Err()
}
