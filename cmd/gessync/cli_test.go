package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/gessync/gessync/daemon"
)

func envOf(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func TestParseWebConfigNamesTheVariable(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		env     map[string]string
		addr    string
		wantVar string
	}{
		{name: "ok - loopback needs no token", addr: "127.0.0.1:8080"},
		{name: "ok - localhost needs no token", addr: "localhost:8080"},
		{name: "ok - ::1 needs no token", addr: "[::1]:8080"},
		{name: "ok - all interfaces with a token", addr: "0.0.0.0:8080", env: map[string]string{"GESSYNC_ADMIN_TOKEN": "0123456789abcdef0123"}},
		{name: "error - all interfaces without a token", addr: "0.0.0.0:8080", wantVar: "GESSYNC_ADMIN_TOKEN"},
		{name: "error - every interface (empty host) without a token", addr: ":8080", wantVar: "GESSYNC_ADMIN_TOKEN"},
		{name: "error - a LAN address without a token", addr: "10.0.0.5:8080", wantVar: "GESSYNC_ADMIN_TOKEN"},
		{name: "error - a short token", addr: "127.0.0.1:8080", env: map[string]string{"GESSYNC_ADMIN_TOKEN": "short"}, wantVar: "GESSYNC_ADMIN_TOKEN"},
		{name: "error - open paths that are not paths", addr: "127.0.0.1:8080", env: map[string]string{"GESSYNC_OPEN_PATHS": "healthz"}, wantVar: "GESSYNC_OPEN_PATHS"},
		{name: "error - a GES URL template without {id}", addr: "127.0.0.1:8080", env: map[string]string{"GESSYNC_GES_URL_TEMPLATE": "https://app.example/{table}"}, wantVar: "GESSYNC_GES_URL_TEMPLATE"},
		{name: "error - a relative GES URL template", addr: "127.0.0.1:8080", env: map[string]string{"GESSYNC_GES_URL_TEMPLATE": "/{table}/{id}"}, wantVar: "GESSYNC_GES_URL_TEMPLATE"},
		{name: "error - a bad ready lag", addr: "127.0.0.1:8080", env: map[string]string{"GESSYNC_READY_MAX_LAG": "soon"}, wantVar: "GESSYNC_READY_MAX_LAG"},
		{name: "error - a previous token key that is not a key", addr: "127.0.0.1:8080", env: map[string]string{"GESSYNC_TOKEN_KEY": "x", "GESSYNC_TOKEN_KEY_PREVIOUS": "c2hvcnQ="}, wantVar: "GESSYNC_TOKEN_KEY_PREVIOUS"},
		{name: "error - a previous token key without a new one", addr: "127.0.0.1:8080", env: map[string]string{"GESSYNC_TOKEN_KEY_PREVIOUS": "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="}, wantVar: "GESSYNC_TOKEN_KEY"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseWebConfig(envOf(tc.env), tc.addr)
			if tc.wantVar == "" {
				require.NoError(t, err)
				return
			}
			var ce *ConfigError
			require.ErrorAs(t, err, &ce)
			require.Equal(t, tc.wantVar, ce.Var)
			require.True(t, strings.HasPrefix(err.Error(), tc.wantVar+": "), err.Error())
		})
	}
	c, err := parseWebConfig(envOf(map[string]string{"GESSYNC_OPEN_PATHS": "none", "GESSYNC_READY_MAX_LAG": "90s"}), "127.0.0.1:1")
	require.NoError(t, err)
	require.Empty(t, c.OpenPaths)
	require.Equal(t, 90*time.Second, c.ReadyMaxLag)
}

func TestRunRefusesToServeOffLoopbackWithoutAdminToken(t *testing.T) {
	t.Parallel()
	err := run(context.Background(), []string{"run"}, io.Discard, io.Discard, envOf(map[string]string{
		"GES_DATABASE_URL": "postgres://127.0.0.1:1/ges", "GESSYNC_HTTP_ADDR": "0.0.0.0:8080"}))
	var ce *ConfigError
	require.ErrorAs(t, err, &ce)
	require.Equal(t, "GESSYNC_ADMIN_TOKEN", ce.Var)
}

