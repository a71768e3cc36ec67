package e2e_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/cookiejar"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/gessync/gessync/daemon"
	"github.com/gessync/gessync/ges"
	"github.com/gessync/gessync/internal/pglocal"
	"github.com/gessync/gessync/sink/sagetest"
)

var (
	pg     *pglocal.Server
	binary string
	dbSeq  atomic.Int64
)

func TestMain(m *testing.M) {
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	ctx := context.Background()
	var err error
	pg, err = pglocal.Start(ctx, pglocal.Options{})
	if err != nil {
		// Integration tests always run: a missing PostgreSQL fails the run, never skips it.
		fmt.Fprintln(os.Stderr, "e2e: cannot start PostgreSQL:", err)
		return 1
	}
	defer pg.Remove()
	dir, err := os.MkdirTemp("", "gessync-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	binary = filepath.Join(dir, "gessync")
	out, err := exec.Command("go", "build", "-o", binary, "../cmd/gessync").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "e2e: building gessync: %v\n%s", err, out)
		return 1
	}
	return m.Run()
}

// env is one test's world: its own GES database, its own sandbox, its daemon.
type env struct {
	t       *testing.T
	dbName  string
	gesURL  string
	db      *pgx.Conn
	sandbox *sagetest.Server
	proxy   *httpProxy
	// daemonMu guards daemon: a proxy hook may kill the daemon from the proxy's goroutine.
	daemonMu sync.Mutex
	daemon   *proc
	// logs collects the output of every daemon the test starts (one writer, so that a
	// stopped daemon's last output and the next one's never race).
	logs *lockedWriter
}

// proc is the running daemon, or nil.
func (e *env) proc() *proc {
	e.daemonMu.Lock()
	defer e.daemonMu.Unlock()
	return e.daemon
}

func (e *env) setProc(p *proc) {
	e.daemonMu.Lock()
	defer e.daemonMu.Unlock()
	e.daemon = p
}

func newEnv(t *testing.T) *env {
	t.Helper()
	return newEnvWith(t, sagetest.Options{})
}

// newEnvWith is newEnv with a sandbox built from opts.
func newEnvWith(t *testing.T, opts sagetest.Options) *env {
	t.Helper()
	ctx := context.Background()
	name := fmt.Sprintf("ges_%d", dbSeq.Add(1))
	require.NoError(t, pg.CreateDatabase(ctx, name, ges.Schema))
	e := &env{t: t, dbName: name, gesURL: pg.URL(name), logs: &lockedWriter{w: &bytes.Buffer{}}}
	var err error
	e.db, err = pgx.Connect(ctx, e.gesURL)
	require.NoError(t, err)
	// Every request gessync sends, and every answer the sandbox gives, must follow Sage's spec
	// (money as strings in answers aside): a violation fails the test.
	var specMu sync.Mutex
	var violations []string
	opts.InvalidRequest = func(r *http.Request, problems string) {
		specMu.Lock()
		violations = append(violations, fmt.Sprintf("request %s %s: %s", r.Method, r.URL.Path, problems))
		specMu.Unlock()
	}
	opts.InvalidResponse = func(r *http.Request, err error) {
		specMu.Lock()
		violations = append(violations, fmt.Sprintf("response to %s %s: %v", r.Method, r.URL.Path, err))
		specMu.Unlock()
	}
	t.Cleanup(func() {
		specMu.Lock()
		defer specMu.Unlock()
		if len(violations) > 0 {
			t.Errorf("%d exchanges broke the Sage spec, first: %s", len(violations), violations[0])
		}
	})
	e.sandbox = sagetest.NewServer(opts)
	e.proxy = newProxy(t, e.sandbox)
	t.Cleanup(func() {
		e.stop()
		e.proxy.Close()
		e.sandbox.Close()
		// Slots are cluster-wide and limited: drop this test's (the shared server outlives it).
		e.dropSlots()
		e.db.Close(context.Background())
		if t.Failed() {
			t.Logf("daemon logs:\n%s", e.logs.String())
		}
	})
	e.exec(`INSERT INTO companies (id, name) VALUES (1, 'Hartley Heating'), (2, 'Pennine Boilers')`)
	return e
}

