package bench

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"

	"github.com/gessync/gessync/daemon"
	"github.com/gessync/gessync/ges"
	"github.com/gessync/gessync/sink/sagetest"
)

// markerRE finds the change markers the load generator writes into fields Sage sees:
// customers.notes "bmc<seq>", invoices.notes "bmi<seq>", payments.reference "bmp<seq>".
var markerRE = regexp.MustCompile(`bm[cip][0-9]+`)

// recorder sits in front of the sandbox: it counts calls by method and resource, and stamps the
// time each write carrying a change marker was answered (the Sage acknowledgement).
type recorder struct {
	sb *sagetest.Sandbox

	mu        sync.Mutex
	calls     map[string]int
	acks      map[string]time.Time
	throttled int
	conns     atomic.Int64 // TCP connections accepted
	h2        atomic.Int64 // calls that came over HTTP/2
}

func newRecorder(sb *sagetest.Sandbox) *recorder {
	return &recorder{sb: sb, calls: map[string]int{}, acks: map[string]time.Time{}}
}

type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) { w.status = code; w.ResponseWriter.WriteHeader(code) }

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (rc *recorder) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.ProtoMajor == 2 {
		rc.h2.Add(1)
	}
	if !strings.HasPrefix(r.URL.Path, "/v3.1/") {
		rc.sb.ServeHTTP(w, r)
		return
	}
	var body []byte
	if r.Body != nil && r.Method != http.MethodGet {
		body, _ = io.ReadAll(r.Body)
		r.Body = io.NopCloser(bytes.NewReader(body))
	}
	sw := &statusWriter{ResponseWriter: w, status: http.StatusOK}
	rc.sb.ServeHTTP(sw, r)
	now := time.Now()
	key := r.Method + " " + resource(r.URL.Path)
	var marks [][]byte
	if sw.status < 300 && len(body) > 0 {
		marks = markerRE.FindAll(body, -1)
	}
	rc.mu.Lock()
	rc.calls[key]++
	if sw.status == http.StatusTooManyRequests {
		rc.throttled++
	}
	for _, m := range marks {
		rc.acks[string(m)] = now
	}
	rc.mu.Unlock()
}

// resource turns /v3.1/sales_invoices/abc/release into "/sales_invoices/{id}/release".
func resource(p string) string {
	parts := strings.Split(strings.TrimPrefix(p, "/v3.1"), "/")
	for i := 2; i < len(parts); i += 2 {
		parts[i] = "{id}"
	}
	return strings.Join(parts, "/")
}

// snapshot returns the call counts so far and their total.
func (rc *recorder) snapshot() (map[string]int, int) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	out := make(map[string]int, len(rc.calls))
	n := 0
	for k, v := range rc.calls {
		out[k] = v
		n += v
	}
	return out, n
}

func (rc *recorder) ack(marker string) (time.Time, bool) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	t, ok := rc.acks[marker]
	return t, ok
}

// diffCalls is after − before, for the calls made during one phase.
func diffCalls(before, after map[string]int) (map[string]int, int) {
	out := map[string]int{}
	n := 0
	for k, v := range after {
		if d := v - before[k]; d > 0 {
			out[k] = d
			n += d
		}
	}
	return out, n
}

func formatCalls(m map[string]int) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for i, k := range keys {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%s %d", k, m[k])
	}
	return b.String()
}

// world is one GES database, its sandbox (behind a recorder) and a bench daemon.
type world struct {
	r         *runner
	name      string
	url       string
	companies []childCompany
	sandbox   *sagetest.Sandbox
	rec       *recorder
	srv       *http.Server
	// cert is the sandbox's certificate (PEM) with --tls, for the daemon's SSL_CERT_FILE.
	cert      string
	base      string
	rpm       int
	child     *child
	nextID    atomic.Int64
	seq       atomic.Int64
	commitsMu sync.Mutex
	commits   map[string]time.Time // marker → commit time
	records   map[string]string    // marker → the record it changed
	stateURL  string               // the daemon's state database when not the GES one
}

