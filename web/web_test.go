package web

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/oauth2"

	"github.com/gessync/gessync/daemon"
	"github.com/gessync/gessync/state"
)

const adminToken = "admin-S3CR3T-0123456789abcdef"

// fakeDaemon is a Daemon whose answers a test scripts; calls are recorded.
type fakeDaemon struct {
	mu       sync.Mutex
	ready    daemon.Readiness
	entries  []state.Entry
	settings daemon.CompanySettings
	update   func(daemon.SettingsUpdate) (daemon.CompanySettings, error)
	calls    []string
	// bankCalls counts BankAccounts calls (the Sage calls the choice cache saves).
	bankCalls atomic.Int32
}

func (f *fakeDaemon) record(s string) {
	f.mu.Lock()
	f.calls = append(f.calls, s)
	f.mu.Unlock()
}

func (f *fakeDaemon) Calls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.calls...)
}

func (f *fakeDaemon) Status(context.Context) (daemon.Status, error) {
	return daemon.Status{Slot: "gessync", Companies: []daemon.CompanyStatus{{CompanyID: 1, Connected: true, State: "connected", BusinessName: "Hartley Heating Ltd", OpenErrors: 1}}}, nil
}
func (f *fakeDaemon) Ready(context.Context, time.Duration) daemon.Readiness { return f.ready }
func (f *fakeDaemon) Connect(_ context.Context, id int64, tok *oauth2.Token) (daemon.ConnectResult, error) {
	f.record("connect " + tok.AccessToken)
	return daemon.ConnectResult{CompanyID: id, BusinessName: "Hartley Heating Ltd", BankAccount: "Current Account"}, nil
}
func (f *fakeDaemon) Settings(context.Context, int64) (daemon.CompanySettings, error) {
	return f.settings, nil
}
func (f *fakeDaemon) UpdateSettings(_ context.Context, _ int64, u daemon.SettingsUpdate) (daemon.CompanySettings, error) {
	b, _ := json.Marshal(u)
	f.record("update " + string(b))
	return f.update(u)
}
func (f *fakeDaemon) Businesses(context.Context, int64) ([]daemon.Choice, error) {
	return []daemon.Choice{{ID: "b1", Name: "Hartley Heating Ltd"}}, nil
}
func (f *fakeDaemon) BankAccounts(context.Context, int64) ([]daemon.Choice, error) {
	f.bankCalls.Add(1)
	return []daemon.Choice{{ID: "ba1", Name: "Current Account", Detail: "CHECKING"}, {ID: "ba2", Name: "Takings", Detail: "CHECKING"}}, nil
}
func (f *fakeDaemon) LedgerAccounts(context.Context, int64) ([]daemon.Choice, error) {
	return []daemon.Choice{{ID: "l4000", Name: "Sales Type A", Detail: "4000"}}, nil
}
func (f *fakeDaemon) Disconnect(_ context.Context, id int64) error {
	f.record("disconnect")
	return nil
}
func (f *fakeDaemon) Entries(context.Context, state.LogQuery) ([]state.Entry, error) {
	return f.entries, nil
}
func (f *fakeDaemon) Resync(_ context.Context, company int64, table string, id int64, force bool) error {
	if force {
		f.record("resync " + table)
	} else {
		f.record("retry " + table)
	}
	return nil
}
func (f *fakeDaemon) RetryOpen(context.Context, int64) (int, error) { return 0, nil }

// fakeStates is single-use OAuth state storage.
type fakeStates struct {
	mu     sync.Mutex
	states map[string]int64
}

func (s *fakeStates) CreateOAuthState(_ context.Context, st string, company int64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.states[st] = company
	return nil
}

func (s *fakeStates) ConsumeOAuthState(_ context.Context, st string, _ time.Duration) (int64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.states[st]
	if !ok {
		return 0, state.ErrBadState
	}
	delete(s.states, st)
	return c, nil
}

type fakeOAuth struct{ authURL string }

func (o fakeOAuth) AuthCodeURL(st string) string { return o.authURL + "?state=" + st }
func (o fakeOAuth) Exchange(context.Context, string) (*oauth2.Token, error) {
	return &oauth2.Token{AccessToken: "access-from-code"}, nil
}

type testServer struct {
	*httptest.Server
	d   *fakeDaemon
	web *Server
}

