// Package pglocal starts a throwaway PostgreSQL server configured for logical replication, for
// gessync's integration tests and its demo. It runs Debian's (or any PATH) PostgreSQL server
// binaries (initdb, postgres), listening on 127.0.0.1 only, on a free port, with
// wal_level=logical. initdb refuses to run as root, so when the caller is root the server runs
// as the unprivileged "postgres" user.
package pglocal

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// Server is one running PostgreSQL server. Its zero value is not usable: call Start.
type Server struct {
	// Port is the TCP port on 127.0.0.1.
	Port int
	// Dir is the data directory.
	Dir string

	bin  string
	cred *syscall.Credential
	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
	logf *os.File
}

// Options tunes Start. The zero value is what the tests use.
type Options struct {
	// Dir is the parent folder of the data directory; default os.TempDir().
	Dir string
	// Settings are extra "-c name=value" server settings.
	Settings map[string]string
}

// ErrNoServer means no PostgreSQL server binaries were found.
var ErrNoServer = errors.New("pglocal: PostgreSQL server binaries (initdb, postgres) not found; install Debian's postgresql-15 package")

// BinDir finds the folder holding initdb and postgres: PG_BIN, then PATH, then
// /usr/lib/postgresql/<newest>/bin.
func BinDir() (string, error) {
	if d := os.Getenv("PG_BIN"); d != "" {
		return d, nil
	}
	if p, err := exec.LookPath("initdb"); err == nil {
		if r, err := filepath.EvalSymlinks(p); err == nil {
			return filepath.Dir(r), nil
		}
		return filepath.Dir(p), nil
	}
	matches, _ := filepath.Glob("/usr/lib/postgresql/*/bin/initdb")
	best, bestV := "", -1
	for _, m := range matches {
		v, err := strconv.Atoi(filepath.Base(filepath.Dir(filepath.Dir(m))))
		if err == nil && v > bestV {
			best, bestV = filepath.Dir(m), v
		}
	}
	if best == "" {
		return "", ErrNoServer
	}
	return best, nil
}

// Start initialises a fresh cluster and starts it. Stop it with Stop (or Kill); the data
// directory is removed by Remove.
func Start(ctx context.Context, opts Options) (*Server, error) {
	bin, err := BinDir()
	if err != nil {
		return nil, err
	}
	s := &Server{bin: bin}
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			return nil, fmt.Errorf("pglocal: running as root needs an unprivileged \"postgres\" user: %w", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		s.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	}
	parent := opts.Dir
	if parent == "" {
		parent = os.TempDir()
	}
	dir, err := os.MkdirTemp(parent, "gessync-pg-")
	if err != nil {
		return nil, fmt.Errorf("pglocal: %w", err)
	}
	s.Dir = dir
	if s.cred != nil {
		if err := os.Chown(dir, int(s.cred.Uid), int(s.cred.Gid)); err != nil {
			return nil, fmt.Errorf("pglocal: chown %s: %w", dir, err)
		}
	}
	data := filepath.Join(dir, "data")
	initdb := s.command(ctx, filepath.Join(bin, "initdb"), "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C.UTF-8", "-N")
	if out, err := initdb.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("pglocal: initdb: %w: %s", err, out)
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	s.Port = port
	settings := map[string]string{
		"listen_addresses":        "127.0.0.1",
		"port":                    strconv.Itoa(port),
		"unix_socket_directories": dir,
		"wal_level":               "logical",
		"max_replication_slots":   "100",
		"max_wal_senders":         "100",
		"fsync":                   "off",
		"full_page_writes":        "off",
		"max_connections":         "200",
		"shared_buffers":          "128MB",
	}
	for k, v := range opts.Settings {
		settings[k] = v
	}
	conf, err := os.OpenFile(filepath.Join(data, "postgresql.auto.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return nil, fmt.Errorf("pglocal: %w", err)
	}
	for k, v := range settings {
		fmt.Fprintf(conf, "%s = '%s'\n", k, strings.ReplaceAll(v, "'", "''"))
	}
	if err := conf.Close(); err != nil {
		return nil, fmt.Errorf("pglocal: %w", err)
	}
	if err := s.Restart(ctx); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *Server) command(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if s.cred != nil {
		cmd.SysProcAttr.Credential = s.cred
	}
	cmd.Env = append(os.Environ(), "LC_ALL=C.UTF-8")
	return cmd
}

// Restart starts the server process (again, after Stop or Kill) and waits until it accepts
// connections.
func (s *Server) Restart(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		return errors.New("pglocal: server already running")
	}
	logPath := filepath.Join(s.Dir, "server.log")
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return fmt.Errorf("pglocal: %w", err)
	}
	// The server must outlive the ctx of the caller that starts it.
	cmd := s.command(context.Background(), filepath.Join(s.bin, "postgres"), "-D", filepath.Join(s.Dir, "data"))
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("pglocal: start postgres: %w", err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	s.cmd, s.done, s.logf = cmd, done, logf
	deadline := time.Now().Add(60 * time.Second)
	for {
		c, err := pgx.Connect(ctx, s.URL("postgres"))
		if err == nil {
			c.Close(ctx)
			return nil
		}
		select {
		case <-done:
			tail, _ := os.ReadFile(logPath)
			if len(tail) > 600 {
				tail = tail[len(tail)-600:]
			}
			return fmt.Errorf("pglocal: postgres exited during start-up; %s ends:\n%s", logPath, tail)
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond): // polling for readiness, not synchronising work
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("pglocal: postgres did not accept connections within 60 s; see %s", logPath)
		}
	}
}

