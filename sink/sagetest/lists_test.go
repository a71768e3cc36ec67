package sagetest_test

import (
	"bytes"
	"log/slog"
	"net/url"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/gessync/gessync/sink/sagetest"
)

func TestInvoiceListFilters(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "standard")
	jane, bob := e.contact("Jane Smith"), e.contact("Bob Jones")
	mk := func(contact, date, ref string) sagetest.SalesInvoice {
		var iv sagetest.SalesInvoice
		e.must(201, "POST", "/sales_invoices", obj{"sales_invoice": obj{"contact_id": contact, "date": date,
			"reference": ref, "invoice_lines": []obj{e.line("Service", "1", "10", "2")}}}).json(t, &iv)
		return iv
	}
	a := mk(jane, "2025-01-15", "JOB-1")
	b := mk(bob, "2025-02-15", "JOB-2")
	c := mk(jane, "2025-03-15", "PO-77")
	require.Equal(t, 201, e.receipt(jane, c.ID, "12.00", "12.00").status)

	ids := func(query string) []string {
		var page struct {
			Items []struct {
				ID string `json:"id"`
			} `json:"$items"`
		}
		e.must(200, "GET", "/sales_invoices?"+query, nil).json(t, &page)
		var out []string
		for _, it := range page.Items {
			out = append(out, it.ID)
		}
		return out
	}
	require.Equal(t, []string{a.ID, b.ID, c.ID}, ids(""))
	require.Equal(t, []string{a.ID, c.ID}, ids("contact_id="+jane))
	require.Equal(t, []string{a.ID, c.ID}, ids("search=smith"), "search matches the contact name")
	require.Equal(t, []string{c.ID}, ids("search=po-77"), "search matches the reference")
	require.Empty(t, ids("search=SI-1"), "search does not match the invoice number")
	require.Equal(t, []string{c.ID}, ids("status_id=PAID"))
	require.Equal(t, []string{b.ID}, ids("from_date=2025-02-01&to_date=2025-02-28"))
	require.Equal(t, []string{b.ID, c.ID}, ids("from_date="+url.QueryEscape("2025-02-01T00:00:00Z")))
	require.Equal(t, []string{c.ID, b.ID, a.ID}, ids("sort=date:desc"))
	e.must(422, "GET", "/sales_invoices?sort=total_amount", nil)
	e.must(422, "GET", "/sales_invoices?from_date=yesterday", nil)
}

func TestInvoiceUpdate(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "standard")
	cid := e.contact("Jane")
	iv := e.invoice(cid, e.line("Service", "1", "85", "17"), e.line("Parts", "2", "10", "4"))
	keep := iv.InvoiceLines[0].ID

	var got sagetest.SalesInvoice
	e.must(200, "PUT", "/sales_invoices/"+iv.ID, obj{"sales_invoice": obj{"invoice_lines": []obj{
		{"id": keep, "unit_price": "90", "tax_amount": "18"},
		e.line("Labour", "1", "30", "6"),
	}}}).json(t, &got)
	require.Len(t, got.InvoiceLines, 2, "the lines given replace the invoice's lines")
	require.Equal(t, keep, got.InvoiceLines[0].ID)
	require.Equal(t, "Service", got.InvoiceLines[0].Description, "a line with an id keeps what is not sent")
	requireMoney(t, "144.00", got.TotalAmount, "total")
	require.Equal(t, iv.InvoiceNumber, got.InvoiceNumber)

	// status cannot be written: Sage ignores status_id.
	e.must(200, "PUT", "/sales_invoices/"+iv.ID, obj{"sales_invoice": obj{"status_id": "PAID"}}).json(t, &got)
	require.Equal(t, "UNPAID", got.Status.ID)

	r := e.must(422, "PUT", "/sales_invoices/"+iv.ID, obj{"sales_invoice": obj{"invoice_lines": []obj{{"id": "nope", "unit_price": 1}}}})
	require.Equal(t, "invoice_lines[0].id", r.errors(t)[0].Source)
	e.must(404, "PUT", "/sales_invoices/0123456789abcdef0123456789abcdef", obj{"sales_invoice": obj{}})
}

func TestLogsCarryNoTokens(t *testing.T) {
	t.Parallel()
	var buf bytes.Buffer
	logger := slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	e := newEnv(t, "standard", withClient, func(o *sagetest.Options) { o.Logger = logger })
	status, q := e.authorize(authParams())
	require.Equal(t, 302, status)
	status, tok := e.tokenRequest(exchange(q.Get("code")))
	require.Equal(t, 200, status)
	e.doAs(tok["access_token"].(string), "", "GET", "/contacts", nil)
	e.must(200, "GET", "/contacts", nil)

	logs := buf.String()
	require.Contains(t, logs, `"path":"/v3.1/contacts"`)
	for _, secret := range []string{q.Get("code"), tok["access_token"].(string), tok["refresh_token"].(string), e.token, "secret"} {
		require.False(t, strings.Contains(logs, secret), "a secret reached the log")
	}
}

// A list gives id, displayed_as and $path, more with a comma list of attributes, and every
// attribute with attributes=all, on every page and on /businesses (whose subscriptions tell
// the tier).
func TestListAttributes(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "standard")
	for _, name := range []string{"Jane Smith", "Bob Jones", "Ann Lee"} {
		e.contact(name)
	}
	items := func(path string) []map[string]any {
		var page struct {
			Items []map[string]any `json:"$items"`
		}
		e.must(200, "GET", path, nil).json(t, &page)
		return page.Items
	}
	keys := func(m map[string]any) []string {
		var out []string
		for k := range m {
			out = append(out, k)
		}
		slices.Sort(out)
		return out
	}
	base := items("/contacts")
	require.Len(t, base, 3)
	require.Equal(t, []string{"$path", "displayed_as", "id"}, keys(base[0]))
	some := items("/contacts?attributes=name,reference&items_per_page=2&page=2")
	require.Len(t, some, 1, "the second page of two")
	require.Equal(t, []string{"$path", "displayed_as", "id", "name", "reference"}, keys(some[0]))
	all := items("/contacts?attributes=all&items_per_page=2&page=2")
	require.Len(t, all, 1)
	require.Equal(t, "Ann Lee", all[0]["name"])
	require.Contains(t, all[0], "created_at")
	require.Contains(t, all[0], "contact_types")
	businesses := items("/businesses?attributes=all")
	require.Len(t, businesses, 1)
	require.Contains(t, businesses[0], "subscriptions")
}