func newServer(t *testing.T, mutate func(*Server)) *testServer {
	t.Helper()
	d := &fakeDaemon{
		ready:    daemon.Readiness{Ready: true, ReplicationConnected: true, StateReachable: true},
		settings: daemon.CompanySettings{CompanyID: 1, Connected: true, State: "connected", BusinessID: "b1", BusinessName: "Hartley Heating Ltd", SyncCustomers: true, SyncInvoices: true, SyncPayments: true, BankAccountID: "ba1", Tier: "standard"},
	}
	d.update = func(u daemon.SettingsUpdate) (daemon.CompanySettings, error) {
		if u.SyncInvoices != nil && *u.SyncInvoices && u.SyncCustomers != nil && !*u.SyncCustomers {
			return d.settings, &daemon.SettingsError{Field: "sync_invoices", Problem: "syncing invoices needs syncing customers"}
		}
		return d.settings, nil
	}
	ws := &Server{Daemon: d, States: &fakeStates{states: map[string]int64{}}, Metrics: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "gessync_up 1\n")
	})}
	if mutate != nil {
		mutate(ws)
	}
	srv := httptest.NewServer(nil)
	ws.PublicURL = srv.URL
	if ws.OAuth == nil {
		ws.OAuth = fakeOAuth{authURL: srv.URL + "/fake-sage/authorize"}
	}
	mux := http.NewServeMux()
	// The fake Sage authorize page approves at once, as the sandbox does.
	mux.HandleFunc("/fake-sage/authorize", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/oauth/callback?code=c0de&state="+url.QueryEscape(r.URL.Query().Get("state")), http.StatusFound)
	})
	mux.Handle("/", ws.Handler())
	srv.Config.Handler = mux
	t.Cleanup(srv.Close)
	return &testServer{Server: srv, d: d, web: ws}
}

func (s *testServer) do(t *testing.T, c *http.Client, method, path, bearer string, body io.Reader, hdr ...string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(method, s.URL+path, body)
	require.NoError(t, err)
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	if c == nil {
		c = noRedirects()
	}
	resp, err := c.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

func noRedirects() *http.Client {
	return &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

func TestReadyzSaysWhyItIsNotReady(t *testing.T) {
	t.Parallel()
	s := newServer(t, nil)
	resp, body := s.do(t, nil, "GET", "/readyz", "", nil)
	require.Equal(t, 200, resp.StatusCode, body)

	s.d.ready = daemon.Readiness{ReplicationConnected: false, StateReachable: true, Problems: []string{"replication is not connected"}}
	resp, body = s.do(t, nil, "GET", "/readyz", "", nil)
	require.Equal(t, 503, resp.StatusCode)
	var r daemon.Readiness
	require.NoError(t, json.Unmarshal([]byte(body), &r))
	require.False(t, r.Ready)
	require.Equal(t, []string{"replication is not connected"}, r.Problems)
}

func TestAdminTokenGuardsAllButOpenPaths(t *testing.T) {
	t.Parallel()
	s := newServer(t, func(ws *Server) { ws.AdminToken = adminToken })
	for _, tc := range []struct {
		name, method, path, bearer string
		want                       int
	}{
		{"ok - healthz is open", "GET", "/healthz", "", 200},
		{"ok - readyz is open", "GET", "/readyz", "", 200},
		{"ok - metrics is open", "GET", "/metrics", "", 200},
		{"error - status needs the token", "GET", "/status", "", 401},
		{"error - a wrong token is refused", "GET", "/status", "not-the-token-at-all", 401},
		{"ok - status with the token", "GET", "/status", adminToken, 200},
		{"error - the API needs the token", "GET", "/api/companies/1/settings", "", 401},
		{"ok - the API with the token", "GET", "/api/companies/1/settings", adminToken, 200},
		{"error - connect needs the token or a signed link", "GET", "/connect/sage?company_id=1", "", 401},
		{"error - a page without the token (not a browser)", "GET", "/companies/1", "", 401},
		{"ok - a page with the bearer token", "GET", "/companies/1", adminToken, 200},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := s.do(t, nil, tc.method, tc.path, tc.bearer, nil)
			require.Equal(t, tc.want, resp.StatusCode, body)
			require.NotContains(t, body, adminToken)
		})
	}
	resp, _ := s.do(t, nil, "GET", "/companies/1", "", nil, "Accept", "text/html")
	require.Equal(t, http.StatusSeeOther, resp.StatusCode, "a browser is sent to sign in")
	require.Equal(t, "/signin?next=%2Fcompanies%2F1", resp.Header.Get("Location"))
}

