// Package web serves gessync's HTTP side: GET /healthz (alive), GET /status (JSON: slot,
// checkpoint, lag, companies), and the Sage OAuth2 authorization-code flow: GET /connect/sage
// ?company_id=N starts it with a fresh single-use state, GET /oauth/callback finishes it.
package web

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"log/slog"
	"net/http"
	"strconv"
	"time"

	"golang.org/x/oauth2"

	"github.com/gessync/gessync/daemon"
	"github.com/gessync/gessync/state"
)

// Daemon is what the web side needs of the running daemon.
type Daemon interface {
	Status(ctx context.Context) (daemon.Status, error)
	Connect(ctx context.Context, companyID int64, tok *oauth2.Token) (daemon.ConnectResult, error)
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

// Server holds the handlers.
type Server struct {
	Daemon Daemon
	OAuth  OAuth
	States States
	Logger *slog.Logger
}

// Handler returns the mux with every route.
func (s *Server) Handler() http.Handler {
	if s.Logger == nil {
		s.Logger = slog.New(slog.DiscardHandler)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /status", s.status)
	mux.HandleFunc("GET /connect/sage", s.connect)
	mux.HandleFunc("GET /oauth/callback", s.callback)
	return mux
}

func (s *Server) status(w http.ResponseWriter, r *http.Request) {
	st, err := s.Daemon.Status(r.Context())
	if err != nil {
		s.Logger.Error("status", "err", err)
		http.Error(w, "status unavailable: "+err.Error(), http.StatusServiceUnavailable)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(st)
}

func (s *Server) connect(w http.ResponseWriter, r *http.Request) {
	company, err := strconv.ParseInt(r.URL.Query().Get("company_id"), 10, 64)
	if err != nil || company <= 0 {
		http.Error(w, "company_id must be a GES company id, e.g. /connect/sage?company_id=1", http.StatusBadRequest)
		return
	}
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		http.Error(w, "no randomness", http.StatusInternalServerError)
		return
	}
	st := hex.EncodeToString(b)
	if err := s.States.CreateOAuthState(r.Context(), st, company); err != nil {
		s.Logger.Error("connect", "company_id", company, "err", err)
		http.Error(w, "could not start connecting: state unavailable", http.StatusServiceUnavailable)
		return
	}
	http.Redirect(w, r, s.OAuth.AuthCodeURL(st), http.StatusFound)
}

var resultPage = template.Must(template.New("r").Parse(`<!doctype html><html lang="en"><head><meta charset="utf-8"><title>gessync: {{.Title}}</title></head>
<body><h1>{{.Title}}</h1>{{if .Result}}<p>GES company {{.Result.CompanyID}} now syncs to the Sage business <b>{{.Result.BusinessName}}</b>; receipts go to <b>{{.Result.BankAccount}}</b>.</p>
{{range .Result.Notes}}<p>{{.}}</p>{{end}}{{end}}{{if .Err}}<p>{{.Err}}</p><p>Start again from the settings page.</p>{{end}}</body></html>
`))

func (s *Server) callback(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	if e := q.Get("error"); e != "" {
		w.WriteHeader(http.StatusBadRequest)
		_ = resultPage.Execute(w, map[string]any{"Title": "Sage did not connect", "Err": "Sage said: " + e})
		return
	}
	company, err := s.States.ConsumeOAuthState(r.Context(), q.Get("state"), 10*time.Minute)
	if err != nil {
		w.WriteHeader(http.StatusBadRequest)
		msg := "This connection link is unknown, used already or expired."
		if !errors.Is(err, state.ErrBadState) {
			s.Logger.Error("oauth callback", "err", err)
			msg = "gessync could not check this connection link."
		}
		_ = resultPage.Execute(w, map[string]any{"Title": "Sage did not connect", "Err": msg})
		return
	}
	tok, err := s.OAuth.Exchange(r.Context(), q.Get("code"))
	if err != nil {
		s.Logger.Error("oauth exchange", "company_id", company, "err", err)
		w.WriteHeader(http.StatusBadGateway)
		_ = resultPage.Execute(w, map[string]any{"Title": "Sage did not connect", "Err": "Sage refused the authorisation code: " + err.Error()})
		return
	}
	res, err := s.Daemon.Connect(r.Context(), company, tok)
	if err != nil {
		s.Logger.Error("connect", "company_id", company, "err", err)
		w.WriteHeader(http.StatusBadGateway)
		_ = resultPage.Execute(w, map[string]any{"Title": "Sage did not connect", "Err": err.Error()})
		return
	}
	_ = resultPage.Execute(w, map[string]any{"Title": "Connected to Sage", "Result": res})
}
