package sage

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/oauth2"
)

// Secrets used by the tests. Each contains "SECRET" (or "S3CR3T"), so a leak is easy to spot.
const (
	testClientID     = "gessync-test-client"
	testClientSecret = "client-S3CR3T-0123456789abcdef"
	testBusiness     = "39b9e435c6d1c0dece9bdde5cb8df769"
	testCode         = "auth-code-SECRET-0123456789"
	testRedirect     = "https://gessync.example/oauth/callback"
)

// leakMarkers are substrings of every secret the tests use.
var leakMarkers = []string{"SECRET", "S3CR3T"}

func accessToken(n int) string  { return fmt.Sprintf("access-SECRET-%04d-eyJhbGciOiJSUzUxMiJ9", n) }
func refreshToken(n int) string { return fmt.Sprintf("refresh-SECRET-%04d-eyJhbGciOiJSUzUxMiJ9", n) }

var t0 = time.Date(2025, 3, 14, 9, 0, 0, 0, time.UTC)

// fakeClock starts at t0. After records the wait, moves the clock forward by it and fires at
// once, so waits cost nothing and tests read exactly what the client waited.
type fakeClock struct {
	mu    sync.Mutex
	now   time.Time
	waits []time.Duration
}

func newFakeClock() *fakeClock { return &fakeClock{now: t0} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) After(d time.Duration) <-chan time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.waits = append(c.waits, d)
	c.now = c.now.Add(d)
	ch := make(chan time.Time, 1)
	ch <- c.now
	return ch
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

func (c *fakeClock) Waits() []time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]time.Duration(nil), c.waits...)
}

// fakeStore is a TokenStore with a scriptable error and a record of what was saved.
type fakeStore struct {
	mu     sync.Mutex
	saved  []*oauth2.Token
	events *eventLog
	err    func(n int) error // n counts calls from 1; nil means always succeed
}

func (s *fakeStore) SaveToken(_ context.Context, companyID int64, tok *oauth2.Token) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := len(s.saved) + 1
	if s.err != nil {
		if err := s.err(n); err != nil {
			s.saved = append(s.saved, nil)
			return err
		}
	}
	s.saved = append(s.saved, tok)
	if s.events != nil {
		s.events.add("save " + tok.RefreshToken)
	}
	return nil
}

func (s *fakeStore) Saved() []*oauth2.Token {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []*oauth2.Token
	for _, t := range s.saved {
		if t != nil {
			out = append(out, t)
		}
	}
	return out
}

type eventLog struct {
	mu sync.Mutex
	ev []string
}

func (l *eventLog) add(e string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.ev = append(l.ev, e)
}

func (l *eventLog) all() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.ev...)
}

// recorded is one request the fake Sage received.
type recorded struct {
	Method  string
	Path    string // without the /v3.1 base
	RawPath string // Path as sent, escaped
	Query   map[string][]string
	Header  http.Header
	Body    []byte
}

// fakeSage is an httptest Sage: a token endpoint at /token that rotates refresh tokens (each is
// single use) and an API under /v3.1 whose behaviour a test scripts with api.
type fakeSage struct {
	t   *testing.T
	srv *httptest.Server

	mu           sync.Mutex
	gen          int
	validRefresh string
	validAccess  map[string]bool
	refreshes    int
	exchanges    int
	requests     []recorded
	events       *eventLog

	// token, when set, answers the token endpoint instead of the rotation logic.
	token func(w http.ResponseWriter, r *http.Request, form map[string][]string) bool
	// api answers API calls whose bearer token is valid (else 401 AuthorizationFailure).
	// n counts API requests from 1.
	api func(w http.ResponseWriter, r *http.Request, rec recorded, n int)
	// acceptAnyBearer skips the bearer check, for tests that script 401s themselves.
	acceptAnyBearer bool
}

func newFakeSage(t *testing.T) *fakeSage {
	t.Helper()
	f := &fakeSage{t: t, validAccess: map[string]bool{}, events: &eventLog{}}
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.srv.Close)
	return f
}

// issue makes generation n of the tokens valid and returns it as Sage's JSON.
func (f *fakeSage) issue() map[string]any {
	f.gen++
	f.validRefresh = refreshToken(f.gen)
	f.validAccess[accessToken(f.gen)] = true
	return map[string]any{
		"access_token":             accessToken(f.gen),
		"scope":                    "full_access",
		"token_type":               "bearer",
		"expires_in":               300,
		"refresh_token":            refreshToken(f.gen),
		"refresh_token_expires_in": 2678400,
		"requested_by_id":          "00000000-0000-4000-8000-000000000001",
	}
}

// seed makes generation 1 valid and returns it as a token expiring at exp.
func (f *fakeSage) seed(exp time.Time) *oauth2.Token {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.issue()
	return &oauth2.Token{AccessToken: accessToken(f.gen), RefreshToken: refreshToken(f.gen), TokenType: "bearer", Expiry: exp}
}