func TestOpenPathsAreConfigurable(t *testing.T) {
	t.Parallel()
	s := newServer(t, func(ws *Server) { ws.AdminToken = adminToken; ws.OpenPaths = []string{"/healthz"} })
	resp, _ := s.do(t, nil, "GET", "/metrics", "", nil)
	require.Equal(t, 401, resp.StatusCode)
	resp, _ = s.do(t, nil, "GET", "/metrics", adminToken, nil)
	require.Equal(t, 200, resp.StatusCode)
	resp, _ = s.do(t, nil, "GET", "/healthz", "", nil)
	require.Equal(t, 200, resp.StatusCode)
}

func TestSignInSetsASessionCookieForThePages(t *testing.T) {
	t.Parallel()
	s := newServer(t, func(ws *Server) { ws.AdminToken = adminToken; ws.SecureCookies = true })
	jar, _ := cookiejar.New(nil)
	c := &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}

	resp, body := s.do(t, c, "POST", "/signin", "", strings.NewReader("token=wrong&next=/companies/1"), "Content-Type", "application/x-www-form-urlencoded")
	require.Equal(t, 401, resp.StatusCode)
	require.Contains(t, body, "not the admin token")
	require.Empty(t, resp.Cookies())

	resp, _ = s.do(t, c, "POST", "/signin", "", strings.NewReader("token="+url.QueryEscape(adminToken)+"&next=/companies/1"), "Content-Type", "application/x-www-form-urlencoded")
	require.Equal(t, http.StatusSeeOther, resp.StatusCode)
	require.Equal(t, "/companies/1", resp.Header.Get("Location"))
	cookies := resp.Cookies()
	require.Len(t, cookies, 1)
	ck := cookies[0]
	require.Equal(t, sessionCookie, ck.Name)
	require.True(t, ck.HttpOnly)
	require.True(t, ck.Secure)
	require.Equal(t, http.SameSiteLaxMode, ck.SameSite)
	require.NotContains(t, ck.Value, adminToken)

	// The cookie opens the pages (the jar ignores Secure cookies over http, so send it by hand).
	resp, body = s.do(t, nil, "GET", "/companies/1", "", nil, "Cookie", ck.Name+"="+ck.Value)
	require.Equal(t, 200, resp.StatusCode, body)
	// A forged or altered cookie does not.
	forged := ck.Value[:len(ck.Value)-1] + "0"
	if forged == ck.Value {
		forged = ck.Value[:len(ck.Value)-1] + "1"
	}
	resp, _ = s.do(t, nil, "GET", "/api/companies/1/settings", "", nil, "Cookie", ck.Name+"="+forged)
	require.Equal(t, 401, resp.StatusCode)
	// An open redirect through next is refused.
	resp, _ = s.do(t, nil, "POST", "/signin", "", strings.NewReader("token="+url.QueryEscape(adminToken)+"&next=//evil.example/"), "Content-Type", "application/x-www-form-urlencoded")
	require.Equal(t, "/", resp.Header.Get("Location"))
}

func TestSessionExpires(t *testing.T) {
	t.Parallel()
	now := time.Now()
	s := newServer(t, func(ws *Server) { ws.AdminToken = adminToken; ws.now = func() time.Time { return now } })
	resp, _ := s.do(t, nil, "POST", "/signin", "", strings.NewReader("token="+url.QueryEscape(adminToken)), "Content-Type", "application/x-www-form-urlencoded")
	ck := resp.Cookies()[0]
	resp, _ = s.do(t, nil, "GET", "/api/companies/1/settings", "", nil, "Cookie", ck.Name+"="+ck.Value)
	require.Equal(t, 200, resp.StatusCode)
	now = now.Add(13 * time.Hour)
	resp, _ = s.do(t, nil, "GET", "/api/companies/1/settings", "", nil, "Cookie", ck.Name+"="+ck.Value)
	require.Equal(t, 401, resp.StatusCode)
}

func TestSignedConnectLinkWorksWithoutTheTokenUntilItExpires(t *testing.T) {
	t.Parallel()
	now := time.Now()
	s := newServer(t, func(ws *Server) { ws.AdminToken = adminToken; ws.now = func() time.Time { return now } })
	link, exp := s.web.ConnectLink(7)
	require.WithinDuration(t, now.Add(7*24*time.Hour), exp, time.Second)
	u, err := url.Parse(link)
	require.NoError(t, err)

	jar, _ := cookiejar.New(nil)
	resp, body := s.do(t, &http.Client{Jar: jar}, "GET", u.RequestURI(), "", nil)
	require.Equal(t, 200, resp.StatusCode, body)
	require.Contains(t, body, "Connected to Sage")
	require.Equal(t, []string{"connect access-from-code"}, s.d.Calls())

	// Another company's id with the same signature is refused.
	q := u.Query()
	q.Set("company_id", "8")
	resp, _ = s.do(t, nil, "GET", "/connect/sage?"+q.Encode(), "", nil)
	require.Equal(t, 401, resp.StatusCode)
	// So is the link after it expired.
	now = now.Add(8 * 24 * time.Hour)
	resp, _ = s.do(t, nil, "GET", u.RequestURI(), "", nil)
	require.Equal(t, 401, resp.StatusCode)
}

