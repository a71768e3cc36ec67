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
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/gessync/gessync/daemon"
)

// instance is one of several gessync processes a failover or sharding test runs against the
// env's database.
type instance struct {
	t    *testing.T
	e    *env
	name string
	cmd  *exec.Cmd
	addr string
	done chan struct{}
	logs *bytes.Buffer
	lw   *lockedWriter
}

// startInstance runs `gessync run` against the env's database with Sage behind proxy, the env's
// slot (extra "KEY=value" settings override any of it), and does not wait for anything: see
// healthy, leading. The process is stopped (SIGTERM, then SIGKILL) when the test ends, and its
// logs are shown if the test failed.
func (e *env) startInstance(name string, proxy *httpProxy, extra ...string) *instance {
	e.t.Helper()
	addr := freeAddr(e.t)
	cmd := exec.Command(binary, "run")
	cmd.Env = append(os.Environ(),
		"GES_DATABASE_URL="+e.gesURL,
		"SAGE_API_URL="+proxy.URL+"/v3.1",
		"SAGE_AUTH_URL="+proxy.URL+"/oauth2/auth/central",
		"SAGE_TOKEN_URL="+proxy.URL+"/token",
		"SAGE_CLIENT_ID=gessync-test",
		"SAGE_CLIENT_SECRET=test-secret",
		"GESSYNC_HTTP_ADDR="+addr,
		"GESSYNC_SLOT="+e.dbName,
		"GESSYNC_STATUS_INTERVAL=200ms",
		"GESSYNC_TOKEN_KEY=MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
	)
	cmd.Env = append(cmd.Env, extra...) // the last value of a key wins
	i := &instance{t: e.t, e: e, name: name, cmd: cmd, addr: addr, done: make(chan struct{}), logs: &bytes.Buffer{}}
	i.lw = &lockedWriter{w: i.logs}
	cmd.Stdout, cmd.Stderr = i.lw, i.lw
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	require.NoError(e.t, cmd.Start())
	go func() { _ = cmd.Wait(); close(i.done) }()
	e.t.Cleanup(func() {
		i.stop()
		if e.t.Failed() {
			e.t.Logf("instance %s logs:\n%s", name, i.output())
		}
	})
	return i
}

func (i *instance) output() string {
	i.lw.mu.Lock()
	defer i.lw.mu.Unlock()
	return i.logs.String()
}

func (i *instance) exited() bool {
	select {
	case <-i.done:
		return true
	default:
		return false
	}
}

// kill stops the instance with SIGKILL, as a lost host or a crash would, and waits for it.
func (i *instance) kill() {
	_ = i.cmd.Process.Signal(syscall.SIGKILL)
	<-i.done
}

func (i *instance) stop() {
	if i.exited() {
		return
	}
	_ = i.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-i.done:
	case <-time.After(15 * time.Second):
		i.kill()
	}
}

func (i *instance) base() string { return "http://" + i.addr }

func (i *instance) healthy() bool {
	resp, err := http.Get(i.base() + "/healthz")
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == 200
}

func (i *instance) status() (daemon.Status, bool) {
	var st daemon.Status
	if i.exited() {
		return st, false
	}
	resp, err := http.Get(i.base() + "/status")
	if err != nil {
		return st, false
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return st, false
	}
	return st, json.NewDecoder(resp.Body).Decode(&st) == nil
}

// leading reports whether the instance leads its slot and its replication stream is up.
func (i *instance) leading() bool {
	st, ok := i.status()
	return ok && st.Role == "leader" && st.ReplicationConnected
}

// standingBy reports whether the instance answers as a standby that does not stream and names
// the instance that leads.
func (i *instance) standingBy() bool {
	st, ok := i.status()
	return ok && st.Role == "standby" && !st.ReplicationConnected && strings.Contains(st.RoleDetail, "leads slot")
}

// connect walks the OAuth flow for company through this instance.
func (i *instance) connect(company int) {
	i.t.Helper()
	jar, _ := cookiejar.New(nil) // the callback checks the cookie /connect/sage set
	resp, err := (&http.Client{Jar: jar}).Get(fmt.Sprintf("%s/connect/sage?company_id=%d", i.base(), company))
	require.NoError(i.t, err)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.Equal(i.t, 200, resp.StatusCode, string(body))
	require.Contains(i.t, string(body), "Connected to Sage")
}