func (f *fakeSage) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	if r.URL.Path == "/token" {
		f.serveToken(w, r, body)
		return
	}
	rec := recorded{Method: r.Method, Path: strings.TrimPrefix(r.URL.Path, "/v3.1"), RawPath: strings.TrimPrefix(r.URL.EscapedPath(), "/v3.1"), Query: r.URL.Query(), Header: r.Header.Clone(), Body: body}
	f.mu.Lock()
	f.requests = append(f.requests, rec)
	n := len(f.requests)
	bearer := strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")
	ok := f.acceptAnyBearer || f.validAccess[bearer]
	api := f.api
	f.mu.Unlock()
	f.events.add("use " + bearer)
	if !ok {
		writeJSON(w, http.StatusUnauthorized, []ErrorItem{{Severity: "error", DataCode: "AuthorizationFailure", Message: "Access denied."}})
		return
	}
	if api == nil {
		writeJSON(w, http.StatusOK, map[string]any{"id": "x"})
		return
	}
	api(w, r, rec, n)
}

func (f *fakeSage) serveToken(w http.ResponseWriter, r *http.Request, body []byte) {
	form, err := parseForm(body)
	require.NoError(f.t, err)
	if f.token != nil && f.token(w, r, form) {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if first(form, "client_id") != testClientID || first(form, "client_secret") != testClientSecret {
		writeJSON(w, http.StatusUnauthorized, map[string]any{"error": "invalid_client"})
		return
	}
	switch first(form, "grant_type") {
	case "refresh_token":
		f.refreshes++
		if first(form, "refresh_token") != f.validRefresh {
			writeJSON(w, http.StatusBadRequest, map[string]any{"error": "invalid_grant"})
			return
		}
		writeJSON(w, http.StatusOK, f.issue())
	case "authorization_code":
		f.exchanges++
		if first(form, "code") != testCode || first(form, "redirect_uri") != testRedirect {
			writeJSON(w, http.StatusBadRequest, map[string]any{"error": "invalid_grant", "error_description": "code expired"})
			return
		}
		writeJSON(w, http.StatusOK, f.issue())
	default:
		writeJSON(w, http.StatusBadRequest, map[string]any{"error": "unsupported_grant_type"})
	}
}

func (f *fakeSage) Requests() []recorded {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]recorded(nil), f.requests...)
}

func (f *fakeSage) Refreshes() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.refreshes
}

// revokeAccess makes every access token issued so far invalid (Sage answers them 401).
func (f *fakeSage) revokeAccess() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.validAccess = map[string]bool{}
}

func parseForm(body []byte) (map[string][]string, error) {
	r, err := http.NewRequest(http.MethodPost, "/", bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if err := r.ParseForm(); err != nil {
		return nil, err
	}
	return r.PostForm, nil
}

func first(m map[string][]string, k string) string {
	if v := m[k]; len(v) > 0 {
		return v[0]
	}
	return ""
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeRaw(w http.ResponseWriter, status int, body string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = io.WriteString(w, body)
}

// fixture reads testdata/<name>.
func fixture(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	require.NoError(t, err)
	return b
}

// testEnv is a Client wired to a fakeSage with a fake clock, tiny backoffs and a captured log.
type testEnv struct {
	sage   *fakeSage
	clock  *fakeClock
	client *Client
	store  *fakeStore
	logs   *syncBuffer
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func newTestEnv(t *testing.T, mutate ...func(*Config)) *testEnv {
	t.Helper()
	e := &testEnv{sage: newFakeSage(t), clock: newFakeClock(), logs: &syncBuffer{}}
	e.store = &fakeStore{events: e.sage.events}
	cfg := Config{
		APIURL:            e.sage.srv.URL + "/v3.1",
		AuthURL:           e.sage.srv.URL + "/oauth2/auth/central?filter=apiv3.1",
		TokenURL:          e.sage.srv.URL + "/token",
		ClientID:          testClientID,
		ClientSecret:      testClientSecret,
		RedirectURL:       testRedirect,
		RequestsPerMinute: 60000,
		MaxAttempts:       4,
		Timeout:           5 * time.Second,
	}
	for _, m := range mutate {
		m(&cfg)
	}
	logger := slog.New(slog.NewJSONHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	e.client = New(cfg,
		WithHTTPClient(e.sage.srv.Client()),
		WithClock(e.clock),
		WithLogger(logger),
		WithBackoff(time.Millisecond, 8*time.Millisecond, time.Minute),
	)
	return e
}

// session opens a Session for company 1 and testBusiness with a fresh seeded token.
func (e *testEnv) session() *Session {
	tok := e.sage.seed(e.clock.Now().Add(5 * time.Minute))
	return e.client.Session(Connection{CompanyID: 1, BusinessID: testBusiness, Token: tok}, e.store)
}

// mustRead reads testdata/<name> for table definitions, panicking if it is missing.
func mustRead(name string) []byte {
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		panic(err)
	}
	return b
}

// assertNoLeak fails if s contains any of the tests' secrets.
func assertNoLeak(t *testing.T, s string) {
	t.Helper()
	for _, m := range leakMarkers {
		assert.NotContains(t, s, m, "a secret leaked")
	}
}