// newSyncedSample is newEnv with the daemon running, company 1 connected, and the sample
// customer, issued invoice and part payment (customerSQL, invoiceSQL, paymentSQL) in Sage.
func newSyncedSample(t *testing.T) *env {
	t.Helper()
	e := newEnv(t)
	e.start()
	e.connect(1)
	e.exec(customerSQL)
	e.exec(invoiceSQL)
	e.exec(paymentSQL)
	e.caughtUp()
	return e
}

// dropSlots drops every replication slot of the env's database once no one streams from it.
func (e *env) dropSlots() {
	ctx := context.Background()
	c, err := pgx.Connect(ctx, pg.URL(e.dbName))
	if err != nil {
		return
	}
	defer c.Close(ctx)
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		var left int
		if err := c.QueryRow(ctx, `SELECT count(*) FROM pg_replication_slots WHERE database = current_database()`).Scan(&left); err != nil || left == 0 {
			return
		}
		_, _ = c.Exec(ctx, `SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = current_database() AND NOT active`)
		time.Sleep(50 * time.Millisecond)
	}
}

func (e *env) exec(sql string, args ...any) {
	e.t.Helper()
	_, err := e.db.Exec(context.Background(), sql, args...)
	require.NoError(e.t, err, sql)
}

func (e *env) walLSN() pglogrepl.LSN {
	e.t.Helper()
	var lsn pglogrepl.LSN
	require.NoError(e.t, e.db.QueryRow(context.Background(), `SELECT pg_current_wal_lsn()`).Scan(&lsn))
	return lsn
}

func (e *env) slotFlush() pglogrepl.LSN {
	e.t.Helper()
	var lsn pglogrepl.LSN
	require.NoError(e.t, e.db.QueryRow(context.Background(), `SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = $1`, e.dbName).Scan(&lsn))
	return lsn
}

// proc is a running gessync process.
type proc struct {
	cmd  *exec.Cmd
	addr string
	done chan struct{}
}