func TestOAuthStateIsBoundToTheBrowserAndSingleUse(t *testing.T) {
	t.Parallel()
	s := newServer(t, nil)
	// Start in one browser, stop at Sage's redirect back.
	resp, _ := s.do(t, nil, "GET", "/connect/sage?company_id=1", "", nil)
	require.Equal(t, http.StatusFound, resp.StatusCode)
	auth, err := url.Parse(resp.Header.Get("Location"))
	require.NoError(t, err)
	st := auth.Query().Get("state")
	require.Len(t, st, 64)
	cookies := resp.Cookies()
	require.Len(t, cookies, 1)
	require.Equal(t, "/oauth/callback", cookies[0].Path)
	require.True(t, cookies[0].HttpOnly)

	// The callback opened in another browser (no cookie) is refused and connects nothing.
	resp, body := s.do(t, nil, "GET", "/oauth/callback?code=c0de&state="+st, "", nil)
	require.Equal(t, 400, resp.StatusCode)
	require.Contains(t, body, "not started in this browser")
	require.Empty(t, s.d.Calls())

	// The browser that started it connects, once.
	ck := cookies[0].Name + "=" + cookies[0].Value
	resp, body = s.do(t, nil, "GET", "/oauth/callback?code=c0de&state="+st, "", nil, "Cookie", ck)
	require.Equal(t, 200, resp.StatusCode, body)
	require.Equal(t, []string{"connect access-from-code"}, s.d.Calls())
	resp, body = s.do(t, nil, "GET", "/oauth/callback?code=c0de&state="+st, "", nil, "Cookie", ck)
	require.Equal(t, 400, resp.StatusCode)
	require.Contains(t, body, "used already")
	require.Len(t, s.d.Calls(), 1)
}

func TestCrossSiteWritesAreRefused(t *testing.T) {
	t.Parallel()
	s := newServer(t, nil)
	resp, _ := s.do(t, nil, "POST", "/companies/1/disconnect", "", nil, "Origin", "https://evil.example")
	require.Equal(t, 403, resp.StatusCode)
	require.Empty(t, s.d.Calls())
	resp, _ = s.do(t, nil, "POST", "/companies/1/disconnect", "", nil, "Origin", s.URL)
	require.Equal(t, http.StatusSeeOther, resp.StatusCode)
	require.Equal(t, []string{"disconnect"}, s.d.Calls())
}

func TestSettingsAPIRefusesInvoicesWithoutCustomersNamingTheField(t *testing.T) {
	t.Parallel()
	s := newServer(t, nil)
	resp, body := s.do(t, nil, "PATCH", "/api/companies/1/settings", "", strings.NewReader(`{"sync_customers":false,"sync_invoices":true}`))
	require.Equal(t, 400, resp.StatusCode)
	var e apiError
	require.NoError(t, json.Unmarshal([]byte(body), &e))
	require.Equal(t, "sync_invoices", e.Field)
	require.Contains(t, e.Error, "needs syncing customers")

	resp, body = s.do(t, nil, "PATCH", "/api/companies/1/settings", "", strings.NewReader(`{"sync_payment":false}`))
	require.Equal(t, 400, resp.StatusCode, "an unknown setting is refused")
	require.Contains(t, body, "sync_payment")
}

func TestSettingsFormSendsTogglesAndOnlyChangedChoices(t *testing.T) {
	t.Parallel()
	s := newServer(t, nil)
	form := url.Values{"sync_customers": {"on"}, "sync_invoices": {"on"}, "business_id": {"b1"}, "bank_account_id": {"ba2"}, "sales_ledger_account_id": {""}, "tier": {"standard"}}
	resp, body := s.do(t, nil, "POST", "/companies/1/settings", "", strings.NewReader(form.Encode()), "Content-Type", "application/x-www-form-urlencoded")
	require.Equal(t, http.StatusSeeOther, resp.StatusCode, body)
	require.Equal(t, "/companies/1?done=saved", resp.Header.Get("Location"))
	require.Equal(t, []string{`update {"sync_customers":true,"sync_invoices":true,"sync_payments":false,"bank_account_id":"ba2"}`}, s.d.Calls())

	form = url.Values{"sync_invoices": {"on"}}
	resp, body = s.do(t, nil, "POST", "/companies/1/settings", "", strings.NewReader(form.Encode()), "Content-Type", "application/x-www-form-urlencoded")
	require.Equal(t, 400, resp.StatusCode)
	require.Contains(t, body, "syncing invoices needs syncing customers")
}

