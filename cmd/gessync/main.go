// Command gessync keeps GES's customers, invoices and payments in step with Sage Accounting.
//
// Subcommands:
//
//	gessync run       stream GES changes to Sage (the daemon); the default
//	gessync sandbox   run the in-memory Sage Accounting v3.1 sandbox on its own
//	gessync demo      start a throwaway PostgreSQL with sample data, run the daemon against the
//	                  built-in sandbox, make a few edits and show what reached Sage
//	gessync status | errors | retry | settings | disconnect | connect-link
//	                  ask a running daemon over its HTTP API (GESSYNC_URL, GESSYNC_ADMIN_TOKEN);
//	                  tables for people, --json for scripts
//
// Configuration comes from the environment; flags override it. `gessync run -h` lists both.
package main

import (
	"context"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/lmittmann/tint"

	"github.com/gessync/gessync/cdc"
	"github.com/gessync/gessync/daemon"
	"github.com/gessync/gessync/pipeline"
	"github.com/gessync/gessync/sink/sage"
	"github.com/gessync/gessync/sink/sagetest"
	"github.com/gessync/gessync/state"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// The first signal stops gracefully (daemon.Config.StopGrace); a second one, with signal
	// handling restored to the default, stops the process at once.
	context.AfterFunc(ctx, stop)
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr, os.Getenv); errors.Is(err, flag.ErrHelp) {
		return // -h printed the usage, as asked
	} else if err != nil {
		fmt.Fprintln(os.Stderr, "gessync:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) error {
	cmd := "run"
	if len(args) > 0 && (!strings.HasPrefix(args[0], "-") || isHelp(args[0])) {
		cmd, args = args[0], args[1:]
	}
	log := newLogger(stderr)
	switch cmd {
	case "run":
		cfg, err := parseRun(args, getenv, stderr)
		if err != nil {
			return err
		}
		return runDaemon(ctx, cfg, log, nil)
	case "sandbox":
		return runSandbox(ctx, args, getenv, stderr, log)
	case "bench":
		return runBench(ctx, args, stdout, stderr)
	case "demo":
		return runDemo(ctx, args, stdout, stderr, log)
	case "backfill":
		return runBackfill(ctx, args, stdout, stderr, getenv)
	case "resync":
		return runResync(ctx, args, stdout, stderr, getenv)
	case "reconcile":
		return runReconcile(ctx, args, stdout, stderr, getenv)
	case "help", "-h", "-help", "--help":
		fmt.Fprintln(stdout, "usage: gessync [run|sandbox|demo|backfill|resync|reconcile|bench|status|errors|retry|settings|disconnect|connect-link] [flags]; gessync run -h lists settings")
		return nil
	}
	if cliCommands[cmd] {
		return runCLI(ctx, cmd, args, stdout, stderr, getenv)
	}
	return fmt.Errorf("unknown command %q: use run, sandbox, demo, backfill, resync, reconcile, bench, status, errors, retry, settings, disconnect or connect-link", cmd)
}

// isHelp is whether a first argument asks for the list of commands (a flag anywhere else is
// the command's: gessync run -h lists run's settings).
func isHelp(arg string) bool { return arg == "-h" || arg == "-help" || arg == "--help" }

// newLogger picks tint on a terminal and JSON otherwise.
func newLogger(w io.Writer) *slog.Logger {
	if f, ok := w.(*os.File); ok {
		if fi, err := f.Stat(); err == nil && fi.Mode()&os.ModeCharDevice != 0 {
			return slog.New(tint.NewHandler(w, &tint.Options{TimeFormat: time.TimeOnly}))
		}
	}
	level := slog.LevelInfo
	if os.Getenv("GESSYNC_LOG_LEVEL") == "debug" {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: level}))
}