// A setting given as a flag is held to the rules of its variable: a bad one stops start-up with
// an error naming the variable, as the environment's would.
func TestRunFlagsAreCheckedLikeTheirVariables(t *testing.T) {
	t.Parallel()
	for flag, variable := range map[string]string{
		"--stop-grace=0": "GESSYNC_STOP_GRACE", "--stop-grace=-1s": "GESSYNC_STOP_GRACE",
		"--lanes=0": "GESSYNC_LANES", "--lanes=-3": "GESSYNC_LANES",
		"--park-after=0": "GESSYNC_PARK_AFTER", "--sage-requests-per-minute=0": "GESSYNC_SAGE_REQUESTS_PER_MINUTE",
		"--contact-index=-1": "GESSYNC_CONTACT_INDEX", "--contact-index=20001": "GESSYNC_CONTACT_INDEX",
	} {
		err := run(context.Background(), []string{"run", flag}, io.Discard, io.Discard, envOf(map[string]string{
			"GES_DATABASE_URL": "postgres://127.0.0.1:1/ges"}))
		var ce *ConfigError
		require.ErrorAs(t, err, &ce, flag)
		require.Equal(t, variable, ce.Var, flag)
	}
}

// fakeAPI answers the API calls the CLI makes and records them.
func fakeAPI(t *testing.T, token string) (*httptest.Server, *[]string) {
	t.Helper()
	var calls []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if token != "" && r.Header.Get("Authorization") != "Bearer "+token {
			w.WriteHeader(401)
			_, _ = io.WriteString(w, `{"error":"sign in first"}`)
			return
		}
		body, _ := io.ReadAll(r.Body)
		calls = append(calls, strings.TrimSpace(r.Method+" "+r.URL.RequestURI()+" "+string(body)))
		w.Header().Set("Content-Type", "application/json")
		switch {
		case r.URL.Path == "/api/status":
			last := time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC)
			_ = json.NewEncoder(w).Encode(daemon.Status{Slot: "gessync", ReplicationConnected: true, CheckpointLSN: "0/16B3748",
				Companies: []daemon.CompanyStatus{{CompanyID: 1, Connected: true, State: "connected", BusinessName: "Hartley Heating Ltd", Synced: 5, OpenErrors: 1, LastSyncAt: &last}}})
		case r.URL.Path == "/api/errors":
			_, _ = io.WriteString(w, `[{"id":7,"company_id":1,"table":"customers","ges_id":12,"level":"error","message":"This customer has neither a name nor a company name","action":"Add a name in GES","created_at":"2026-11-25T10:00:00Z"}]`)
		case r.URL.Path == "/api/companies/1/settings" && r.Method == http.MethodPatch:
			if strings.Contains(string(body), `"sync_customers":false`) {
				w.WriteHeader(400)
				_, _ = io.WriteString(w, `{"error":"sync_invoices: syncing invoices needs syncing customers","field":"sync_invoices"}`)
				return
			}
			_ = json.NewEncoder(w).Encode(daemon.CompanySettings{CompanyID: 1, State: "connected", SyncCustomers: true, SyncInvoices: true, Tier: "start"})
		case r.URL.Path == "/api/retry":
			_, _ = io.WriteString(w, `{"queued":3}`)
		default:
			_, _ = io.WriteString(w, `{}`)
		}
	}))
	t.Cleanup(srv.Close)
	return srv, &calls
}

func runCLIForTest(t *testing.T, url, token string, args ...string) (string, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	err := run(context.Background(), args, &out, &errOut, envOf(map[string]string{"GESSYNC_URL": url, "GESSYNC_ADMIN_TOKEN": token}))
	return out.String() + errOut.String(), err
}

func TestCLIPrintsTablesAndJSONAndSendsTheRightCalls(t *testing.T) {
	t.Parallel()
	srv, calls := fakeAPI(t, "cli-token-0123456789")
	tok := "cli-token-0123456789"

	out, err := runCLIForTest(t, srv.URL, tok, "status")
	require.NoError(t, err)
	require.Regexp(t, `(?m)^COMPANY\s+STATE\s+BUSINESS`, out)
	require.Regexp(t, `(?m)^1\s+connected\s+Hartley Heating Ltd\s+5\s+0\s+0\s+0\s+1\s`, out)

	out, err = runCLIForTest(t, srv.URL, tok, "status", "--json")
	require.NoError(t, err)
	var st daemon.Status
	require.NoError(t, json.Unmarshal([]byte(out), &st))
	require.Equal(t, "0/16B3748", st.CheckpointLSN)

	out, err = runCLIForTest(t, srv.URL, tok, "errors", "--company", "1")
	require.NoError(t, err)
	require.Contains(t, out, "customers/12")
	require.Contains(t, out, "neither a name nor a company name")

	out, err = runCLIForTest(t, srv.URL, tok, "settings", "--company", "1", "--set", "sync_payments=off", "--set", "tier=start")
	require.NoError(t, err)
	require.Regexp(t, `(?m)^tier\s+start$`, out)

	out, err = runCLIForTest(t, srv.URL, tok, "settings", "--company", "1", "--set", "sync_customers=false")
	require.EqualError(t, err, "sync_invoices: syncing invoices needs syncing customers")

	_, err = runCLIForTest(t, srv.URL, tok, "settings", "--company", "1", "--set", "sync_customers=maybe")
	require.ErrorContains(t, err, `"maybe" is not on or off`)
	_, err = runCLIForTest(t, srv.URL, tok, "settings", "--set", "tier=start")
	require.ErrorContains(t, err, "needs --company N")

	out, err = runCLIForTest(t, srv.URL, tok, "retry", "--company", "1")
	require.NoError(t, err)
	require.Contains(t, out, "Queued 3 record(s)")
	_, err = runCLIForTest(t, srv.URL, tok, "retry", "--company", "1", "--table", "invoices", "--id", "42", "--force")
	require.NoError(t, err)
	_, err = runCLIForTest(t, srv.URL, tok, "disconnect", "--company", "1")
	require.NoError(t, err)

	require.Equal(t, []string{
		"GET /api/status",
		"GET /api/status",
		"GET /api/errors?company_id=1",
		`PATCH /api/companies/1/settings {"sync_payments":false,"tier":"start"}`,
		`PATCH /api/companies/1/settings {"sync_customers":false}`,
		"POST /api/retry?company_id=1",
		`POST /api/companies/1/resync {"table":"invoices","id":42,"force":true}`,
		"POST /api/companies/1/disconnect",
	}, *calls)
}

