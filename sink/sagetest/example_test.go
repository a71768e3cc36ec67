package sagetest_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"

	"github.com/gessync/gessync/sink/sagetest"
)

// call sends one API request with a bearer token and X-Business, returning status and body.
func call(srv *sagetest.Server, access, business, method, path, body string) (int, string) {
	req, _ := http.NewRequest(method, srv.APIURL()+path, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+access)
	req.Header.Set("X-Business", business)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// A test creates a business, takes a token without the OAuth dance, writes through the API
// and checks what Sage now holds with Dump.
func Example() {
	srv := sagetest.NewServer(sagetest.Options{})
	defer srv.Close()
	biz := srv.CreateBusiness("Hartley Heating", "standard")
	access, _ := srv.Mint(biz.ID)

	status, body := call(srv, access, biz.ID, "POST", "/contacts",
		`{"contact":{"name":"Mrs Margaret Bennett","contact_type_ids":["CUSTOMER"],"reference":"BENN01"}}`)
	var contact sagetest.Contact
	_ = json.Unmarshal([]byte(body), &contact)
	fmt.Println(status, contact.DisplayedAs)

	status, _ = call(srv, access, biz.ID, "POST", "/sales_invoices", `{"sales_invoice":{
		"contact_id":"`+contact.ID+`", "date":"2026-11-20", "invoice_number":"HH-1004",
		"invoice_lines":[{"description":"Annual boiler service","ledger_account_id":"`+biz.SalesLedgerAccountID+`",
			"quantity":1,"unit_price":85.00,"tax_rate_id":"GB_STANDARD","tax_amount":17.00}]}}`)
	fmt.Println(status)

	// The same invoice number again is refused as Sage does.
	status, body = call(srv, access, biz.ID, "POST", "/sales_invoices", `{"sales_invoice":{
		"contact_id":"`+contact.ID+`", "date":"2026-11-20", "invoice_number":"HH-1004",
		"invoice_lines":[{"description":"Again","ledger_account_id":"`+biz.SalesLedgerAccountID+`",
			"unit_price":"10","tax_rate_id":"GB_ZERO"}]}}`)
	fmt.Println(status, body)

	inv := srv.Dump().Business(biz.ID).SalesInvoices[0]
	fmt.Println(inv.InvoiceNumber, inv.Status.ID, inv.TotalAmount.StringFixed(2), inv.OutstandingAmount.StringFixed(2))
	// Output:
	// 201 Mrs Margaret Bennett (BENN01)
	// 201
	// 422 [{"$severity":"error","$dataCode":"RecordInvalid","$message":"Artefact number must be unique","$source":"invoice_number"}]
	// HH-1004 UNPAID 102.00 102.00
}

// The OAuth authorization code flow: the authorize endpoint approves at once and redirects
// with a code, which POST /token exchanges for tokens. Each authorization creates a new
// business unless business_id names one.
func ExampleServer_oauth() {
	srv := sagetest.NewServer(sagetest.Options{ClientID: "my-app", ClientSecret: "s3cret"})
	defer srv.Close()

	noFollow := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := noFollow.Get(srv.AuthURL() + "?" + url.Values{
		"response_type": {"code"}, "client_id": {"my-app"}, "scope": {"full_access"}, "state": {"xyz"},
		"redirect_uri": {"https://app.example/callback"}, "tier": {"start"},
	}.Encode())
	if err != nil {
		fmt.Println(err)
		return
	}
	resp.Body.Close()
	loc, _ := url.Parse(resp.Header.Get("Location"))
	fmt.Println(resp.StatusCode, loc.Host+loc.Path, loc.Query().Get("state"))

	resp, err = http.PostForm(srv.TokenURL(), url.Values{
		"grant_type": {"authorization_code"}, "code": {loc.Query().Get("code")},
		"redirect_uri": {"https://app.example/callback"}, "client_id": {"my-app"}, "client_secret": {"s3cret"},
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer resp.Body.Close()
	var tok struct {
		TokenType             string `json:"token_type"`
		ExpiresIn             int    `json:"expires_in"`
		RefreshTokenExpiresIn int    `json:"refresh_token_expires_in"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&tok)
	fmt.Println(resp.StatusCode, tok.TokenType, tok.ExpiresIn, tok.RefreshTokenExpiresIn)

	b := srv.Dump().Businesses[0]
	fmt.Println(b.Name, b.Tier, len(b.BankAccounts))
	// Output:
	// 302 app.example/callback xyz
	// 200 bearer 300 2678400
	// Sandbox Business 1 start 1
}

// Faults make Sage misbehave: here every call fails until the fault is cleared, and one
// business's user becomes read-only.
func ExampleSandbox_SetFaults() {
	srv := sagetest.NewServer(sagetest.Options{})
	defer srv.Close()
	biz := srv.CreateBusiness("", "")
	access, _ := srv.Mint(biz.ID)

	srv.SetFaults(sagetest.Faults{FaultSet: sagetest.FaultSet{FailAll: true}})
	status, body := call(srv, access, biz.ID, "GET", "/contacts", "")
	fmt.Println(status, body)

	srv.SetFaults(sagetest.Faults{Businesses: map[string]sagetest.BusinessFaults{biz.ID: {ReadOnly: true}}})
	status, _ = call(srv, access, biz.ID, "GET", "/contacts", "")
	fmt.Println(status)
	status, _ = call(srv, access, biz.ID, "POST", "/contacts", `{"contact":{"name":"X","contact_type_ids":["CUSTOMER"]}}`)
	fmt.Println(status)
	// Output:
	// 500 [{"$severity":"error","$dataCode":"UnexpectedError","$message":"An unexpected error occurred.","$source":""}]
	// 200
	// 403
}