// runConfig is the daemon's configuration after env and flags.
type runConfig struct {
	GESURL, StateURL, StateSchema string
	Slot, Publication             string
	SageAPI, SageAuth, SageToken  string
	ClientID, ClientSecret        string
	HTTPAddr, PublicURL           string
	Web                           webConfig // cli.go
	TokenKey                      []byte
	SandboxAddr                   string
	RetryMax                      time.Duration
	StatusInterval                time.Duration
	// Shard is this instance's share of the companies (GESSYNC_SHARD=k/N); zero for all.
	Shard cdc.Shard
	// SageRPM is the per-business limit on calls to Sage.
	SageRPM int
	// ParkAfter is how long a company's Sage may refuse before its changes are parked.
	ParkAfter time.Duration
	// StopGrace is how long a stop lets the changes being applied finish.
	StopGrace time.Duration
	// Lanes is how many of one company's customers have changes applied at once.
	Lanes int
	// ContactIndex is daemon.Config.ContactIndex: the most customers a Sage business may have
	// for gessync to keep an index of them for matching; 0 the default (5000), negative none
	// (GESSYNC_CONTACT_INDEX=0).
	ContactIndex int
	// RefreshEvery and RefreshWithin drive the renewal of quiet connections' tokens.
	RefreshEvery, RefreshWithin time.Duration
}

// ConfigError names the setting that is wrong and how.
type ConfigError struct{ Var, Problem string }

func (e *ConfigError) Error() string { return e.Var + ": " + e.Problem }

// contactIndexError refuses a GESSYNC_CONTACT_INDEX out of range.
var contactIndexError = &ConfigError{"GESSYNC_CONTACT_INDEX", fmt.Sprintf("must be a whole number from 0 to %d (0 searches Sage for every new customer; a business's first read of %d customers is %d pages of its Sage calls)",
	pipeline.MaxContactIndex, pipeline.MaxContactIndex, pipeline.MaxContactIndex/200)}