// start runs `gessync run` against the env's database and sandbox (through the proxy), with
// extra environment settings ("NAME=value"), and waits for it to stream.
func (e *env) start(extra ...string) {
	e.t.Helper()
	addr := e.launch(extra...)
	e.eventually(20*time.Second, "daemon serves /healthz", func() bool {
		resp, err := http.Get("http://" + addr + "/healthz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
	e.eventually(20*time.Second, "replication connected", func() bool {
		st, ok := e.tryStatus()
		return ok && st.ReplicationConnected
	})
}

// launch starts `gessync run` against the env's database and sandbox (through the proxy), with
// extra environment settings ("NAME=value"), and returns its HTTP address without waiting.
func (e *env) launch(extra ...string) string {
	e.t.Helper()
	addr := freeAddr(e.t)
	cmd := exec.Command(binary, "run")
	cmd.Env = append(os.Environ(),
		"GES_DATABASE_URL="+e.gesURL,
		"SAGE_API_URL="+e.proxy.URL+"/v3.1",
		"SAGE_AUTH_URL="+e.proxy.URL+"/oauth2/auth/central",
		"SAGE_TOKEN_URL="+e.proxy.URL+"/token",
		"SAGE_CLIENT_ID=gessync-test",
		"SAGE_CLIENT_SECRET=test-secret-0123456789",
		"GESSYNC_HTTP_ADDR="+addr,
		"GESSYNC_SLOT="+e.dbName, // slots are cluster-wide; every test has its own database
		"GESSYNC_PUBLICATION=gessync",
		"GESSYNC_STATUS_INTERVAL=200ms",
		"GESSYNC_TOKEN_KEY=MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
	)
	cmd.Env = append(cmd.Env, extra...)
	cmd.Stdout, cmd.Stderr = e.logs, e.logs
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	require.NoError(e.t, cmd.Start())
	p := &proc{cmd: cmd, addr: addr, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(p.done) }()
	e.setProc(p)
	return addr
}

// killWhenSageCreates runs do, kills the daemon the moment Sage has answered 201 to the first
// POST on a path ending in suffix (its reply dropped: Sage holds a record the daemon never
// heard of), waits until the daemon is down, and removes the hook.
func (e *env) killWhenSageCreates(suffix string, do func()) {
	e.t.Helper()
	var fired atomic.Bool
	hook := func(r *http.Request, status int) bool {
		if r.Method == http.MethodPost && strings.HasSuffix(r.URL.Path, suffix) && status == http.StatusCreated && fired.CompareAndSwap(false, true) {
			e.kill()
			return false
		}
		return true
	}
	e.proxy.afterWrite.Store(&hook)
	do()
	e.eventually(30*time.Second, "daemon killed after Sage created a record at "+suffix, func() bool { return fired.Load() && e.proc() == nil })
	e.proxy.afterWrite.Store(nil)
}

// kill stops the daemon with SIGKILL, as a crash would.
func (e *env) kill() {
	p := e.proc()
	if p == nil {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
	e.setProc(nil)
}

func (e *env) stop() {
	p := e.proc()
	if p == nil {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(15 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
	e.setProc(nil)
}

func (e *env) base() string { return "http://" + e.proc().addr }

// connectAs connects company to a new sandbox business shaped by sandbox-only authorize
// parameters, e.g. "tier=start".
func (e *env) connectAs(company int, sandboxParams string) {
	e.t.Helper()
	e.proxy.authorizeExtra.Store(&sandboxParams)
	e.connect(company)
}

// connect walks the OAuth flow for company, as `curl -sSL /connect/sage?company_id=N` does.
func (e *env) connect(company int) {
	e.t.Helper()
	status, body, err := e.tryConnect(company)
	require.NoError(e.t, err)
	require.Equal(e.t, 200, status, body)
	require.Contains(e.t, body, "Connected to Sage")
}

// tryConnect walks the OAuth flow once and returns the final status and page.
func (e *env) tryConnect(company int) (int, string, error) {
	jar, _ := cookiejar.New(nil) // the callback checks the cookie /connect/sage set
	resp, err := (&http.Client{Jar: jar}).Get(fmt.Sprintf("%s/connect/sage?company_id=%d", e.base(), company))
	if err != nil {
		return 0, "", err
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp.StatusCode, string(body), nil
}

func (e *env) tryStatus() (daemon.Status, bool) {
	var st daemon.Status
	if e.proc() == nil {
		return st, false
	}
	resp, err := http.Get(e.base() + "/status")
	if err != nil {
		return st, false
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return st, false
	}
	return st, json.NewDecoder(resp.Body).Decode(&st) == nil
}

func (e *env) status() daemon.Status {
	e.t.Helper()
	st, ok := e.tryStatus()
	require.True(e.t, ok, "GET /status")
	return st
}

// caughtUp waits until every change committed so far is handled: the checkpoint has reached
// the WAL position read now, and nothing is pending.
func (e *env) caughtUp() daemon.Status {
	e.t.Helper()
	return e.caughtUpWithin(60 * time.Second)
}

// caughtUpWithin is caughtUp with another bound.
func (e *env) caughtUpWithin(limit time.Duration) daemon.Status {
	e.t.Helper()
	target := e.walLSN()
	var st daemon.Status
	e.eventually(limit, "daemon caught up to "+target.String(), func() bool {
		var ok bool
		st, ok = e.tryStatus()
		if !ok {
			return false
		}
		cp, _ := pglogrepl.ParseLSN(st.CheckpointLSN)
		return cp >= target && st.PendingTransactions == 0
	})
	return st
}

// eventually polls cond until it holds or the limit passes. It waits on an observable
// condition, not a fixed time.
func (e *env) eventually(limit time.Duration, what string, cond func() bool) {
	e.t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			e.t.Fatalf("timed out after %s waiting for: %s", limit, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// business returns the dump of the one business the sandbox holds for company's connection
// (the nth business created, from 0).
func (e *env) business(n int) sagetest.BusinessDump {
	e.t.Helper()
	d := e.sandbox.Dump()
	require.Greater(e.t, len(d.Businesses), n, "sandbox businesses")
	return d.Businesses[n]
}

func (e *env) setFaults(body string) {
	e.t.Helper()
	req, _ := http.NewRequest(http.MethodPut, e.sandbox.URL+"/_sandbox/faults", strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(e.t, err)
	resp.Body.Close()
	require.Equal(e.t, 200, resp.StatusCode)
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	return l.Addr().String()
}

type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// String is what was written so far (the writer must be a fmt.Stringer, as a bytes.Buffer is).
func (l *lockedWriter) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.(fmt.Stringer).String()
}

// httpProxy sits between the daemon and the sandbox so a test can act at the moment Sage has
// committed a write (for example, kill the daemon before the reply reaches it).
type httpProxy struct {
	*http.Server
	URL string
	// afterWrite, when set, runs after the sandbox handled a POST/PUT/DELETE and before the
	// reply is sent back. It returns false to drop the reply (close the connection).
	afterWrite atomic.Pointer[func(r *http.Request, status int) bool]
	// beforeWrite, when set, runs before the sandbox sees a POST/PUT/DELETE (it may hold it).
	beforeWrite atomic.Pointer[func(r *http.Request)]
	// beforeRead, when set, runs before the sandbox sees a GET.
	beforeRead atomic.Pointer[func(r *http.Request)]
	requests   atomic.Int64
	callsMu    sync.Mutex
	calls      []string // API calls as "METHOD /path" with ids as {id}, since takeCalls
	// authorizeExtra is appended to the next authorize request's query (sandbox-only
	// parameters such as tier=start), then cleared.
	authorizeExtra atomic.Pointer[string]
}

func newProxy(t *testing.T, sb *sagetest.Server) *httpProxy {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	p := &httpProxy{URL: "http://" + l.Addr().String()}
	p.Server = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.requests.Add(1)
		if path, ok := strings.CutPrefix(r.URL.Path, "/v3.1/"); ok {
			segs := strings.Split(path, "/")
			for i, seg := range segs {
				if idRE.MatchString(seg) {
					segs[i] = "{id}"
				}
			}
			p.callsMu.Lock()
			p.calls = append(p.calls, r.Method+" /"+strings.Join(segs, "/"))
			p.callsMu.Unlock()
		}
		if strings.HasSuffix(r.URL.Path, "/oauth2/auth/central") {
			if extra := p.authorizeExtra.Swap(nil); extra != nil {
				r.URL.RawQuery += "&" + *extra
			}
		}
		if before := p.beforeWrite.Load(); before != nil && r.Method != http.MethodGet {
			(*before)(r)
		}
		if before := p.beforeRead.Load(); before != nil && r.Method == http.MethodGet {
			(*before)(r)
		}
		hook := p.afterWrite.Load()
		if hook == nil || r.Method == http.MethodGet {
			sb.Sandbox.ServeHTTP(w, r)
			return
		}
		rec := &recorder{header: http.Header{}, status: 200}
		sb.Sandbox.ServeHTTP(rec, r)
		if !(*hook)(r, rec.status) {
			if hj, ok := w.(http.Hijacker); ok {
				if c, _, err := hj.Hijack(); err == nil {
					c.Close()
				}
			}
			return
		}
		for k, v := range rec.header {
			w.Header()[k] = v
		}
		w.WriteHeader(rec.status)
		_, _ = w.Write(rec.body.Bytes())
	})}
	go p.Serve(l) //nolint:errcheck
	return p
}

// idRE matches the sandbox's record ids (32 hex digits) in a path.
var idRE = regexp.MustCompile(`^[0-9a-f]{32}$`)

// takeCalls returns the Sage API calls made since the last takeCalls, in order, and forgets them.
func (p *httpProxy) takeCalls() []string {
	p.callsMu.Lock()
	defer p.callsMu.Unlock()
	out := p.calls
	p.calls = nil
	return out
}

type recorder struct {
	header http.Header
	status int
	body   bytes.Buffer
}

func (r *recorder) Header() http.Header         { return r.header }
func (r *recorder) Write(b []byte) (int, error) { return r.body.Write(b) }
func (r *recorder) WriteHeader(s int)           { r.status = s }
