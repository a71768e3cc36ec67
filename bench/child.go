package bench

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime/pprof"
	"strings"
	"syscall"
	"time"

	"golang.org/x/oauth2"

	"github.com/gessync/gessync/cdc"
	"github.com/gessync/gessync/daemon"
	"github.com/gessync/gessync/sink/sage"
	"github.com/gessync/gessync/state"
)

// ChildEnv names the environment variable that turns a process into a bench daemon: the
// gessync binary (`gessync bench`) or a test binary (its TestMain) checks it first and calls
// ChildMain. The daemon runs in its own process so that its RSS and CPU are its own.
const ChildEnv = "GESSYNC_BENCH_CHILD"

// childConfig is what the parent tells a bench daemon, as JSON in ChildEnv.
type childConfig struct {
	GESURL      string `json:"ges_url"`
	StateURL    string `json:"state_url,omitempty"` // default GESURL
	Slot        string `json:"slot"`
	Publication string `json:"publication"`
	// SageBase is the parent's sandbox (behind its recorder): base+"/v3.1", "/token", …
	SageBase string `json:"sage_base"`
	// RequestsPerMinute is the client's per-business limit (0: sink/sage's default).
	RequestsPerMinute int `json:"requests_per_minute"`
	// Connect lists the companies to connect before streaming, with their sandbox business.
	Connect []childCompany `json:"connect,omitempty"`
	// CPUProfile, when set, is written when the child stops.
	CPUProfile string `json:"cpu_profile,omitempty"`
	LogFile    string `json:"log_file,omitempty"`
}

type childCompany struct {
	CompanyID  int64  `json:"company_id"`
	BusinessID string `json:"business_id"`
}

// IsChild reports whether this process was started as a bench daemon.
func IsChild() bool { return os.Getenv(ChildEnv) != "" }

// ChildMain runs a bench daemon: it connects the companies it was given (through the sandbox's
// token endpoint and daemon.Connect, the same code as the OAuth callback), serves its status on
// a loopback port (printed on stdout as "READY <addr>"), and runs daemon.Run until SIGTERM.
func ChildMain() error {
	var cfg childConfig
	if err := json.Unmarshal([]byte(os.Getenv(ChildEnv)), &cfg); err != nil {
		return fmt.Errorf("bench child: %s: %w", ChildEnv, err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	logw := io.Discard
	if cfg.LogFile != "" {
		f, err := os.OpenFile(cfg.LogFile, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
		if err != nil {
			return err
		}
		defer f.Close()
		logw = f
	}
	log := slog.New(slog.NewTextHandler(logw, &slog.HandlerOptions{Level: slog.LevelInfo}))
	if cfg.CPUProfile != "" {
		f, err := os.Create(cfg.CPUProfile)
		if err != nil {
			return err
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer func() { pprof.StopCPUProfile(); f.Close() }()
		// The allocations over the daemon's life beside its CPU: what feeds the GC.
		defer writeAllocs(strings.TrimSuffix(cfg.CPUProfile, ".pprof") + "-allocs.pprof")
	}
	d, err := daemon.New(ctx, daemon.Config{
		CDC:   cdc.Config{URL: cfg.GESURL, Slot: cfg.Slot, Publication: cfg.Publication, StatusInterval: 200 * time.Millisecond},
		State: state.Config{URL: cmp.Or(cfg.StateURL, cfg.GESURL), Schema: "gessync"},
		Sage: sage.Config{
			APIURL: cfg.SageBase + "/v3.1", AuthURL: cfg.SageBase + "/oauth2/auth/central", TokenURL: cfg.SageBase + "/token",
			ClientID: "gessync-bench", ClientSecret: "bench-secret", RedirectURL: "http://127.0.0.1/oauth/callback",
			RequestsPerMinute: cfg.RequestsPerMinute,
		},
		RetryMin: 200 * time.Millisecond, RetryMax: 5 * time.Second,
		Logger: log,
	})
	if err != nil {
		return err
	}
	defer d.Close()
	for _, c := range cfg.Connect {
		tok, err := sandboxToken(ctx, cfg.SageBase, c.BusinessID)
		if err != nil {
			return fmt.Errorf("company %d: %w", c.CompanyID, err)
		}
		if _, err := d.Connect(ctx, c.CompanyID, tok); err != nil {
			return err
		}
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		st, err := d.Status(r.Context())
		if err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		_ = json.NewEncoder(w).Encode(st)
	})}
	go srv.Serve(ln) //nolint:errcheck
	defer srv.Close()
	fmt.Printf("READY %s\n", ln.Addr())
	return d.Run(ctx)
}

// sandboxToken asks the sandbox for a token of business (POST /_sandbox/tokens), as if the user
// had gone through Sage's authorize page.
func sandboxToken(ctx context.Context, base, business string) (*oauth2.Token, error) {
	body, _ := json.Marshal(map[string]string{"business_id": business})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+"/_sandbox/tokens", bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var t struct {
		AccessToken  string `json:"access_token"`
		TokenType    string `json:"token_type"`
		ExpiresIn    int    `json:"expires_in"`
		RefreshToken string `json:"refresh_token"`
	}
	if resp.StatusCode != http.StatusCreated {
		b, _ := io.ReadAll(resp.Body)
		return nil, fmt.Errorf("sandbox token: %s: %s", resp.Status, b)
	}
	if err := json.NewDecoder(resp.Body).Decode(&t); err != nil {
		return nil, err
	}
	return &oauth2.Token{AccessToken: t.AccessToken, TokenType: t.TokenType, RefreshToken: t.RefreshToken,
		Expiry: time.Now().Add(time.Duration(t.ExpiresIn) * time.Second)}, nil
}

// writeAllocs writes the allocs profile (every allocation sampled since the start) to path; a
// failure only loses the profile.
func writeAllocs(path string) {
	f, err := os.Create(path)
	if err != nil {
		return
	}
	defer f.Close()
	_ = pprof.Lookup("allocs").WriteTo(f, 0)
}