func parseRun(args []string, getenv func(string) string, stderr io.Writer) (runConfig, error) {
	var c runConfig
	env := func(k, def string) string {
		if v := getenv(k); v != "" {
			return v
		}
		return def
	}
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&c.GESURL, "ges-database-url", env("GES_DATABASE_URL", ""), "GES PostgreSQL URL (GES_DATABASE_URL), required")
	fs.StringVar(&c.StateURL, "state-database-url", env("STATE_DATABASE_URL", ""), "state PostgreSQL URL (STATE_DATABASE_URL); default the GES database")
	fs.StringVar(&c.StateSchema, "state-schema", env("GESSYNC_STATE_SCHEMA", "gessync"), "schema for gessync's state (GESSYNC_STATE_SCHEMA)")
	fs.StringVar(&c.Slot, "slot", env("GESSYNC_SLOT", "gessync"), "logical replication slot (GESSYNC_SLOT)")
	fs.StringVar(&c.Publication, "publication", env("GESSYNC_PUBLICATION", "gessync"), "publication (GESSYNC_PUBLICATION)")
	shard := fs.String("shard", env("GESSYNC_SHARD", ""), "this instance's share k/N of the companies, company_id % N = k (GESSYNC_SHARD); empty: all")
	fs.StringVar(&c.SageAPI, "sage-api-url", env("SAGE_API_URL", "https://api.accounting.sage.com/v3.1"), "Sage API base (SAGE_API_URL)")
	fs.StringVar(&c.SageAuth, "sage-auth-url", env("SAGE_AUTH_URL", "https://www.sageone.com/oauth2/auth/central?filter=apiv3.1"), "Sage authorize URL (SAGE_AUTH_URL)")
	fs.StringVar(&c.SageToken, "sage-token-url", env("SAGE_TOKEN_URL", "https://oauth.accounting.sage.com/token"), "Sage token URL (SAGE_TOKEN_URL)")
	fs.StringVar(&c.ClientID, "sage-client-id", env("SAGE_CLIENT_ID", ""), "Sage OAuth client id (SAGE_CLIENT_ID); empty runs the built-in sandbox")
	c.ClientSecret = getenv("SAGE_CLIENT_SECRET") // never a flag: flags show in ps
	fs.StringVar(&c.HTTPAddr, "http-addr", env("GESSYNC_HTTP_ADDR", "127.0.0.1:8080"), "health, status and connect address (GESSYNC_HTTP_ADDR)")
	fs.StringVar(&c.PublicURL, "public-url", env("GESSYNC_PUBLIC_URL", ""), "address Sage redirects back to (GESSYNC_PUBLIC_URL); default http://<http-addr>")
	fs.StringVar(&c.SandboxAddr, "sandbox-addr", env("GESSYNC_SANDBOX_ADDR", "127.0.0.1:0"), "address of the built-in sandbox when no client id is set (GESSYNC_SANDBOX_ADDR)")
	for _, d := range []struct {
		name, def string
		dst       *time.Duration
	}{{"GESSYNC_TOKEN_REFRESH_EVERY", "1h", &c.RefreshEvery}, {"GESSYNC_TOKEN_REFRESH_WITHIN", "168h", &c.RefreshWithin}} {
		v, err := time.ParseDuration(env(d.name, d.def))
		if err != nil || v <= 0 {
			return c, &ConfigError{d.name, "must be a positive duration such as " + d.def}
		}
		*d.dst = v
	}
	park, err := time.ParseDuration(env("GESSYNC_PARK_AFTER", "5m"))
	if err != nil || park <= 0 {
		return c, &ConfigError{"GESSYNC_PARK_AFTER", "must be a positive duration such as 5m"}
	}
	fs.DurationVar(&c.ParkAfter, "park-after", park, "how long a company's Sage may refuse before its changes move to the backlog and stop holding the slot (GESSYNC_PARK_AFTER)")
	grace, err := time.ParseDuration(env("GESSYNC_STOP_GRACE", "20s"))
	if err != nil || grace <= 0 {
		return c, &ConfigError{"GESSYNC_STOP_GRACE", "must be a positive duration such as 20s"}
	}
	fs.DurationVar(&c.StopGrace, "stop-grace", grace, "on SIGTERM or Ctrl-C, how long the changes being applied may take to finish before their calls to Sage are cut off; a second signal stops at once (GESSYNC_STOP_GRACE)")
	rpm, err := strconv.Atoi(env("GESSYNC_SAGE_REQUESTS_PER_MINUTE", "180"))
	if err != nil || rpm <= 0 {
		return c, &ConfigError{"GESSYNC_SAGE_REQUESTS_PER_MINUTE", "must be a positive whole number (Sage throttles at about 200 a minute per business)"}
	}
	lanes, err := strconv.Atoi(env("GESSYNC_LANES", "4"))
	if err != nil || lanes <= 0 {
		return c, &ConfigError{"GESSYNC_LANES", "must be a positive whole number (1 applies each company's changes strictly in commit order)"}
	}
	index, err := strconv.Atoi(env("GESSYNC_CONTACT_INDEX", "5000"))
	if err != nil || index < 0 || index > pipeline.MaxContactIndex {
		return c, contactIndexError
	}
	fs.IntVar(&c.ContactIndex, "contact-index", index, "the most customers a Sage business may have for new customers to be matched against an index of them kept in memory, rather than searched for in Sage; 0 always searches (GESSYNC_CONTACT_INDEX)")
	fs.IntVar(&c.Lanes, "lanes", lanes, "how many of one company's customers have changes applied at once; one customer's changes always apply in commit order, and 1 applies all of a company's so (GESSYNC_LANES)")
	fs.IntVar(&c.SageRPM, "sage-requests-per-minute", rpm, "per-business limit on calls to Sage (GESSYNC_SAGE_REQUESTS_PER_MINUTE)")
	fs.DurationVar(&c.RetryMax, "retry-max", 30*time.Second, "longest wait between retries of a failing Sage call")
	interval, err := time.ParseDuration(env("GESSYNC_STATUS_INTERVAL", "5s"))
	if err != nil || interval <= 0 {
		return c, &ConfigError{"GESSYNC_STATUS_INTERVAL", "must be a positive duration such as 5s"}
	}
	fs.DurationVar(&c.StatusInterval, "status-interval", interval, "how often the slot is told the safe LSN (GESSYNC_STATUS_INTERVAL); keep well under wal_sender_timeout")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	// The flags override the environment, and are held to the same rules.
	if c.StopGrace <= 0 {
		return c, &ConfigError{"GESSYNC_STOP_GRACE", "must be a positive duration such as 20s"}
	}
	if c.ContactIndex < 0 || c.ContactIndex > pipeline.MaxContactIndex {
		return c, contactIndexError
	}
	if c.ContactIndex == 0 {
		c.ContactIndex = -1 // the operator's 0 is the daemon's none; its 0 is the default
	}
	if c.Lanes <= 0 {
		return c, &ConfigError{"GESSYNC_LANES", "must be a positive whole number (1 applies each company's changes strictly in commit order)"}
	}
	if c.ParkAfter <= 0 {
		return c, &ConfigError{"GESSYNC_PARK_AFTER", "must be a positive duration such as 5m"}
	}
	if c.SageRPM <= 0 {
		return c, &ConfigError{"GESSYNC_SAGE_REQUESTS_PER_MINUTE", "must be a positive whole number (Sage throttles at about 200 a minute per business)"}
	}
	if c.GESURL == "" {
		return c, &ConfigError{"GES_DATABASE_URL", "not set: give the GES PostgreSQL URL, e.g. postgres://gessync@db/ges"}
	}
	if k := getenv("GESSYNC_TOKEN_KEY"); k != "" {
		key, err := base64.StdEncoding.DecodeString(k)
		if err != nil || len(key) != 32 {
			return c, &ConfigError{"GESSYNC_TOKEN_KEY", "must be 32 random bytes in base64 (openssl rand -base64 32)"}
		}
		c.TokenKey = key
	}
	if c.ClientID != "" && c.ClientSecret == "" {
		return c, &ConfigError{"SAGE_CLIENT_SECRET", "not set while SAGE_CLIENT_ID is"}
	}
	if c.PublicURL == "" {
		c.PublicURL = "http://" + c.HTTPAddr
	}
	c.PublicURL = strings.TrimRight(c.PublicURL, "/")
	if c.Web, err = parseWebConfig(getenv, c.HTTPAddr); err != nil {
		return c, err
	}
	if c.Shard, err = cdc.ParseShard(*shard); err != nil {
		return c, &ConfigError{"GESSYNC_SHARD", err.Error()}
	}
	if c.Slot == "gessync" {
		c.Slot = c.Shard.Name(c.Slot) // gessync_s<k>_of_<N> when sharded
	}
	if c.Publication == "gessync" {
		c.Publication = c.Shard.Name(c.Publication)
	}
	if err := (cdc.Config{URL: c.GESURL, Slot: c.Slot, Publication: c.Publication}).Validate(); err != nil {
		return c, &ConfigError{"GESSYNC_SLOT/GESSYNC_PUBLICATION", err.Error()}
	}
	return c, nil
}

