// Package web serves gessync's HTTP side on the daemon's address:
//
//   - GET /healthz (alive), GET /readyz (replication connected and progressing, state reachable),
//     GET /metrics (Prometheus), GET /status (JSON);
//   - the settings pages: GET / (every company at a glance), GET /companies/{id} (connection,
//     business and bank account, sync toggles, the sync log with Retry and Resync), and the sign-in
//     form;
//   - the JSON API under /api/ that the pages' forms mirror and the CLI uses;
//   - the Sage OAuth2 authorization-code flow: GET /connect/sage?company_id=N starts it with a
//     fresh single-use state bound to the browser by a cookie, GET /oauth/callback finishes it.
//
// When Server.AdminToken is set, everything but the open paths (/healthz, /readyz, /metrics by
// default) and /oauth/callback needs it: as "Authorization: Bearer <token>", or through the
// sign-in form's session cookie. A signed, expiring connect link lets an engineer connect their
// own company without the token.
package web

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"golang.org/x/oauth2"

	"github.com/gessync/gessync/daemon"
	"github.com/gessync/gessync/state"
)

// Daemon is what the web side needs of the running daemon (*daemon.Daemon).
type Daemon interface {
	Status(ctx context.Context) (daemon.Status, error)
	Ready(ctx context.Context, maxLag time.Duration) daemon.Readiness
	Connect(ctx context.Context, companyID int64, tok *oauth2.Token) (daemon.ConnectResult, error)
	Settings(ctx context.Context, companyID int64) (daemon.CompanySettings, error)
	UpdateSettings(ctx context.Context, companyID int64, u daemon.SettingsUpdate) (daemon.CompanySettings, error)
	Businesses(ctx context.Context, companyID int64) ([]daemon.Choice, error)
	BankAccounts(ctx context.Context, companyID int64) ([]daemon.Choice, error)
	LedgerAccounts(ctx context.Context, companyID int64) ([]daemon.Choice, error)
	Disconnect(ctx context.Context, companyID int64) error
	Entries(ctx context.Context, q state.LogQuery) ([]state.Entry, error)
	Resync(ctx context.Context, companyID int64, table string, id int64, force bool) error
	RetryOpen(ctx context.Context, companyID int64) (int, error)
}

// OAuth is the Sage client's authorization-code side.
type OAuth interface {
	AuthCodeURL(state string) string
	Exchange(ctx context.Context, code string) (*oauth2.Token, error)
}

// States stores OAuth states (state.Store).
type States interface {
	CreateOAuthState(ctx context.Context, state string, companyID int64) error
	ConsumeOAuthState(ctx context.Context, state string, maxAge time.Duration) (int64, error)
}

// DefaultOpenPaths are served without the admin token unless Server.OpenPaths says otherwise.
var DefaultOpenPaths = []string{"/healthz", "/readyz", "/metrics"}

// Server holds the handlers. Set the fields, then call Handler once.
type Server struct {
	// Daemon answers status, settings, the sync log and connect.
	Daemon Daemon
	// OAuth is Sage's authorization-code flow; States keeps its single-use states.
	OAuth  OAuth
	States States
	// Metrics serves GET /metrics; nil answers 404.
	Metrics http.Handler
	// Logger receives the web side's log lines (default: discard).
	Logger *slog.Logger

	// AdminToken, when set, guards every path but OpenPaths and /oauth/callback. Empty leaves
	// everything open (the daemon allows that only on a loopback address).
	AdminToken string
	// OpenPaths are served without the token; nil means DefaultOpenPaths. /oauth/callback is
	// always open: its single-use state protects it.
	OpenPaths []string
	// SecureCookies marks the session and OAuth cookies Secure (set it when PublicURL is https).
	SecureCookies bool
	// PublicURL is the daemon's address as browsers reach it, for signed connect links.
	PublicURL string
	// GESURLTemplate links a sync-log record into GES: {table}, {id} and {company_id} are
	// replaced, e.g. "https://app.example/{table}/{id}". Empty shows no link.
	GESURLTemplate string
	// ReadyMaxLag bounds the age of the oldest unhandled commit for /readyz
	// (daemon.DefaultReadyMaxLag when 0).
	ReadyMaxLag time.Duration
	// ConnectLinkTTL is how long a signed connect link works, default 7 days.
	ConnectLinkTTL time.Duration
	// SessionTTL is how long a sign-in lasts, default 12 hours.
	SessionTTL time.Duration

	key   []byte
	now   func() time.Time
	cache choiceCache
}

// Handler returns the mux with every route, behind the admin-token guard.
func (s *Server) Handler() http.Handler {
	if s.Logger == nil {
		s.Logger = slog.New(slog.DiscardHandler)
	}
	if s.OpenPaths == nil {
		s.OpenPaths = DefaultOpenPaths
	}
	if s.ConnectLinkTTL <= 0 {
		s.ConnectLinkTTL = 7 * 24 * time.Hour
	}
	if s.SessionTTL <= 0 {
		s.SessionTTL = 12 * time.Hour
	}
	if s.now == nil {
		s.now = time.Now
	}
	if s.AdminToken != "" {
		m := hmac.New(sha256.New, []byte(s.AdminToken))
		m.Write([]byte("gessync web keys v1"))
		s.key = m.Sum(nil)
	} else {
		s.key = make([]byte, 32)
		_, _ = rand.Read(s.key)
	}
	s.PublicURL = strings.TrimRight(s.PublicURL, "/")

	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", s.readyz)
	mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, r *http.Request) {
		if s.Metrics == nil {
			http.NotFound(w, r)
			return
		}
		s.Metrics.ServeHTTP(w, r)
	})
	mux.HandleFunc("GET /status", s.status)
	mux.HandleFunc("GET /connect/sage", s.connect)
	mux.HandleFunc("GET /oauth/callback", s.callback)
	s.backfillRoutes(mux)
	mux.HandleFunc("GET /signin", s.signinPage)
	mux.HandleFunc("POST /signin", s.signin)
	mux.HandleFunc("POST /signout", s.signout)
	s.pages(mux)
	s.api(mux)
	return s.guard(securityHeaders(mux))
}

func securityHeaders(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("X-Frame-Options", "DENY")
		h.Set("Referrer-Policy", "same-origin")
		h.Set("Content-Security-Policy", "default-src 'self'; style-src 'self' 'unsafe-inline'; form-action 'self'")
		next.ServeHTTP(w, r)
	})
}

func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	rd := s.Daemon.Ready(r.Context(), s.ReadyMaxLag)
	code := http.StatusOK
	if !rd.Ready {
		code = http.StatusServiceUnavailable
	}
	writeJSON(w, code, rd)
}

func (s *Server) status(w http.ResponseWriter, r *http.Request) {
	st, err := s.Daemon.Status(r.Context())
	if err != nil {
		s.Logger.Error("status", "err", err)
		writeError(w, http.StatusServiceUnavailable, "status unavailable: "+err.Error())
		return
	}
	writeJSON(w, http.StatusOK, st)
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// apiError is the body of every API refusal.
type apiError struct {
	Error string `json:"error"`
	// Field names the setting refused, when one was.
	Field string `json:"field,omitempty"`
}

func writeError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, apiError{Error: msg})
}
