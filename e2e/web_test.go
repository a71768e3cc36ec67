package e2e_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/stretchr/testify/require"

	"github.com/gessync/gessync/daemon"
	"github.com/gessync/gessync/state"
	"github.com/gessync/gessync/web"
)

// webTokenKey is the GESSYNC_TOKEN_KEY helper_test.go's start uses: the tests open state with it
// to learn the real tokens the sandbox issued.
const webTokenKey = "0123456789abcdef0123456789abcdef"

// webAdminToken is the admin token of the tests that set one.
const webAdminToken = "e2e-admin-token-0123456789abcdef"

// webStart runs the daemon like env.start, with extra environment ("NAME=value"), and waits for
// /readyz (open by default) to see replication connected.
func (e *env) webStart(extra ...string) {
	e.t.Helper()
	e.launch(extra...)
	e.eventually(20*time.Second, "replication connected (/readyz)", func() bool {
		r, ok := e.readyz()
		return ok && r.ReplicationConnected
	})
}

func (e *env) readyz() (daemon.Readiness, bool) {
	var r daemon.Readiness
	resp, err := http.Get(e.base() + "/readyz")
	if err != nil {
		return r, false
	}
	defer resp.Body.Close()
	return r, json.NewDecoder(resp.Body).Decode(&r) == nil
}

// api calls the daemon's API with the admin token (when given) and decodes the answer into out.
func (e *env) api(method, path, token string, body any, out any) int {
	e.t.Helper()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		require.NoError(e.t, err)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, e.base()+path, rd)
	require.NoError(e.t, err)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(e.t, err)
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	require.NoError(e.t, err)
	if out != nil {
		require.NoError(e.t, json.Unmarshal(data, out), string(data))
	}
	return resp.StatusCode
}