// URL returns a connection URL for database db as the superuser "postgres".
func (s *Server) URL(db string) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", s.Port, db)
}

// Stop shuts the server down cleanly (SIGINT: fast shutdown) and waits for it.
func (s *Server) Stop() error { return s.signal(syscall.SIGINT) }

// Kill stops the server with SIGKILL, as a crash would; Restart recovers it.
func (s *Server) Kill() error { return s.signal(syscall.SIGKILL) }

func (s *Server) signal(sig syscall.Signal) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return nil
	}
	pid := s.cmd.Process.Pid
	var children []int
	if sig == syscall.SIGKILL {
		// Backends call setsid(), so they are not in the postmaster's process group: find them
		// by parent, kill them with it, as a crash of the whole server would.
		children = childrenOf(pid)
		_ = syscall.Kill(pid, syscall.SIGKILL)
		for _, c := range children {
			_ = syscall.Kill(c, syscall.SIGKILL)
		}
	} else {
		_ = s.cmd.Process.Signal(sig)
	}
	<-s.done
	// A backend still alive (or exiting) holds the shared memory segment, and a restart before
	// it is gone fails ("pre-existing shared memory block is still in use").
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		alive := false
		for _, c := range children {
			alive = alive || running(c)
		}
		if !alive {
			break
		}
	}
	if sig == syscall.SIGKILL {
		_ = os.Remove(filepath.Join(s.Dir, "data", "postmaster.pid"))
	}
	s.logf.Close()
	s.cmd, s.done = nil, nil
	return nil
}

// Remove stops the server if it runs and deletes its data directory.
func (s *Server) Remove() error {
	_ = s.Stop()
	return os.RemoveAll(s.Dir)
}

// DropDatabase drops database name, with its replication slots (which would keep it) and
// whoever is still connected to it (DROP DATABASE … WITH (FORCE)). A database that does not
// exist is not an error.
func (s *Server) DropDatabase(ctx context.Context, name string) error {
	c, err := pgx.Connect(ctx, s.URL("postgres"))
	if err != nil {
		return fmt.Errorf("pglocal: %w", err)
	}
	defer c.Close(ctx)
	if _, err := c.Exec(ctx, `SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE database = $1 AND active_pid IS NOT NULL`, name); err != nil {
		return fmt.Errorf("pglocal: drop database %s: %w", name, err)
	}
	if _, err := c.Exec(ctx, `SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = $1`, name); err != nil {
		return fmt.Errorf("pglocal: drop database %s: slots: %w", name, err)
	}
	if _, err := c.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)"); err != nil {
		return fmt.Errorf("pglocal: drop database %s: %w", name, err)
	}
	return nil
}

// CreateDatabase creates database name, running schemaSQL in it when non-empty.
func (s *Server) CreateDatabase(ctx context.Context, name, schemaSQL string) error {
	c, err := pgx.Connect(ctx, s.URL("postgres"))
	if err != nil {
		return fmt.Errorf("pglocal: %w", err)
	}
	defer c.Close(ctx)
	if _, err := c.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		return fmt.Errorf("pglocal: create database %s: %w", name, err)
	}
	if schemaSQL == "" {
		return nil
	}
	d, err := pgx.Connect(ctx, s.URL(name))
	if err != nil {
		return fmt.Errorf("pglocal: %w", err)
	}
	defer d.Close(ctx)
	if _, err := d.Exec(ctx, schemaSQL); err != nil {
		return fmt.Errorf("pglocal: schema in %s: %w", name, err)
	}
	return nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("pglocal: free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// childrenOf lists the processes whose parent is pid (from /proc).
func childrenOf(pid int) []int {
	entries, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range entries {
		n, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if ppid, _, ok := procStat(n); ok && ppid == pid {
			out = append(out, n)
		}
	}
	return out
}

// running reports whether pid exists and is not a zombie.
func running(pid int) bool {
	_, state, ok := procStat(pid)
	return ok && state != 'Z' && state != 'X'
}

// procStat reads a process's parent pid and state from /proc/<pid>/stat.
func procStat(pid int) (ppid int, state byte, ok bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, false
	}
	// pid (comm) state ppid …; comm may hold spaces and parentheses: split after the last ')'.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 || i+4 >= len(b) {
		return 0, 0, false
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 2 {
		return 0, 0, false
	}
	ppid, err = strconv.Atoi(f[1])
	return ppid, f[0][0], err == nil
}

// RunTests is a package's TestMain for integration tests: it starts a throwaway server into
// *pg, runs the tests, removes the server and returns the exit code. A server that cannot start
// fails the run (integration tests always run; they never skip). what names the package in the
// message.
func RunTests(m interface{ Run() int }, what string, pg **Server) int {
	s, err := Start(context.Background(), Options{})
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s tests: cannot start PostgreSQL: %v\n", what, err)
		return 1
	}
	*pg = s
	defer s.Remove()
	return m.Run()
}