// newWorld creates database name with the GES schema and n companies, a sandbox with one
// business per company (rate limit: sandboxLimit requests a minute, negative off), and remembers
// the client limit rpm for the daemon.
func (r *runner) newWorld(ctx context.Context, name string, n, sandboxLimit, rpm int) (*world, error) {
	if err := r.pg.CreateDatabase(ctx, name, ges.Schema); err != nil {
		return nil, err
	}
	w := &world{r: r, name: name, url: r.pg.URL(name), rpm: rpm, commits: map[string]time.Time{}, records: map[string]string{}}
	if r.opts.SeparateState {
		if err := r.pg.CreateDatabase(ctx, name+"_state", ""); err != nil {
			return nil, err
		}
		w.stateURL = r.pg.URL(name + "_state")
	}
	w.nextID.Store(1000)
	db, err := pgx.Connect(ctx, w.url)
	if err != nil {
		return nil, err
	}
	defer db.Close(ctx)
	if _, err := db.Exec(ctx, `INSERT INTO companies (id, name) SELECT g, 'Bench Heating '||g FROM generate_series(1, $1::int) g`, n); err != nil {
		return nil, err
	}
	if _, err := db.Exec(ctx, `CREATE PUBLICATION gessync FOR TABLE customers, invoices, payments`); err != nil {
		return nil, err
	}
	w.sandbox = sagetest.New(sagetest.Options{RateLimit: sandboxLimit, ValidateEvery: r.opts.ValidateEvery})
	for i := 1; i <= n; i++ {
		b := w.sandbox.CreateBusiness(fmt.Sprintf("Bench Heating %d", i), "standard")
		w.companies = append(w.companies, childCompany{CompanyID: int64(i), BusinessID: b.ID})
	}
	w.rec = newRecorder(w.sandbox)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	w.srv = &http.Server{Handler: w.rec, ReadHeaderTimeout: 10 * time.Second,
		ConnState: func(_ net.Conn, s http.ConnState) {
			if s == http.StateNew {
				w.rec.conns.Add(1)
			}
		}}
	if !r.opts.TLS {
		go w.srv.Serve(ln) //nolint:errcheck
		w.base = "http://" + ln.Addr().String()
		return w, nil
	}
	w.cert = filepath.Join(r.dir, name+"-sandbox.pem")
	cert, err := sandboxCert(w.cert)
	if err != nil {
		return nil, err
	}
	w.srv.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	go w.srv.ServeTLS(ln, "", "") //nolint:errcheck
	w.base = "https://" + ln.Addr().String()
	return w, nil
}

// close stops the world's daemon and sandbox and drops its databases, so that what a part
// left behind (a million rows, say) is not vacuumed while a later part is measured.
func (w *world) close() {
	w.stop()
	if w.srv != nil {
		_ = w.srv.Close()
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, db := range []string{w.name, w.name + "_state"} {
		if err := w.r.pg.DropDatabase(ctx, db); err != nil {
			w.r.logf("%v", err)
		}
	}
}

func (w *world) setLatency(d time.Duration) {
	w.sandbox.SetFaults(sagetest.Faults{FaultSet: sagetest.FaultSet{Latency: sagetest.Duration(d)}})
}

// child is a running bench daemon process.
type child struct {
	cmd  *exec.Cmd
	addr string
	done chan struct{}
	err  error
}

// start runs a bench daemon for the world (connecting its companies when connect is set) and
// waits until it streams.
func (w *world) start(ctx context.Context, connect bool, profile string) error {
	cfg := childConfig{GESURL: w.url, StateURL: w.stateURL, Slot: w.name, Publication: "gessync", SageBase: w.base,
		RequestsPerMinute: w.rpm, LogFile: filepath.Join(w.r.dir, w.name+".log"), CPUProfile: profile}
	if connect {
		cfg.Connect = w.companies
	}
	raw, _ := json.Marshal(cfg)
	cmd := exec.Command(w.r.exe, w.r.opts.ChildArgs...)
	cmd.Env = append(os.Environ(), ChildEnv+"="+string(raw))
	if w.cert != "" {
		cmd.Env = append(cmd.Env, "SSL_CERT_FILE="+w.cert)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	errf, err := os.OpenFile(filepath.Join(w.r.dir, w.name+".stderr"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	defer errf.Close()
	cmd.Stderr = errf
	out, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return err
	}
	c := &child{cmd: cmd, done: make(chan struct{})}
	ready := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if a, ok := strings.CutPrefix(sc.Text(), "READY "); ok {
				ready <- a
			}
		}
	}()
	go func() { c.err = cmd.Wait(); close(c.done) }()
	w.child = c
	select {
	case c.addr = <-ready:
	case <-c.done:
		return fmt.Errorf("bench daemon exited during start-up (%v); see %s", c.err, filepath.Join(w.r.dir, w.name+".stderr"))
	case <-time.After(10 * time.Minute):
		w.stop()
		return errors.New("bench daemon not ready within 10 min")
	case <-ctx.Done():
		w.stop()
		return ctx.Err()
	}
	return w.waitFor(ctx, 60*time.Second, "replication connected", func(st daemon.Status) bool { return st.ReplicationConnected })
}

// stop ends the daemon with SIGTERM (SIGKILL after 20 s).
func (w *world) stop() {
	c := w.child
	if c == nil {
		return
	}
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.done:
	case <-time.After(20 * time.Second):
		_ = c.cmd.Process.Kill()
		<-c.done
	}
	w.child = nil
}

func (w *world) status(ctx context.Context) (daemon.Status, error) {
	var st daemon.Status
	return st, w.getJSON(ctx, "/status", &st, http.StatusOK)
}

// lag is the daemon's lag_seconds as GET /readyz reports it: what an operator's probe reads,
// and far cheaper for the daemon to answer than /status (which reads every company's state).
func (w *world) lag(ctx context.Context) (float64, error) {
	var r daemon.Readiness // 503 when not ready still carries it
	err := w.getJSON(ctx, "/readyz", &r, http.StatusOK, http.StatusServiceUnavailable)
	return r.LagSeconds, err
}