// get returns the status and body of GET path (with the admin token when given).
func (e *env) get(path, token string) (int, string) {
	e.t.Helper()
	req, err := http.NewRequest(http.MethodGet, e.base()+path, nil)
	require.NoError(e.t, err)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(e.t, err)
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// cli runs `gessync <args>` against the daemon and returns its output and error.
func (e *env) cli(token string, args ...string) (string, error) {
	e.t.Helper()
	cmd := exec.Command(binary, args...)
	cmd.Env = append(os.Environ(), "GESSYNC_URL="+e.base(), "GESSYNC_ADMIN_TOKEN="+token)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// metrics scrapes /metrics.
func (e *env) metrics() map[string]*dto.MetricFamily {
	e.t.Helper()
	resp, err := http.Get(e.base() + "/metrics")
	require.NoError(e.t, err)
	defer resp.Body.Close()
	require.Equal(e.t, 200, resp.StatusCode)
	p := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	require.NoError(e.t, err)
	return fams
}

// metric sums the samples of name whose labels include want ("k=v" pairs).
func metric(fams map[string]*dto.MetricFamily, name string, want ...string) (float64, bool) {
	f, ok := fams[name]
	if !ok {
		return 0, false
	}
	sum, found := 0.0, false
next:
	for _, m := range f.GetMetric() {
		labels := map[string]string{}
		for _, l := range m.GetLabel() {
			labels[l.GetName()] = l.GetValue()
		}
		for _, kv := range want {
			k, v, _ := strings.Cut(kv, "=")
			if labels[k] != v {
				continue next
			}
		}
		found = true
		switch {
		case m.Counter != nil:
			sum += m.GetCounter().GetValue()
		case m.Gauge != nil:
			sum += m.GetGauge().GetValue()
		case m.Untyped != nil:
			sum += m.GetUntyped().GetValue()
		}
	}
	return sum, found
}

func (e *env) openErrors(company int) []web.Entry {
	e.t.Helper()
	var es []web.Entry
	require.Equal(e.t, 200, e.api("GET", fmt.Sprintf("/api/errors?company_id=%d", company), "", nil, &es))
	return es
}

func TestMetricsReadyzAndStatusShowLagBacklogRetriesAndTokenExpiry(t *testing.T) {
	e := newEnv(t)
	e.webStart("GESSYNC_READY_MAX_LAG=1s")
	r, _ := e.readyz()
	require.True(t, r.Ready, r.Problems)
	e.connect(1)
	e.exec(customerSQL)
	e.exec(invoiceSQL)
	e.exec(paymentSQL)
	e.caughtUp()

	m := e.metrics()
	for _, tc := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"gessync_changes_total", []string{"table=customers", "outcome=synced"}, 1},
		{"gessync_changes_total", []string{"table=invoices", "outcome=synced"}, 1},
		{"gessync_changes_total", []string{"table=payments", "outcome=synced"}, 1},
		{"gessync_changes_total", []string{"outcome=failed"}, 0},
		{"gessync_sage_requests_total", []string{"method=POST", "endpoint=contacts", "status=201"}, 1},
		{"gessync_sage_requests_total", []string{"method=POST", "endpoint=sales_invoices", "status=201"}, 1},
		{"gessync_sage_requests_total", []string{"method=POST", "endpoint=token", "status=200"}, 1},
		{"gessync_replication_connected", nil, 1},
		{"gessync_backlog_changes", []string{"company_id=1"}, 0},
		{"gessync_company_connected", []string{"company_id=1"}, 1},
		{"gessync_open_errors", []string{"company_id=1"}, 0},
		{"gessync_status_up", nil, 1},
	} {
		got, ok := metric(m, tc.name, tc.labels...)
		require.True(t, ok, "%s%v missing", tc.name, tc.labels)
		require.Equal(t, tc.want, got, "%s%v", tc.name, tc.labels)
	}
	for _, name := range []string{"gessync_replication_lag_bytes", "gessync_replication_lag_seconds", "gessync_checkpoint_lsn",
		"gessync_server_wal_end_lsn", "gessync_pending_transactions", "gessync_sage_refresh_token_expiry_seconds", "gessync_sage_token_refreshes_total"} {
		_, ok := metric(m, name)
		require.True(t, ok, name)
	}
	left, _ := metric(m, "gessync_sage_refresh_token_expiry_seconds", "company_id=1")
	require.InDelta(t, (31 * 24 * time.Hour).Seconds(), left, 3600)

	st := e.status()
	require.Len(t, st.Companies, 1)
	c := st.Companies[0]
	require.NotNil(t, c.AccessTokenExpiresAt)
	require.WithinDuration(t, time.Now().Add(5*time.Minute), *c.AccessTokenExpiresAt, 2*time.Minute)
	require.NotNil(t, c.RefreshTokenExpiresAt)
	require.WithinDuration(t, time.Now().Add(31*24*time.Hour), *c.RefreshTokenExpiresAt, time.Hour)
	require.NotNil(t, c.LastSyncAt)
	require.Nil(t, c.OldestPendingAt)

	// Sage fails every call for this business: the change waits in the backlog, lag grows past
	// the bound and /readyz says so; the failed attempts are retried and counted.
	biz := e.business(0).ID
	e.setFaults(fmt.Sprintf(`{"businesses":{%q:{"fail_all":true}}}`, biz))
	e.exec(`UPDATE customers SET phone = '0113 496 0999', updated_at = now() WHERE id = 10`)
	e.eventually(30*time.Second, "the change waits in company 1's backlog and /readyz is 503", func() bool {
		st, ok := e.tryStatus()
		if !ok || len(st.Companies) != 1 || st.Companies[0].Pending != 1 || st.Companies[0].OldestPendingAt == nil {
			return false
		}
		resp, err := http.Get(e.base() + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusServiceUnavailable
	})
	r, _ = e.readyz()
	require.False(t, r.Ready)
	require.True(t, r.ReplicationConnected)
	require.True(t, r.StateReachable)
	require.Greater(t, r.LagSeconds, 1.0)
	require.Contains(t, strings.Join(r.Problems, "; "), "oldest unhandled commit")
	m = e.metrics()
	backlog, _ := metric(m, "gessync_backlog_changes", "company_id=1")
	require.Equal(t, 1.0, backlog)
	age, _ := metric(m, "gessync_backlog_oldest_seconds", "company_id=1")
	require.Greater(t, age, 0.0)
	e.eventually(30*time.Second, "retries counted", func() bool {
		n, _ := metric(e.metrics(), "gessync_sage_retries_total", "endpoint=contacts/{id}")
		fails, _ := metric(e.metrics(), "gessync_sage_requests_total", "method=PUT", "endpoint=contacts/{id}", "status=500")
		return n >= 1 && fails >= 2
	})

	e.setFaults(`{}`)
	e.caughtUp()
	e.eventually(30*time.Second, "/readyz ready again", func() bool {
		r, ok := e.readyz()
		return ok && r.Ready
	})
	require.Equal(t, "0113 496 0999", e.business(0).Contacts[0].MainContactPerson.Telephone)
}

func TestSettingsChangeWhileRunningThroughAPIAndCLI(t *testing.T) {
	e := newEnv(t)
	e.webStart()
	e.connect(1)

	var cs daemon.CompanySettings
	require.Equal(t, 200, e.api("GET", "/api/companies/1/settings", "", nil, &cs))
	require.True(t, cs.Connected)
	require.True(t, cs.SyncCustomers && cs.SyncInvoices && cs.SyncPayments)
	require.Equal(t, "standard", cs.Tier)
	require.NotEmpty(t, cs.BankAccountID)

	// Invoices without customers is refused, naming the setting, and changes nothing.
	var refusal struct{ Error, Field string }
	require.Equal(t, 400, e.api("PATCH", "/api/companies/1/settings", "", map[string]any{"sync_customers": false}, &refusal))
	require.Equal(t, "sync_invoices", refusal.Field)
	require.Contains(t, refusal.Error, "syncing invoices needs syncing customers")
	out, err := e.cli("", "settings", "--company", "1", "--set", "sync_customers=off")
	require.Error(t, err)
	require.Contains(t, out, "syncing invoices needs syncing customers")

	// Payments off from the CLI, while running: a payment after that is skipped.
	out, err = e.cli("", "settings", "--company", "1", "--set", "sync_payments=false")
	require.NoError(t, err, out)
	require.Regexp(t, `sync_payments\s+false`, out)
	e.exec(customerSQL)
	e.exec(invoiceSQL)
	e.exec(paymentSQL)
	st := e.caughtUp()
	b := e.business(0)
	require.Len(t, b.Contacts, 1)
	require.Len(t, b.SalesInvoices, 1)
	require.Empty(t, b.ContactPayments, "payments are off")
	require.Equal(t, int64(1), st.Companies[0].Skipped)

	// The bank account must be one of the business's.
	var accounts []daemon.Choice
	require.Equal(t, 200, e.api("GET", "/api/companies/1/bank_accounts", "", nil, &accounts))
	require.NotEmpty(t, accounts)
	require.Equal(t, 400, e.api("PATCH", "/api/companies/1/settings", "", map[string]any{"bank_account_id": "no-such-account"}, &refusal))
	require.Equal(t, "bank_account_id", refusal.Field)
	require.Contains(t, refusal.Error, accounts[0].Name)
	require.Equal(t, 200, e.api("PATCH", "/api/companies/1/settings", "", map[string]any{"bank_account_id": accounts[0].ID}, &cs))
	require.Equal(t, accounts[0].Name, cs.BankAccountName)

	// The sales ledger account by nominal code, and the tier, overridable and detectable again.
	require.Equal(t, 200, e.api("PATCH", "/api/companies/1/settings", "", map[string]any{"sales_ledger_nominal_code": 4000, "tier": "start"}, &cs))
	require.NotEmpty(t, cs.SalesLedgerAccountName)
	require.Equal(t, "start", cs.Tier)
	out, err = e.cli("", "settings", "--company", "1", "--set", "tier=auto", "--json")
	require.NoError(t, err, out)
	require.NoError(t, json.Unmarshal([]byte(out), &cs))
	require.Equal(t, "standard", cs.Tier)
	require.Equal(t, 400, e.api("PATCH", "/api/companies/1/settings", "", map[string]any{"tier": "gold"}, &refusal))
	require.Equal(t, "tier", refusal.Field)

	// Customers, invoices and payments all off: a customer edit stays in GES.
	out, err = e.cli("", "settings", "--company", "1", "--set", "sync_payments=off", "--set", "sync_invoices=off", "--set", "sync_customers=off")
	require.NoError(t, err, out)
	e.exec(`UPDATE customers SET email = 'not.sent@example.co.uk', updated_at = now() WHERE id = 10`)
	e.caughtUp()
	require.Equal(t, "m.bennett@example.co.uk", e.business(0).Contacts[0].MainContactPerson.Email)
}

func TestRetryResyncAndDisconnectFromTheCLI(t *testing.T) {
	e := newEnv(t)
	e.webStart("GESSYNC_GES_URL_TEMPLATE=https://ges.example/{table}/{id}")
	e.connect(1)
	biz := e.business(0).ID

	// Sage refuses the write (a read-only user): the record needs a person.
	e.setFaults(fmt.Sprintf(`{"businesses":{%q:{"read_only":true}}}`, biz))
	e.exec(customerSQL)
	e.caughtUp()
	es := e.openErrors(1)
	require.Len(t, es, 1)
	require.Equal(t, "customers", es[0].Table)
	require.Equal(t, int64(10), es[0].GESID)
	require.Equal(t, "https://ges.example/customers/10", es[0].GESURL)
	require.NotEmpty(t, es[0].SageMessage, "Sage's own words")
	require.NotEmpty(t, es[0].Action)
	out, err := e.cli("", "errors", "--company", "1")
	require.NoError(t, err, out)
	require.Contains(t, out, "customers/10")
	require.Contains(t, out, es[0].Message[:20])
	out, err = e.cli("", "errors", "--json")
	require.NoError(t, err, out)
	var fromCLI []web.Entry
	require.NoError(t, json.Unmarshal([]byte(out), &fromCLI))
	require.Equal(t, es[0].ID, fromCLI[0].ID)

	// Sage accepts writes again; Retry sends the current row and the entry clears.
	e.setFaults(`{}`)
	out, err = e.cli("", "retry", "--company", "1")
	require.NoError(t, err, out)
	require.Contains(t, out, "Queued 1 record")
	e.eventually(30*time.Second, "the entry clears after Retry", func() bool { return len(e.openErrors(1)) == 0 })
	require.Len(t, e.business(0).Contacts, 1)

	// Resync sends the record again even though nothing changed, without a duplicate.
	before := e.proxy.requests.Load()
	out, err = e.cli("", "retry", "--company", "1", "--table", "customers", "--id", "10", "--force")
	require.NoError(t, err, out)
	e.eventually(30*time.Second, "the resync reached Sage", func() bool { return e.proxy.requests.Load() > before })
	e.caughtUp()
	require.Len(t, e.business(0).Contacts, 1)
	out, err = e.cli("", "retry", "--company", "1", "--table", "customers", "--id", "999")
	require.Error(t, err)
	require.Contains(t, out, "no longer exists in GES")

	// Disconnect: the company's changes are skipped from then on.
	out, err = e.cli("", "disconnect", "--company", "1")
	require.NoError(t, err, out)
	e.exec(`INSERT INTO customers (id, company_id, first_name, last_name) VALUES (11, 1, 'Olu', 'Adeyemi')`)
	st := e.caughtUp()
	require.Len(t, e.business(0).Contacts, 1)
	out, err = e.cli("", "status")
	require.NoError(t, err, out)
	require.Regexp(t, `(?m)^1\s+not connected`, out)
	require.False(t, st.Companies[0].Connected)
}

func TestAdminTokenRequiredOffLoopback(t *testing.T) {
	cmd := exec.Command(binary, "run")
	cmd.Env = append(os.Environ(), "GES_DATABASE_URL=postgres://127.0.0.1:1/none", "GESSYNC_HTTP_ADDR=0.0.0.0:0", "GESSYNC_ADMIN_TOKEN=")
	out, err := cmd.CombinedOutput()
	require.Error(t, err)
	require.Contains(t, string(out), "GESSYNC_ADMIN_TOKEN")
	require.Contains(t, string(out), "not a loopback address")
}

func TestAFullRunWithTheAdminTokenLeaksNoToken(t *testing.T) {
	e := newEnv(t)
	e.webStart("GESSYNC_ADMIN_TOKEN=" + webAdminToken)

	// Without the token: open paths answer, the rest does not.
	code, _ := e.get("/status", "")
	require.Equal(t, 401, code)
	code, _ = e.get("/api/companies/1/settings", "")
	require.Equal(t, 401, code)
	code, _ = e.get("/metrics", "")
	require.Equal(t, 200, code)
	resp, err := http.Get(e.base() + "/connect/sage?company_id=1")
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, 401, resp.StatusCode)
	_, err = e.cli("", "status")
	require.ErrorContains(t, err, "exit status")
	out, _ := e.cli("", "status")
	require.Contains(t, out, "GESSYNC_ADMIN_TOKEN")

	// The engineer connects with a signed link, without the token.
	out, err = e.cli(webAdminToken, "connect-link", "--company", "1", "--json")
	require.NoError(t, err, out)
	var link web.ConnectLink
	require.NoError(t, json.Unmarshal([]byte(out), &link))
	jar, _ := cookiejar.New(nil)
	resp, err = (&http.Client{Jar: jar}).Get(link.URL)
	require.NoError(t, err)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.Equal(t, 200, resp.StatusCode, string(body))
	require.Contains(t, string(body), "Connected to Sage")

	e.exec(customerSQL)
	e.exec(invoiceSQL)
	e.exec(paymentSQL)
	e.exec(`INSERT INTO customers (id, company_id) VALUES (12, 1)`) // no name: an error entry
	target := e.walLSN()
	e.eventually(60*time.Second, "caught up", func() bool {
		var st daemon.Status
		if e.api("GET", "/status", webAdminToken, nil, &st) != 200 {
			return false
		}
		cp, _ := pglogrepl.ParseLSN(st.CheckpointLSN)
		return cp >= target && st.PendingTransactions == 0
	})

	// The real tokens, as state holds them (encrypted at rest with the test's key).
	ctx := context.Background()
	store, err := state.Open(ctx, state.Config{URL: e.gesURL, TokenKey: []byte(webTokenKey)})
	require.NoError(t, err)
	defer store.Close()
	conn, err := store.Connection(ctx, 1)
	require.NoError(t, err)
	secrets := []string{conn.Token.AccessToken, conn.Token.RefreshToken, webAdminToken, "test-secret-0123456789"}
	require.Len(t, conn.Token.AccessToken, 64)
	var rawAccess, rawRefresh string
	require.NoError(t, e.db.QueryRow(ctx, `SELECT access_token, refresh_token FROM gessync.connections WHERE company_id = 1`).Scan(&rawAccess, &rawRefresh))
	require.True(t, strings.HasPrefix(rawAccess, "v1:") && strings.HasPrefix(rawRefresh, "v1:"), "tokens are encrypted at rest")

	var seen []string
	for _, p := range []string{"/status", "/api/status", "/api/errors?all=1", "/api/companies/1/settings", "/companies/1", "/", "/metrics", "/readyz"} {
		code, body := e.get(p, webAdminToken)
		require.Equal(t, 200, code, p)
		seen = append(seen, body)
	}
	for _, args := range [][]string{{"status", "--json"}, {"errors", "--all"}, {"settings", "--company", "1", "--choices"}} {
		out, err := e.cli(webAdminToken, args...)
		require.NoError(t, err, out)
		seen = append(seen, out)
	}
	e.stop()
	seen = append(seen, e.logs.String())
	require.Contains(t, e.logs.String(), "company connected to Sage", "the logs are the daemon's")
	for _, s := range seen {
		for _, secret := range secrets {
			require.NotContains(t, s, secret, "a token leaked")
		}
	}
}

