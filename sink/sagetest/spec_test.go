package sagetest_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/gessync/gessync/sink/sagetest"
)

func TestValidateResponse(t *testing.T) {
	t.Parallel()
	get := func(path string) *http.Request {
		r, err := http.NewRequest("GET", "http://sage.test/v3.1"+path, nil)
		require.NoError(t, err)
		return r
	}
	h := http.Header{"Content-Type": {"application/json"}}
	envelope := `{"$total":1,"$page":1,"$next":null,"$back":null,"$itemsPerPage":20,"$items":[%s]}`
	tests := []struct {
		name    string
		req     *http.Request
		status  int
		body    string
		wantErr bool
	}{
		{"ok - money as a string", get("/sales_invoices/abc"), 200, `{"id":"abc","total_amount":"102.00"}`, false},
		{"ok - money as a number", get("/sales_invoices/abc"), 200, `{"id":"abc","total_amount":102.0}`, false},
		{"ok - a list in Sage's envelope", get("/contacts"), 200, fmt.Sprintf(envelope, `{"id":"a","displayed_as":"A","$path":"/contacts/a"}`), false},
		{"ok - errors are not checked", get("/contacts/x"), 404, `[{"$dataCode":"RecordNotFound"}]`, false},
		{"ok - /businesses is not in the spec", get("/businesses"), 200, `{"anything":1}`, false},
		{"error - a bare array where Sage sends the envelope", get("/contacts"), 200, `[{"id":"a"}]`, true},
		{"error - money that is no number", get("/sales_invoices/abc"), 200, `{"id":"abc","total_amount":"lots"}`, true},
		{"error - wrong type", get("/contacts/abc"), 200, `{"id":"abc","name":7}`, true},
		{"error - reference longer than the spec allows", get("/contacts/abc"), 200, `{"id":"abc","reference":"ELEVENCHARS"}`, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := sagetest.ValidateResponse(tt.req, tt.status, h, []byte(tt.body))
			if tt.wantErr {
				require.Error(t, err)
				return
			}
			require.NoError(t, err)
		})
	}
}

func TestDumpEndpoint(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "plus")
	cid := e.contact("Jane")
	iv := e.invoice(cid, e.line("Service", "1", "85", "17"))
	require.Equal(t, 201, e.receipt(cid, iv.ID, "102.00", "102.00").status)

	resp, err := http.Get(e.srv.URL + "/_sandbox/dump")
	require.NoError(t, err)
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	var d sagetest.Dump
	require.NoError(t, json.Unmarshal(raw, &d))
	require.Equal(t, e.srv.Dump(), d)

	var shape map[string][]map[string]any
	require.NoError(t, json.Unmarshal(raw, &shape))
	b := shape["businesses"][0]
	for _, k := range []string{"id", "name", "tier", "contacts", "sales_invoices", "contact_payments", "bank_accounts"} {
		require.Contains(t, b, k)
	}
	si := b["sales_invoices"].([]any)[0].(map[string]any)
	for _, k := range []string{"id", "invoice_number", "reference", "contact", "date", "due_date", "status",
		"net_amount", "tax_amount", "total_amount", "outstanding_amount", "total_paid", "void_reason",
		"vat_reverse_charge", "withholding_tax_rate", "withholding_tax_amount", "cis_applicable_amount",
		"total_after_cis_deduction", "invoice_lines", "payments_allocations"} {
		require.Contains(t, si, k)
	}
	require.Equal(t, "PAID", si["status"].(map[string]any)["id"])
	require.Equal(t, "0.00", si["outstanding_amount"])
	line := si["invoice_lines"].([]any)[0].(map[string]any)
	for _, k := range []string{"id", "description", "ledger_account", "quantity", "unit_price", "discount_amount",
		"net_amount", "tax_rate", "tax_amount", "total_amount"} {
		require.Contains(t, line, k)
	}
	cp := b["contact_payments"].([]any)[0].(map[string]any)
	for _, k := range []string{"transaction_type", "contact", "bank_account", "payment_method", "date",
		"total_amount", "reference", "allocated_artefacts"} {
		require.Contains(t, cp, k)
	}
}

func TestCISInvoice(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "standard")
	cid := e.contact("Builder Ltd")
	var iv sagetest.SalesInvoice
	e.must(201, "POST", "/sales_invoices", obj{"sales_invoice": obj{
		"contact_id": cid, "date": "2025-03-01", "vat_reverse_charge": true,
		"withholding_tax_rate": 20, "withholding_tax_amount": "90.00", "cis_applicable_amount": "450.00",
		"invoice_lines": []obj{
			{"description": "Labour", "ledger_account_id": e.biz.CISLabourLedgerAccountID, "unit_price": "450.00", "tax_rate_id": "GB_STANDARD", "tax_amount": 0},
			{"description": "Materials", "ledger_account_id": e.biz.CISMaterialsLedgerAccountID, "unit_price": "65.97", "tax_rate_id": "GB_LOWER", "tax_amount": 0},
		},
	}}).json(t, &iv)
	require.True(t, iv.IsCIS && iv.HasCISLabour && iv.HasCISMaterials && iv.VATReverseCharge)
	requireMoney(t, "515.97", iv.TotalAmount, "total")
	requireMoney(t, "425.97", iv.TotalAfterCISDeduction, "after CIS")
	requireMoney(t, "90.00", iv.WithholdingTaxAmount, "CIS deduction")
}

// The sandbox is safe for concurrent use; run with -race.
func TestConcurrentUse(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "standard", func(o *sagetest.Options) { o.RateLimit = -1 })
	cid := e.contact("Jane")
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			body := fmt.Sprintf(`{"sales_invoice":{"contact_id":%q,"date":"2025-03-01","invoice_lines":[{"description":"x","ledger_account_id":%q,"unit_price":"10","tax_rate_id":"GB_STANDARD","tax_amount":"2.00"}]}}`,
				cid, e.biz.SalesLedgerAccountID)
			req, _ := http.NewRequest("POST", e.srv.APIURL()+"/sales_invoices", stringsReader(body))
			req.Header.Set("Authorization", "Bearer "+e.token)
			resp, err := http.DefaultClient.Do(req)
			if err == nil {
				resp.Body.Close()
				if resp.StatusCode != 201 {
					t.Errorf("request %d: status %d", i, resp.StatusCode)
				}
			}
			_ = e.srv.Dump()
		}()
	}
	wg.Wait()
	numbers := map[string]bool{}
	for _, iv := range e.srv.Dump().Businesses[0].SalesInvoices {
		numbers[iv.InvoiceNumber] = true
	}
	require.Len(t, numbers, 20, "every invoice got its own number")
}

func TestValidateEveryChecksOneRequestInN(t *testing.T) {
	t.Parallel()
	var refused int
	e := newEnv(t, "standard", func(o *sagetest.Options) {
		o.ValidateEvery = 3
		o.InvalidRequest = func(*http.Request, string) { refused++ }
	})
	// A top-level email is not in the spec: only the spec check refuses it, so only the
	// first and fourth of these (requests 1 and 4 of POST /contacts) are refused.
	body := obj{"contact": obj{"name": "A", "contact_type_ids": []string{"CUSTOMER"}, "email": "a@b.co"}}
	var statuses []int
	for range 5 {
		statuses = append(statuses, e.do("POST", "/contacts", body).status)
	}
	require.Equal(t, []int{422, 201, 201, 422, 201}, statuses)
	require.Equal(t, 2, refused)
}