// post sends a JSON POST to the instance's API and returns the status code and body.
func (i *instance) post(path, body string) (int, string) {
	i.t.Helper()
	resp, err := http.Post(i.base()+path, "application/json", strings.NewReader(body))
	require.NoError(i.t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(i.t, err)
	return resp.StatusCode, string(b)
}

// caughtUp waits until the instance has handled every change committed so far.
func (i *instance) caughtUp() {
	i.t.Helper()
	target := i.e.walLSN()
	deadline := time.Now().Add(60 * time.Second)
	for {
		st, ok := i.status()
		cp, _ := pglogrepl.ParseLSN(st.CheckpointLSN)
		if ok && cp >= target && st.PendingTransactions == 0 {
			return
		}
		if time.Now().After(deadline) {
			js, _ := json.MarshalIndent(st, "", "  ")
			i.t.Fatalf("timed out after 60s waiting for instance %s to catch up to %s; its status:\n%s", i.name, target, js)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// businessOf returns the Sage business id the state database holds for company.
func (e *env) businessOf(company int) string {
	e.t.Helper()
	var id string
	require.NoError(e.t, e.db.QueryRow(context.Background(), `SELECT business_id FROM gessync.connections WHERE company_id = $1`, company).Scan(&id))
	require.NotEmpty(e.t, id)
	return id
}

// requireSageEqualsGES checks that company's Sage business holds exactly GES's customers,
// invoices and payments: one Sage record for each GES row, none more, with GES's values.
func (e *env) requireSageEqualsGES(company int) {
	e.t.Helper()
	ctx := context.Background()
	b := e.sandbox.Dump().Business(e.businessOf(company))
	require.NotNil(e.t, b, "business of company %d", company)

	rows := func(sql string) []string {
		r, err := e.db.Query(ctx, sql, company)
		require.NoError(e.t, err)
		out, err := pgx.CollectRows(r, pgx.RowTo[string])
		require.NoError(e.t, err)
		sort.Strings(out)
		return out
	}
	wantContacts := rows(`SELECT account_ref || ' ' || coalesce(email, '') FROM customers WHERE company_id = $1`)
	wantInvoices := rows(`SELECT invoice_number || ' ' || total::text FROM invoices WHERE company_id = $1`)
	wantPayments := rows(`SELECT reference || ' ' || amount::text FROM payments WHERE company_id = $1`)

	var gotContacts, gotInvoices, gotPayments []string
	for _, c := range b.Contacts {
		if c.System {
			continue
		}
		email := ""
		if c.MainContactPerson != nil {
			email = c.MainContactPerson.Email
		}
		gotContacts = append(gotContacts, c.Reference+" "+email)
	}
	for _, inv := range b.SalesInvoices {
		gotInvoices = append(gotInvoices, inv.InvoiceNumber+" "+inv.TotalAmount.StringFixed(2))
	}
	for _, p := range b.ContactPayments {
		gotPayments = append(gotPayments, p.Reference+" "+p.TotalAmount.StringFixed(2))
	}
	sort.Strings(gotContacts)
	sort.Strings(gotInvoices)
	sort.Strings(gotPayments)
	require.Equal(e.t, wantContacts, gotContacts, "company %d: Sage contacts = GES customers", company)
	require.Equal(e.t, wantInvoices, gotInvoices, "company %d: Sage sales invoices = GES invoices", company)
	require.Equal(e.t, wantPayments, gotPayments, "company %d: Sage contact payments = GES payments", company)
	for _, p := range b.ContactPayments {
		require.Len(e.t, p.AllocatedArtefacts, 1, "company %d: payment %s allocated to its invoice", company, p.Reference)
	}
}

// burstWriter writes GES changes as GES does, from its own connection so that it can run
// beside the test's checks.
type burstWriter struct {
	conn *pgx.Conn
}

func (e *env) newBurstWriter() *burstWriter {
	e.t.Helper()
	c, err := pgx.Connect(context.Background(), e.gesURL)
	require.NoError(e.t, err)
	e.t.Cleanup(func() { c.Close(context.Background()) })
	return &burstWriter{conn: c}
}

// step i writes one customer, one invoice (one 20 % line) and one payment for company, each in
// its own transaction; every third step updates the customer's email, and every fifth deletes
// the payment of two steps before (the same company when companies alternate).
func (w *burstWriter) step(i, company int) error {
	ctx := context.Background()
	net := 100 + i
	vat := fmt.Sprintf("%d.%02d", net/5, (net%5)*20)
	stmts := []struct {
		sql  string
		args []any
	}{
		{`INSERT INTO customers (id, company_id, account_ref, first_name, last_name, email) VALUES ($1, $2, $3, 'Test', $4, $5)`,
			[]any{1000 + i, company, fmt.Sprintf("C%04d", i), fmt.Sprintf("Customer %d", i), fmt.Sprintf("c%d@example.co.uk", i)}},
		{`INSERT INTO invoices (id, company_id, customer_id, invoice_number, status, issue_date, due_date, line_items, subtotal, vat_total, total)
			VALUES ($1, $2, $3, $4, 'issued', '2026-11-25', '2026-12-09',
			jsonb_build_array(jsonb_build_object('description', 'Boiler service', 'quantity', 1, 'unit_price', $5::int, 'vat_rate', 20, 'kind', 'labour')),
			$5::int, $6::numeric, $5::int + $6::numeric)`,
			[]any{2000 + i, company, 1000 + i, fmt.Sprintf("INV-%04d", i), net, vat}},
		{`INSERT INTO payments (id, company_id, invoice_id, amount, method, paid_on, reference) VALUES ($1, $2, $3, 50.00, 'card', '2026-11-26', $4)`,
			[]any{3000 + i, company, 2000 + i, fmt.Sprintf("P%04d", i)}},
	}
	if i%3 == 0 {
		stmts = append(stmts, struct {
			sql  string
			args []any
		}{`UPDATE customers SET email = $2, updated_at = now() WHERE id = $1`, []any{1000 + i, fmt.Sprintf("c%d.new@example.co.uk", i)}})
	}
	if i%5 == 4 {
		stmts = append(stmts, struct {
			sql  string
			args []any
		}{`DELETE FROM payments WHERE id = $1`, []any{3000 + i - 2}})
	}
	for _, s := range stmts {
		if _, err := w.conn.Exec(ctx, s.sql, s.args...); err != nil {
			return fmt.Errorf("step %d: %s: %w", i, strings.Fields(s.sql)[0], err)
		}
	}
	return nil
}