func TestSIGTERMFlushesTheLastSafeLSN(t *testing.T) {
	e := newEnv(t)
	e.webStart()
	e.connect(1)
	e.exec(customerSQL)
	e.exec(invoiceSQL)
	before := e.walLSN()
	e.exec(paymentSQL)
	e.caughtUp()
	e.stop()

	var stored pglogrepl.LSN
	require.NoError(t, e.db.QueryRow(context.Background(), `SELECT lsn FROM gessync.checkpoints WHERE slot = $1`, e.dbName).Scan(&stored))
	require.GreaterOrEqual(t, stored, before, "the checkpoint covers the last transaction")
	require.GreaterOrEqual(t, e.slotFlush(), stored, "the slot was told at least as much")
}

func TestTokenKeyRotationReSealsStoredTokens(t *testing.T) {
	const keyA = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=" // webTokenKey
	const keyB = "YWJjZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXowMTIzNDU="
	ctx := context.Background()
	e := newEnv(t)
	raw := func() (string, string) {
		var a, r string
		require.NoError(t, e.db.QueryRow(ctx, `SELECT access_token, refresh_token FROM gessync.connections WHERE company_id = 1`).Scan(&a, &r))
		return a, r
	}

	// No key: tokens are stored as they are (the daemon warns).
	e.webStart("GESSYNC_TOKEN_KEY=")
	e.connect(1)
	e.stop()
	a, r := raw()
	require.False(t, strings.HasPrefix(a, "v1:") || strings.HasPrefix(r, "v1:"))
	require.Contains(t, e.logs.String(), "GESSYNC_TOKEN_KEY not set")

	// A key is set: start-up seals them.
	e.webStart("GESSYNC_TOKEN_KEY=" + keyA)
	e.stop()
	sealedA, _ := raw()
	require.True(t, strings.HasPrefix(sealedA, "v1:"))

	// Rotation: the new key, with the old one as previous; start-up re-seals with the new key.
	e.webStart("GESSYNC_TOKEN_KEY="+keyB, "GESSYNC_TOKEN_KEY_PREVIOUS="+keyA)
	e.exec(customerSQL)
	e.caughtUp()
	e.stop()
	sealedB, _ := raw()
	require.NotEqual(t, sealedA, sealedB)
	store, err := state.Open(ctx, state.Config{URL: e.gesURL, TokenKey: []byte("abcdefghijklmnopqrstuvwxyz012345")})
	require.NoError(t, err)
	conn, err := store.Connection(ctx, 1)
	store.Close()
	require.NoError(t, err, "the tokens open with the new key alone")
	require.Equal(t, a, conn.Token.AccessToken)

	// The old key is no longer needed.
	e.webStart("GESSYNC_TOKEN_KEY=" + keyB)
	e.exec(invoiceSQL)
	e.caughtUp()
	requireOneInvoice := e.business(0)
	require.Len(t, requireOneInvoice.SalesInvoices, 1)
}