func TestCLIConfigurationErrorsNameTheVariable(t *testing.T) {
	t.Parallel()
	srv, _ := fakeAPI(t, "cli-token-0123456789")
	var ce *ConfigError
	_, err := runCLIForTest(t, srv.URL, "", "status")
	require.True(t, errors.As(err, &ce))
	require.Equal(t, "GESSYNC_ADMIN_TOKEN", ce.Var)
	_, err = runCLIForTest(t, srv.URL, "wrong-token-0123456789", "status")
	require.True(t, errors.As(err, &ce))
	require.Contains(t, err.Error(), "GESSYNC_ADMIN_TOKEN: refused")
	_, err = runCLIForTest(t, "http://127.0.0.1:1", "", "status")
	require.ErrorContains(t, err, "GESSYNC_URL")
}

// GESSYNC_CONTACT_INDEX is the daemon's ContactIndex, except that the operator's 0 turns the
// index off; a runConfig built in code (the demo's) leaves it 0, the daemon's default.
func TestContactIndexSetting(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		env, flag string
		want      int
	}{
		{want: 5000},
		{env: "200", want: 200},
		{env: "0", want: -1},
		{env: "200", flag: "--contact-index=0", want: -1},
		{flag: "--contact-index=7", want: 7},
		{env: "20000", want: 20000},
	} {
		env := map[string]string{"GES_DATABASE_URL": "postgres://127.0.0.1:1/ges"}
		if tc.env != "" {
			env["GESSYNC_CONTACT_INDEX"] = tc.env
		}
		args := []string{}
		if tc.flag != "" {
			args = append(args, tc.flag)
		}
		c, err := parseRun(args, envOf(env), io.Discard)
		require.NoError(t, err, tc)
		require.Equal(t, tc.want, c.ContactIndex, tc)
	}
	require.Zero(t, runConfig{}.ContactIndex, "zero: the daemon's default, as the demo runs")
	_, err := parseRun(nil, envOf(map[string]string{"GES_DATABASE_URL": "postgres://127.0.0.1:1/ges", "GESSYNC_CONTACT_INDEX": "1000000"}), io.Discard)
	var ce *ConfigError
	require.ErrorAs(t, err, &ce)
	require.Equal(t, "GESSYNC_CONTACT_INDEX", ce.Var)
	require.Contains(t, err.Error(), "from 0 to 20000")
}

// gessync --help (or -h, or help) lists the commands; run -h lists run's settings.
func TestHelpListsTheCommands(t *testing.T) {
	t.Parallel()
	for _, arg := range []string{"help", "-h", "-help", "--help"} {
		var out bytes.Buffer
		require.NoError(t, run(context.Background(), []string{arg}, &out, io.Discard, envOf(nil)), arg)
		require.Contains(t, out.String(), "usage: gessync [run|sandbox|demo|backfill", arg)
	}
	var errOut bytes.Buffer
	err := run(context.Background(), []string{"run", "-h"}, io.Discard, &errOut, envOf(map[string]string{"GES_DATABASE_URL": "postgres://127.0.0.1:1/ges"}))
	require.Error(t, err)
	require.Contains(t, errOut.String(), "-contact-index", "run -h lists run's flags")
}
