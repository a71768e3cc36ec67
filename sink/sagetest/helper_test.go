package sagetest_test

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/gessync/gessync/sink/sagetest"
)

// clock is a settable time source for Options.Now.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func newClock() *clock { return &clock{now: time.Date(2025, 3, 10, 9, 0, 0, 0, time.UTC)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// env is a running sandbox with one business and a token for it.
type env struct {
	t     *testing.T
	srv   *sagetest.Server
	clock *clock
	biz   sagetest.BusinessInfo
	token string
}

// newEnv starts a sandbox whose every /v3.1 response must validate against the spec, with a
// business on tier.
func newEnv(t *testing.T, tier string, opts ...func(*sagetest.Options)) *env {
	t.Helper()
	clk := newClock()
	o := sagetest.Options{
		Now: clk.Now,
		InvalidResponse: func(r *http.Request, err error) {
			t.Errorf("invalid response: %v", err)
		},
	}
	for _, f := range opts {
		f(&o)
	}
	srv := sagetest.NewServer(o)
	t.Cleanup(srv.Close)
	biz := srv.CreateBusiness("Acme Heating", tier)
	access, _ := srv.Mint(biz.ID)
	return &env{t: t, srv: srv, clock: clk, biz: biz, token: access}
}

// with returns the env for a subtest's t.
func (e *env) with(t *testing.T) *env {
	c := *e
	c.t = t
	return &c
}

// remint replaces the env's access token, e.g. after moving the clock past its 300 s.
func (e *env) remint() { e.token, _ = e.srv.Mint(e.biz.ID) }

// reply is an HTTP answer.
type reply struct {
	status int
	header http.Header
	body   []byte
}

func (r reply) json(t *testing.T, v any) {
	t.Helper()
	require.NoError(t, json.Unmarshal(r.body, v), "body: %s", r.body)
}

// errors decodes Sage's error array.
func (r reply) errors(t *testing.T) []errItem {
	t.Helper()
	var items []errItem
	r.json(t, &items)
	return items
}

type errItem struct {
	Severity string `json:"$severity"`
	DataCode string `json:"$dataCode"`
	Message  string `json:"$message"`
	Source   string `json:"$source"`
}

// do sends an API request with the env's token and business; body is marshalled unless it is a
// string.
func (e *env) do(method, path string, body any) reply {
	e.t.Helper()
	return e.doAs(e.token, e.biz.ID, method, path, body)
}

func (e *env) doAs(token, businessID, method, path string, body any) reply {
	e.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	default:
		raw, err := json.Marshal(b)
		require.NoError(e.t, err)
		rd = bytes.NewReader(raw)
	}
	req, err := http.NewRequest(method, e.srv.APIURL()+path, rd)
	require.NoError(e.t, err)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if businessID != "" {
		req.Header.Set("X-Business", businessID)
	}
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(e.t, err)
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	require.NoError(e.t, err)
	return reply{status: resp.StatusCode, header: resp.Header, body: raw}
}

// post sends a POST and returns the transport error instead of failing, for faults.
func (e *env) post(path string, body any) (reply, error) {
	raw, err := json.Marshal(body)
	require.NoError(e.t, err)
	req, err := http.NewRequest("POST", e.srv.APIURL()+path, bytes.NewReader(raw))
	require.NoError(e.t, err)
	req.Header.Set("Authorization", "Bearer "+e.token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return reply{}, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return reply{status: resp.StatusCode, header: resp.Header, body: b}, nil
}

// must sends a request and requires the status.
func (e *env) must(status int, method, path string, body any) reply {
	e.t.Helper()
	r := e.do(method, path, body)
	require.Equal(e.t, status, r.status, "%s %s: %s", method, path, r.body)
	return r
}

type obj = map[string]any

// contact creates a customer and returns its id.
func (e *env) contact(name string) string {
	e.t.Helper()
	var c sagetest.Contact
	e.must(201, "POST", "/contacts", obj{"contact": obj{"name": name, "contact_type_ids": []string{"CUSTOMER"}}}).json(e.t, &c)
	return c.ID
}

// line is a GB_STANDARD invoice line.
func (e *env) line(desc string, qty, price, tax string) obj {
	return obj{"description": desc, "ledger_account_id": e.biz.SalesLedgerAccountID, "quantity": qty,
		"unit_price": price, "tax_rate_id": "GB_STANDARD", "tax_amount": tax}
}

// invoice creates a sales invoice for contact with lines.
func (e *env) invoice(contactID string, lines ...obj) sagetest.SalesInvoice {
	e.t.Helper()
	var iv sagetest.SalesInvoice
	e.must(201, "POST", "/sales_invoices", obj{"sales_invoice": obj{
		"contact_id": contactID, "date": "2025-03-01", "invoice_lines": lines,
	}}).json(e.t, &iv)
	return iv
}

// receipt posts a customer receipt of total allocating amount to invoiceID.
func (e *env) receipt(contactID, invoiceID, total, amount string) reply {
	e.t.Helper()
	return e.do("POST", "/contact_payments", obj{"contact_payment": obj{
		"transaction_type_id": "CUSTOMER_RECEIPT", "contact_id": contactID, "bank_account_id": e.biz.BankAccountID,
		"date": "2025-03-05", "total_amount": total,
		"allocated_artefacts": []obj{{"artefact_id": invoiceID, "amount": amount}},
	}})
}

func (e *env) getInvoice(id string) sagetest.SalesInvoice {
	e.t.Helper()
	var iv sagetest.SalesInvoice
	e.must(200, "GET", "/sales_invoices/"+id+"?show_payments_allocations=true", nil).json(e.t, &iv)
	return iv
}

// setFaults sends PUT /_sandbox/faults.
func (e *env) setFaults(f any) reply {
	e.t.Helper()
	raw, err := json.Marshal(f)
	require.NoError(e.t, err)
	req, err := http.NewRequest("PUT", e.srv.URL+"/_sandbox/faults", bytes.NewReader(raw))
	require.NoError(e.t, err)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(e.t, err)
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return reply{status: resp.StatusCode, header: resp.Header, body: body}
}

// noRedirect is a client that stops at redirects.
var noRedirect = &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}

// authorize runs the authorize step and returns the redirect's query.
func (e *env) authorize(params url.Values) (int, url.Values) {
	e.t.Helper()
	resp, err := noRedirect.Get(e.srv.AuthURL() + "?" + params.Encode())
	require.NoError(e.t, err)
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusFound {
		return resp.StatusCode, nil
	}
	loc, err := url.Parse(resp.Header.Get("Location"))
	require.NoError(e.t, err)
	return resp.StatusCode, loc.Query()
}

// tokenRequest posts the form to /token.
func (e *env) tokenRequest(form url.Values) (int, map[string]any) {
	e.t.Helper()
	resp, err := http.PostForm(e.srv.TokenURL(), form)
	require.NoError(e.t, err)
	defer resp.Body.Close()
	var body map[string]any
	require.NoError(e.t, json.NewDecoder(resp.Body).Decode(&body))
	return resp.StatusCode, body
}

func stringsReader(s string) io.Reader { return strings.NewReader(s) }