// runDaemon runs the daemon until ctx ends. ready, when set, receives the HTTP address once
// serving (for the demo).
func runDaemon(ctx context.Context, c runConfig, log *slog.Logger, ready chan<- string) error {
	if c.ClientID == "" {
		ln, err := net.Listen("tcp", c.SandboxAddr)
		if err != nil {
			return fmt.Errorf("built-in Sage sandbox: %w", err)
		}
		sb := sagetest.New(sagetest.Options{Logger: log.With("component", "sandbox")})
		srv := &http.Server{Handler: sb, ReadHeaderTimeout: 10 * time.Second}
		go srv.Serve(ln) //nolint:errcheck
		defer srv.Close()
		base := "http://" + ln.Addr().String()
		c.SageAPI, c.SageAuth, c.SageToken = base+"/v3.1", base+"/oauth2/auth/central", base+"/token"
		c.ClientID, c.ClientSecret = "gessync-sandbox", "sandbox-secret"
		log.Warn("no SAGE_CLIENT_ID set: using the built-in Sage sandbox (in memory, not real Sage)", "sandbox", base)
	}
	if c.TokenKey == nil {
		log.Warn("GESSYNC_TOKEN_KEY not set: Sage tokens are stored unencrypted")
	}
	d, err := daemon.New(ctx, daemon.Config{
		CDC:      cdc.Config{URL: c.GESURL, Slot: c.Slot, Publication: c.Publication, StatusInterval: c.StatusInterval, Shard: c.Shard},
		State:    state.Config{URL: c.StateURL, Schema: c.StateSchema, TokenKey: c.TokenKey, PreviousTokenKeys: c.Web.PreviousTokenKeys},
		Sage:     sage.Config{APIURL: c.SageAPI, AuthURL: c.SageAuth, TokenURL: c.SageToken, ClientID: c.ClientID, ClientSecret: c.ClientSecret, RedirectURL: c.PublicURL + "/oauth/callback", RequestsPerMinute: c.SageRPM},
		RetryMax: c.RetryMax, ParkAfter: c.ParkAfter, StopGrace: c.StopGrace, Lanes: c.Lanes, ContactIndex: c.ContactIndex, RefreshEvery: c.RefreshEvery, RefreshWithin: c.RefreshWithin,
		Logger: log,
	})
	var oe *daemon.OpenError
	if errors.As(err, &oe) {
		v := "GES_DATABASE_URL"
		if oe.Database == "state" && c.StateURL != "" {
			v = "STATE_DATABASE_URL"
		}
		if strings.Contains(err.Error(), "token key") || strings.Contains(err.Error(), "token does not open") {
			v = "GESSYNC_TOKEN_KEY"
		}
		return &ConfigError{v, err.Error()}
	}
	if err != nil {
		return err
	}
	defer d.Close()
	ln, err := net.Listen("tcp", c.HTTPAddr)
	if err != nil {
		return &ConfigError{"GESSYNC_HTTP_ADDR", err.Error()}
	}
	ws := c.Web.server(d, c.PublicURL, log)
	srv := &http.Server{Handler: ws.Handler(), ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln) //nolint:errcheck
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	log.Info("serving health, status and connect", "addr", "http://"+ln.Addr().String())
	if ready != nil {
		ready <- ln.Addr().String()
	}
	err = d.Serve(ctx) // waits for the slot's leader lock when another instance leads
	var se *cdc.SetupError
	if errors.As(err, &se) {
		return fmt.Errorf("start-up check failed: %w", err)
	}
	return err
}

func runSandbox(ctx context.Context, args []string, getenv func(string) string, stderr io.Writer, log *slog.Logger) error {
	fs := flag.NewFlagSet("sandbox", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", "127.0.0.1:8081", "listen address")
	limit := fs.Int("rate-limit", 200, "requests per business per 60 s before 429 (negative: off)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return err
	}
	sb := sagetest.New(sagetest.Options{Logger: log.With("component", "sandbox"), RateLimit: *limit})
	srv := &http.Server{Handler: sb, ReadHeaderTimeout: 10 * time.Second}
	log.Info("Sage sandbox serving", "api", "http://"+ln.Addr().String()+"/v3.1", "authorize", "http://"+ln.Addr().String()+"/oauth2/auth/central", "token", "http://"+ln.Addr().String()+"/token")
	go func() { <-ctx.Done(); _ = srv.Close() }()
	if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