// getJSON GETs path from the running daemon within 5 s and decodes its JSON answer into v,
// when the answer's status is one of ok.
func (w *world) getJSON(ctx context.Context, path string, v any, ok ...int) error {
	if w.child == nil {
		return errors.New("no daemon")
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+w.child.addr+path, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if !slices.Contains(ok, resp.StatusCode) {
		b, _ := io.ReadAll(resp.Body)
		return fmt.Errorf("%s: %s: %s", path, resp.Status, b)
	}
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		return fmt.Errorf("%s: %s: %w", path, resp.Status, err)
	}
	return nil
}

// waitFor polls the daemon's status every 100 ms until cond holds, for at most limit.
func (w *world) waitFor(ctx context.Context, limit time.Duration, what string, cond func(daemon.Status) bool) error {
	deadline := time.Now().Add(limit)
	for {
		st, err := w.status(ctx)
		if err == nil && cond(st) {
			return nil
		}
		if w.child != nil {
			select {
			case <-w.child.done:
				return fmt.Errorf("bench daemon exited (%v) while waiting for %s", w.child.err, what)
			default:
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out after %s waiting for %s (last status err %v, lag %.1fs, pending %d)", limit, what, err, st.LagSeconds, st.PendingTransactions)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (w *world) walLSN(ctx context.Context) (pglogrepl.LSN, error) {
	db, err := pgx.Connect(ctx, w.url)
	if err != nil {
		return 0, err
	}
	defer db.Close(ctx)
	var lsn pglogrepl.LSN
	err = db.QueryRow(ctx, `SELECT pg_current_wal_lsn()`).Scan(&lsn)
	return lsn, err
}

// caughtUp waits until the daemon has handled everything committed so far.
func (w *world) caughtUp(ctx context.Context, limit time.Duration) error {
	target, err := w.walLSN(ctx)
	if err != nil {
		return err
	}
	return w.waitFor(ctx, limit, "caught up to "+target.String(), func(st daemon.Status) bool {
		cp, _ := pglogrepl.ParseLSN(st.CheckpointLSN)
		return cp >= target && st.PendingTransactions == 0
	})
}

// procStats reads a process's resident set (current and peak, kB) and CPU time.
type procStats struct {
	RSSKB, HWMKB int64
	CPU          time.Duration
}

func readProc(pid int) (procStats, error) {
	var ps procStats
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return ps, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		switch f[0] {
		case "VmRSS:":
			ps.RSSKB, _ = strconv.ParseInt(f[1], 10, 64)
		case "VmHWM:":
			ps.HWMKB, _ = strconv.ParseInt(f[1], 10, 64)
		}
	}
	ps.CPU, err = procCPU(pid)
	return ps, err
}

// procCPU is utime+stime of pid (clock ticks of 10 ms on Linux).
func procCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, errors.New("bad /proc stat")
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return 0, errors.New("bad /proc stat")
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * 10 * time.Millisecond, nil
}

// pgCPU is the CPU time of the PostgreSQL server: the postmaster and its children (backends
// are their own process group leaders, so they are found by parent).
func (r *runner) pgCPU() time.Duration {
	b, err := os.ReadFile(filepath.Join(r.pg.Dir, "data", "postmaster.pid"))
	if err != nil {
		return 0
	}
	pm, _ := strconv.Atoi(strings.SplitN(string(b), "\n", 2)[0])
	total, _ := procCPU(pm)
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == pm {
			continue
		}
		st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		s := string(st)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(s[i+1:])
		if len(f) < 2 || f[1] != strconv.Itoa(pm) {
			continue
		}
		if c, err := procCPU(pid); err == nil {
			total += c
		}
	}
	return total
}

// selfCPU is this process's CPU time (the sandbox and the load generator).
func selfCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// cpuMeter measures CPU used by the daemon, PostgreSQL and this process over an interval.
type cpuMeter struct {
	r                   *runner
	pid                 int
	t0                  time.Time
	daemon0, pg0, self0 time.Duration
}

func (r *runner) meter(pid int) *cpuMeter {
	m := &cpuMeter{r: r, pid: pid, t0: time.Now(), pg0: r.pgCPU(), self0: selfCPU()}
	if pid > 0 {
		m.daemon0, _ = procCPU(pid)
	}
	return m
}

// cpuShare is CPU used per second of wall time (1.0 = one core), by whom.
type cpuShare struct{ Daemon, Postgres, Bench float64 }

func (m *cpuMeter) read() cpuShare {
	el := time.Since(m.t0).Seconds()
	var d time.Duration
	if m.pid > 0 {
		d, _ = procCPU(m.pid)
	}
	return cpuShare{
		Daemon:   (d - m.daemon0).Seconds() / el,
		Postgres: (m.r.pgCPU() - m.pg0).Seconds() / el,
		Bench:    (selfCPU() - m.self0).Seconds() / el,
	}
}

func (c cpuShare) String() string {
	return fmt.Sprintf("gessync %.2f, postgres %.2f, sandbox+load %.2f cores", c.Daemon, c.Postgres, c.Bench)
}