func TestCompanyPageShowsTheFailureWithGESLinkSageWordsAndButtons(t *testing.T) {
	t.Parallel()
	s := newServer(t, func(ws *Server) { ws.GESURLTemplate = "https://app.example/{table}/{id}?company={company_id}" })
	now := time.Now()
	s.d.entries = []state.Entry{
		{ID: 3, CompanyID: 1, Table: "invoices", GESID: 1042, Level: state.LevelError, Code: "sage.RecordInvalid",
			Message: "Sage already has an invoice with this number.", SageMessage: "invoice_number Artefact number must be unique",
			Action: "Give the invoice a different number in GES.", CreatedAt: now},
		{ID: 2, CompanyID: 1, Table: "customers", GESID: 10, Level: state.LevelError, Code: "invalid.name", Message: "Old problem", CreatedAt: now, ResolvedAt: &now},
	}
	resp, body := s.do(t, nil, "GET", "/companies/1", "", nil)
	require.Equal(t, 200, resp.StatusCode)
	open := body[strings.Index(body, `id="open"`):strings.Index(body, `id="log"`)]
	require.Contains(t, open, `href="https://app.example/invoices/1042?company=1"`)
	require.Contains(t, open, "Sage already has an invoice with this number.")
	require.Contains(t, open, "invoice_number Artefact number must be unique")
	require.Contains(t, open, "Give the invoice a different number in GES.")
	require.Contains(t, open, `class="retry"`)
	require.Contains(t, open, `class="resync"`)
	require.NotContains(t, open, "Old problem", "a resolved entry is not open")
	require.Contains(t, body, `value="ba2"`, "the bank accounts to choose from")

	resp, _ = s.do(t, nil, "POST", "/companies/1/resync", "", strings.NewReader("table=invoices&ges_id=1042&force=1"), "Content-Type", "application/x-www-form-urlencoded")
	require.Equal(t, http.StatusSeeOther, resp.StatusCode)
	resp, _ = s.do(t, nil, "POST", "/companies/1/resync", "", strings.NewReader("table=invoices&ges_id=1042"), "Content-Type", "application/x-www-form-urlencoded")
	require.Equal(t, http.StatusSeeOther, resp.StatusCode)
	require.Equal(t, []string{"resync invoices", "retry invoices"}, s.d.Calls())

	var es []Entry
	_, body = s.do(t, nil, "GET", "/api/errors?company_id=1", "", nil)
	require.NoError(t, json.Unmarshal([]byte(body), &es))
	require.Equal(t, "https://app.example/invoices/1042?company=1", es[0].GESURL)
}

func TestAPIFailureStatuses(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		err  error
		want int
	}{
		{&daemon.SettingsError{Field: "tier"}, 400},
		{daemon.ErrNotConnected, 409},
		{errors.Join(daemon.ErrRowGone), 404},
		{errors.New("boom"), 500},
	} {
		code, _ := failure(tc.err)
		require.Equal(t, tc.want, code, tc.err.Error())
	}
}

func TestChoicesAreCachedBetweenPageViewsUntilSettingsChange(t *testing.T) {
	t.Parallel()
	s := newServer(t, nil)
	count := func() int { return int(s.d.bankCalls.Load()) }
	for range 3 {
		resp, _ := s.do(t, nil, "GET", "/companies/1", "", nil)
		require.Equal(t, 200, resp.StatusCode)
	}
	resp, _ := s.do(t, nil, "GET", "/api/companies/1/bank_accounts", "", nil)
	require.Equal(t, 200, resp.StatusCode)
	require.Equal(t, 1, count(), "Sage is asked once for repeated views")
	resp, _ = s.do(t, nil, "POST", "/companies/1/settings", "", strings.NewReader("sync_customers=on"), "Content-Type", "application/x-www-form-urlencoded")
	require.Equal(t, http.StatusSeeOther, resp.StatusCode)
	s.do(t, nil, "GET", "/companies/1", "", nil)
	require.Equal(t, 2, count(), "a settings change asks again")
}
