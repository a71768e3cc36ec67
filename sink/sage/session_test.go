package sage

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestSession_Calls checks each call's method, path, query, headers and body wrapper, and that
// the answer decodes.
func TestSession_Calls(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		call      func(ctx context.Context, s *Session) (any, error)
		status    int
		reply     string
		method    string
		path      string
		query     url.Values
		wrapper   string // the body's single key, "" for no body
		bodyCheck string // a substring of the body
		check     func(t *testing.T, got any)
	}{
		{
			name: "ok - create contact",
			call: func(ctx context.Context, s *Session) (any, error) {
				return s.CreateContact(ctx, ContactRequest{IdempotencyID: "0123456789abcdef0123456789abcdef", Name: "A. Boiler", ContactTypeIDs: []string{"CUSTOMER"}})
			},
			status: 201, reply: `{"id":"c1","name":"A. Boiler","contact_types":[{"id":"CUSTOMER"}]}`,
			method: "POST", path: "/contacts", wrapper: "contact", bodyCheck: `"idempotency_id":"0123456789abcdef0123456789abcdef"`,
			check: func(t *testing.T, got any) { assert.Equal(t, "c1", got.(Contact).ID) },
		},
		{
			name: "ok - update contact",
			call: func(ctx context.Context, s *Session) (any, error) {
				return s.UpdateContact(ctx, "c1", ContactRequest{Name: "B"})
			},
			status: 200, reply: `{"id":"c1","name":"B"}`,
			method: "PUT", path: "/contacts/c1", wrapper: "contact", bodyCheck: `"name":"B"`,
			check: func(t *testing.T, got any) { assert.Equal(t, "B", got.(Contact).Name) },
		},
		{
			name:   "ok - get contact escapes the id",
			call:   func(ctx context.Context, s *Session) (any, error) { return s.GetContact(ctx, "c/1") },
			status: 200, reply: `{"id":"c/1","name":"B"}`,
			method: "GET", path: "/contacts/c%2F1",
		},
		{
			name:   "ok - delete contact",
			call:   func(ctx context.Context, s *Session) (any, error) { return nil, s.DeleteContact(ctx, "c1") },
			status: 204,
			method: "DELETE", path: "/contacts/c1",
		},
		{
			name: "ok - create sales invoice",
			call: func(ctx context.Context, s *Session) (any, error) {
				return s.CreateSalesInvoice(ctx, SalesInvoiceRequest{ContactID: "c1", Date: "2025-03-14", InvoiceLines: []InvoiceLineRequest{{Description: "Service", LedgerAccountID: "l1", UnitPrice: MustDecimal("80.00"), TaxRateID: "GB_STANDARD", TaxAmount: DP(MustDecimal("16.00").Decimal)}}})
			},
			status: 201, reply: `{"id":"si1","displayed_as":"SI-1","total_amount":"96.0","outstanding_amount":"96.0"}`,
			method: "POST", path: "/sales_invoices", wrapper: "sales_invoice", bodyCheck: `"unit_price":80.00`,
			check: func(t *testing.T, got any) {
				si := got.(SalesInvoice)
				assert.Equal(t, "SI-1", si.DisplayedAs)
				assertDecimal(t, "96.0", si.TotalAmount)
			},
		},
		{
			name: "ok - update sales invoice",
			call: func(ctx context.Context, s *Session) (any, error) {
				return s.UpdateSalesInvoice(ctx, "si1", SalesInvoiceRequest{Reference: "JOB-7"})
			},
			status: 200, reply: `{"id":"si1","reference":"JOB-7"}`,
			method: "PUT", path: "/sales_invoices/si1", wrapper: "sales_invoice", bodyCheck: `"reference":"JOB-7"`,
		},
		{
			name:   "ok - get sales invoice with allocations",
			call:   func(ctx context.Context, s *Session) (any, error) { return s.GetSalesInvoice(ctx, "si1") },
			status: 200, reply: `{"id":"si1","payments_allocations":[{"id":"pa1","amount":"96.00"}]}`,
			method: "GET", path: "/sales_invoices/si1", query: url.Values{"show_payments_allocations": {"true"}},
			check: func(t *testing.T, got any) {
				si := got.(SalesInvoice)
				require.Len(t, si.PaymentsAllocations, 1)
				assertDecimal(t, "96.00", si.PaymentsAllocations[0].Amount)
			},
		},
		{
			name: "ok - void sales invoice",
			call: func(ctx context.Context, s *Session) (any, error) {
				return s.VoidSalesInvoice(ctx, "si1", "Cancelled in GES")
			},
			status: 200, reply: `{"id":"si1","void_reason":"Cancelled in GES","status":{"id":"VOID"}}`,
			method: "DELETE", path: "/sales_invoices/si1", query: url.Values{"void_reason": {"Cancelled in GES"}},
			check: func(t *testing.T, got any) { assert.Equal(t, "VOID", got.(SalesInvoice).Status.ID) },
		},
		{
			name: "ok - create contact payment",
			call: func(ctx context.Context, s *Session) (any, error) {
				return s.CreateContactPayment(ctx, ContactPaymentRequest{TransactionTypeID: "CUSTOMER_RECEIPT", ContactID: "c1", BankAccountID: "b1", Date: "2025-03-14", TotalAmount: DP(MustDecimal("96.00").Decimal), AllocatedArtefacts: []AllocatedArtefactRequest{{ArtefactID: "si1", Amount: MustDecimal("96.00")}}})
			},
			status: 201, reply: `{"id":"p1","total_amount":"96.0","allocated_artefacts":[{"id":"a1","artefact":{"id":"si1"},"amount":"96.0"}]}`,
			method: "POST", path: "/contact_payments", wrapper: "contact_payment", bodyCheck: `"total_amount":96.00`,
			check: func(t *testing.T, got any) {
				p := got.(ContactPayment)
				assert.Equal(t, "si1", p.AllocatedArtefacts[0].Artefact.ID)
			},
		},
		{
			name: "ok - update contact payment clears allocations",
			call: func(ctx context.Context, s *Session) (any, error) {
				return s.UpdateContactPayment(ctx, "p1", ContactPaymentRequest{AllocatedArtefacts: []AllocatedArtefactRequest{}})
			},
			status: 200, reply: `{"id":"p1","payment_on_account":{"id":"poa1"}}`,
			method: "PUT", path: "/contact_payments/p1", wrapper: "contact_payment", bodyCheck: `{"contact_payment":{"allocated_artefacts":[]}}`,
		},
		{
			name:   "ok - get contact payment",
			call:   func(ctx context.Context, s *Session) (any, error) { return s.GetContactPayment(ctx, "p1") },
			status: 200, reply: `{"id":"p1"}`,
			method: "GET", path: "/contact_payments/p1",
		},
		{
			name:   "ok - delete contact payment",
			call:   func(ctx context.Context, s *Session) (any, error) { return nil, s.DeleteContactPayment(ctx, "p1") },
			status: 204,
			method: "DELETE", path: "/contact_payments/p1",
		},
		{
			name: "ok - create bank account",
			call: func(ctx context.Context, s *Session) (any, error) {
				r := BankAccountRequest{BankAccountTypeID: "CHECKING"}
				r.BankAccountDetails.AccountName = "GES receipts"
				return s.CreateBankAccount(ctx, r)
			},
			status: 201, reply: `{"id":"b1","balance":"0.0"}`,
			method: "POST", path: "/bank_accounts", wrapper: "bank_account", bodyCheck: `"bank_account_type_id":"CHECKING"`,
		},
		{
			name:   "ok - tax rates",
			call:   func(ctx context.Context, s *Session) (any, error) { return s.TaxRates(ctx) },
			status: 200, reply: `{"$next":null,"$itemsPerPage":200,"$items":[{"id":"GB_STANDARD","percentage":"20.0"}]}`,
			method: "GET", path: "/tax_rates", query: url.Values{"items_per_page": {"200"}, "attributes": {"all"}},
			check: func(t *testing.T, got any) { assertDecimal(t, "20.0", got.([]TaxRate)[0].Percentage) },
		},
		{
			name:   "ok - ledger accounts",
			call:   func(ctx context.Context, s *Session) (any, error) { return s.LedgerAccounts(ctx) },
			status: 200, reply: `{"$next":null,"$items":[{"id":"l1","nominal_code":4000}]}`,
			method: "GET", path: "/ledger_accounts", query: url.Values{"items_per_page": {"200"}, "attributes": {"all"}},
			check: func(t *testing.T, got any) { assert.Equal(t, 4000, got.([]LedgerAccount)[0].Nominalcode) },
		},
		{
			name:   "ok - bank accounts",
			call:   func(ctx context.Context, s *Session) (any, error) { return s.BankAccounts(ctx) },
			status: 200, reply: string(mustRead("recorded/bank_accounts.list.json")),
			method: "GET", path: "/bank_accounts", query: url.Values{"items_per_page": {"200"}, "attributes": {"all"}},
			check: func(t *testing.T, got any) { assert.Len(t, got.([]BankAccount), 5) },
		},
		{
			name:   "ok - businesses",
			call:   func(ctx context.Context, s *Session) (any, error) { return s.Businesses(ctx) },
			status: 200, reply: string(mustRead("recorded/businesses.list.json")),
			method: "GET", path: "/businesses", query: url.Values{"attributes": {"all"}},
			check: func(t *testing.T, got any) { assert.Len(t, got.([]Business), 3) },
		},
		{
			name: "ok - list contacts with a filter",
			call: func(ctx context.Context, s *Session) (any, error) {
				return s.ListContacts(ctx, url.Values{"search": {"Boiler"}})
			},
			status: 200, reply: `{"$next":null,"$items":[{"id":"c1"}]}`,
			method: "GET", path: "/contacts", query: url.Values{"search": {"Boiler"}, "items_per_page": {"200"}, "attributes": {"all"}},
		},
		{
			name: "ok - list sales invoices keeps the caller's page size",
			call: func(ctx context.Context, s *Session) (any, error) {
				return s.ListSalesInvoices(ctx, url.Values{"items_per_page": {"50"}, "contact_id": {"c1"}})
			},
			status: 200, reply: `{"$next":null,"$items":[{"id":"si1"}]}`,
			method: "GET", path: "/sales_invoices", query: url.Values{"contact_id": {"c1"}, "items_per_page": {"50"}, "attributes": {"all"}},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newTestEnv(t)
			e.sage.api = func(w http.ResponseWriter, _ *http.Request, _ recorded, _ int) {
				if tc.reply == "" {
					w.WriteHeader(tc.status)
					return
				}
				writeRaw(w, tc.status, tc.reply)
			}
			s := e.session()
			got, err := tc.call(context.Background(), s)
			require.NoError(t, err)
			reqs := e.sage.Requests()
			require.Len(t, reqs, 1)
			r := reqs[0]
			assert.Equal(t, tc.method, r.Method)
			assert.Equal(t, tc.path, r.RawPath)
			if tc.query != nil {
				assert.Equal(t, tc.query, url.Values(r.Query))
			}
			assert.Equal(t, "Bearer "+accessToken(1), r.Header.Get("Authorization"))
			assert.Equal(t, testBusiness, r.Header.Get("X-Business"))
			assert.Equal(t, "application/json", r.Header.Get("Accept"))
			if tc.wrapper == "" {
				assert.Empty(t, r.Body)
				assert.Empty(t, r.Header.Get("Content-Type"))
			} else {
				assert.Equal(t, "application/json", r.Header.Get("Content-Type"))
				var body map[string]json.RawMessage
				require.NoError(t, json.Unmarshal(r.Body, &body))
				assert.Len(t, body, 1)
				assert.Contains(t, body, tc.wrapper)
				assert.Contains(t, string(r.Body), tc.bodyCheck)
			}
			if tc.check != nil {
				tc.check(t, got)
			}
		})
	}
}

func TestSession_EmptyID(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	s := e.session()
	_, err := s.GetSalesInvoice(context.Background(), " ")
	var pe *PermanentError
	require.ErrorAs(t, err, &pe)
	assert.Empty(t, e.sage.Requests())
}

func TestSession_NoBusiness(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	tok := e.sage.seed(e.clock.Now().Add(5 * time.Minute))
	s := e.client.Session(Connection{CompanyID: 1, Token: tok}, e.store)
	e.sage.api = func(w http.ResponseWriter, _ *http.Request, _ recorded, _ int) {
		writeRaw(w, 200, string(mustRead("documented/businesses_list_multi_business.json")))
	}

	_, err := s.CreateContact(context.Background(), ContactRequest{Name: "x"})
	require.ErrorIs(t, err, ErrNoBusiness)
	require.ErrorIs(t, err, ErrConnectionLost)
	assert.True(t, IsRetryable(err))
	assert.Empty(t, e.sage.Requests())

	bs, err := s.Businesses(context.Background())
	require.NoError(t, err)
	assert.Len(t, bs, 3)
	reqs := e.sage.Requests()
	require.Len(t, reqs, 1)
	assert.Empty(t, reqs[0].Header.Get("X-Business"))
}

func TestSession_Pagination(t *testing.T) {
	t.Parallel()
	t.Run("ok - follows $next until null", func(t *testing.T) {
		t.Parallel()
		e := newTestEnv(t)
		e.sage.api = func(w http.ResponseWriter, r *http.Request, _ recorded, _ int) {
			switch r.URL.Query().Get("page") {
			case "":
				writeRaw(w, 200, `{"$page":1,"$next":"/contacts?page=2&items_per_page=200&attributes=all&search=Gas","$itemsPerPage":200,"$items":[{"id":"c1"},{"id":"c2"}]}`)
			case "2":
				// a $next carrying the version prefix, and without attributes: both handled
				writeRaw(w, 200, `{"$page":2,"$next":"/v3.1/contacts?page=3&items_per_page=200&search=Gas","$itemsPerPage":200,"$items":[{"id":"c3"}]}`)
			default:
				writeRaw(w, 200, `{"$page":3,"$next":null,"$itemsPerPage":200,"$items":[{"id":"c4"}]}`)
			}
		}
		got, err := e.session().ListContacts(context.Background(), url.Values{"search": {"Gas"}})
		require.NoError(t, err)
		var ids []string
		for _, c := range got {
			ids = append(ids, c.ID)
		}
		assert.Equal(t, []string{"c1", "c2", "c3", "c4"}, ids)
		reqs := e.sage.Requests()
		require.Len(t, reqs, 3)
		for i, r := range reqs {
			assert.Equal(t, "/contacts", r.Path, "request %d", i)
			assert.Equal(t, "all", url.Values(r.Query).Get("attributes"), "request %d", i)
			assert.Equal(t, "200", url.Values(r.Query).Get("items_per_page"), "request %d", i)
			assert.Equal(t, "Gas", url.Values(r.Query).Get("search"), "request %d", i)
			assert.Equal(t, testBusiness, r.Header.Get("X-Business"))
		}
		assert.Equal(t, "3", url.Values(reqs[2].Query).Get("page"))
	})
	t.Run("error - $next to another host is not followed", func(t *testing.T) {
		t.Parallel()
		var hits atomic.Int32
		other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			hits.Add(1)
			writeRaw(w, 200, `{"$next":null,"$items":[]}`)
		}))
		defer other.Close()
		e := newTestEnv(t)
		e.sage.api = func(w http.ResponseWriter, _ *http.Request, _ recorded, _ int) {
			writeRaw(w, 200, fmt.Sprintf(`{"$next":%q,"$items":[{"id":"c1"}]}`, other.URL+"/contacts?page=2"))
		}
		_, err := e.session().ListContacts(context.Background(), nil)
		var pe *PermanentError
		require.ErrorAs(t, err, &pe)
		assert.Contains(t, err.Error(), "another host")
		assert.Zero(t, hits.Load())
	})
	t.Run("error - $next that repeats a page", func(t *testing.T) {
		t.Parallel()
		e := newTestEnv(t)
		e.sage.api = func(w http.ResponseWriter, _ *http.Request, _ recorded, _ int) {
			writeRaw(w, 200, `{"$next":"/contacts?page=2&items_per_page=200&attributes=all","$items":[{"id":"c1"}]}`)
		}
		_, err := e.session().ListContacts(context.Background(), nil)
		var pe *PermanentError
		require.ErrorAs(t, err, &pe)
		assert.Len(t, e.sage.Requests(), 2)
	})
}

// ListContactsAt gives Sage's clock when it read the first page at the latest (its Date less
// the time the request took), the first page's $total and the pages it read, decodes only the
// keys, and stops after the first page when $total is over its limit.
func TestSession_ListContactsAt(t *testing.T) {
	t.Parallel()
	newEnv := func(t *testing.T) *testEnv {
		e := newTestEnv(t)
		e.sage.api = func(w http.ResponseWriter, r *http.Request, _ recorded, _ int) {
			switch r.URL.Query().Get("page") {
			case "":
				e.clock.Advance(1500 * time.Millisecond) // the request takes 1.5 s
				w.Header().Set("Date", "Fri, 14 Mar 2025 09:00:07 GMT")
				writeRaw(w, 200, `{"$total":3,"$page":1,"$next":"/contacts?page=2","$items":[{"id":"c1","name":"Ann Bell","reference":"AB1","notes":"skipped","main_address":{"postal_code":"LS1 4AB"}},{"id":"c2","email":"c2@example.co.uk"}]}`)
			default:
				w.Header().Set("Date", "Fri, 14 Mar 2025 09:00:09 GMT")
				writeRaw(w, 200, `{"$total":3,"$page":2,"$next":null,"$items":[{"id":"c3","main_contact_person":{"email":"c3@example.co.uk"}}]}`)
			}
		}
		return e
	}
	t.Run("ok - every page, the first page's clock", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t)
		got, err := e.session().ListContactsAt(context.Background(), url.Values{"contact_type_id": {"CUSTOMER"}}, 0, nil)
		require.NoError(t, err)
		assert.Equal(t, time.Date(2025, 3, 14, 9, 0, 5, 500e6, time.UTC), got.At, "Date less the 1.5 s the request took")
		assert.Equal(t, 3, got.Total)
		assert.Equal(t, 2, got.Pages)
		require.Len(t, got.Contacts, 3)
		assert.Equal(t, ContactKeys{ID: "c1", Name: "Ann Bell", Reference: "AB1", MainAddress: &AddressKey{PostalCode: "LS1 4AB"}}, got.Contacts[0])
		assert.Equal(t, "c2@example.co.uk", got.Contacts[1].Email)
		assert.Equal(t, "c3@example.co.uk", got.Contacts[2].MainContactPerson.Email)
		reqs := e.sage.Requests()
		require.Len(t, reqs, 2)
		assert.Equal(t, "CUSTOMER", url.Values(reqs[1].Query).Get("contact_type_id"))
		assert.Equal(t, "all", url.Values(reqs[1].Query).Get("attributes"))
	})
	t.Run("ok - each page to each, none kept", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t)
		var pages [][]string
		got, err := e.session().ListContactsAt(context.Background(), nil, 0, func(page []ContactKeys) {
			var ids []string
			for _, c := range page {
				ids = append(ids, c.ID)
			}
			pages = append(pages, ids)
		})
		require.NoError(t, err)
		assert.Equal(t, [][]string{{"c1", "c2"}, {"c3"}}, pages)
		assert.Empty(t, got.Contacts)
		assert.Equal(t, 3, got.Total)
		assert.Equal(t, 2, got.Pages)
		assert.Equal(t, time.Date(2025, 3, 14, 9, 0, 5, 500e6, time.UTC), got.At)
	})
	t.Run("ok - over the limit, the first page only", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t)
		got, err := e.session().ListContactsAt(context.Background(), nil, 2, nil)
		require.NoError(t, err)
		assert.Equal(t, 3, got.Total)
		assert.Equal(t, 1, got.Pages)
		assert.Len(t, got.Contacts, 2)
		assert.Len(t, e.sage.Requests(), 1)
	})
	t.Run("ok - no Date, no clock", func(t *testing.T) {
		t.Parallel()
		e := newTestEnv(t)
		e.sage.api = func(w http.ResponseWriter, _ *http.Request, _ recorded, _ int) {
			w.Header()["Date"] = nil // net/http adds one unless told not to
			writeRaw(w, 200, `{"$total":0,"$next":null,"$items":[]}`)
		}
		got, err := e.session().ListContactsAt(context.Background(), nil, 0, nil)
		require.NoError(t, err)
		assert.True(t, got.At.IsZero())
		assert.Equal(t, 1, got.Pages)
	})
}

// TestSession_Retries scripts the API's answers per attempt and checks attempts, waits and the
// error class.
func TestSession_Retries(t *testing.T) {
	t.Parallel()
	type answer struct {
		status int
		header map[string]string
		body   string
		hangup bool // close the connection without an answer
	}
	ok := answer{status: 201, body: `{"id":"c1","name":"A"}`}
	err500 := answer{status: 500, body: string(mustRead("documented/error_500_unexpected_error.json"))}
	tests := []struct {
		name          string
		answers       []answer // the last repeats
		wantAttempts  int
		wantWaits     []time.Duration // exact waits, nil to skip
		wantErr       bool
		wantRetryable bool
		wantStatus    int
		wantCode      string
		wantAfter     time.Duration
		check         func(t *testing.T, err error)
	}{
		{name: "ok - 500 then success", answers: []answer{err500, ok}, wantAttempts: 2},
		{name: "ok - 408 then success", answers: []answer{{status: 408}, ok}, wantAttempts: 2},
		{
			name:         "ok - 429 honours Retry-After seconds",
			answers:      []answer{{status: 429, header: map[string]string{"Retry-After": "2"}}, {status: 429, header: map[string]string{"Retry-After": "1"}}, ok},
			wantAttempts: 3, wantWaits: []time.Duration{2 * time.Second, time.Second},
		},
		{
			name:         "ok - 503 honours Retry-After date",
			answers:      []answer{{status: 503, header: map[string]string{"Retry-After": t0.Add(3 * time.Second).Format(http.TimeFormat)}}, ok},
			wantAttempts: 2, wantWaits: []time.Duration{3 * time.Second},
		},
		{name: "ok - network failure then success", answers: []answer{{hangup: true}, ok}, wantAttempts: 2},
		{
			name: "error - 500 every time", answers: []answer{err500}, wantAttempts: 4,
			wantErr: true, wantRetryable: true, wantStatus: 500, wantCode: "UnexpectedError",
		},
		{
			name: "error - network failure every time", answers: []answer{{hangup: true}}, wantAttempts: 4,
			wantErr: true, wantRetryable: true,
			check: func(t *testing.T, err error) { assert.Contains(t, err.Error(), "sage POST /contacts") },
		},
		{
			name: "error - long Retry-After goes back to the caller", answers: []answer{{status: 429, header: map[string]string{"Retry-After": "3600"}}},
			wantAttempts: 1, wantWaits: []time.Duration{}, wantErr: true, wantRetryable: true, wantStatus: 429, wantAfter: time.Hour,
		},
		{
			name: "error - 422 is permanent and decoded", answers: []answer{{status: 422, body: string(mustRead("documented/error_422_record_invalid_field_required.json"))}},
			wantAttempts: 1, wantWaits: []time.Duration{}, wantErr: true, wantStatus: 422, wantCode: "RecordInvalid",
			check: func(t *testing.T, err error) {
				var apiErr *APIError
				require.ErrorAs(t, err, &apiErr)
				assert.Equal(t, "line_items.tax_rate_id", apiErr.Items[0].Source)
				assert.Equal(t, "This field is required.", apiErr.Items[0].Message)
				assert.Equal(t, "error", apiErr.Items[0].Severity)
				assert.Equal(t, http.MethodPost, apiErr.Method)
				assert.Equal(t, "/contacts", apiErr.Path)
				assert.True(t, apiErr.HasMessage("required"))
				assert.Equal(t, "permanent: sage POST /contacts: 422; RecordInvalid (line_items.tax_rate_id): This field is required.", err.Error())
			},
		},
		{
			name: "error - 403 is permanent", answers: []answer{{status: 403, body: string(mustRead("documented/error_403_multi_user_access_denied.json"))}},
			wantAttempts: 1, wantErr: true, wantStatus: 403, wantCode: "MultiUserAccessDenied",
		},
		{
			name: "error - 404 is permanent and not found", answers: []answer{{status: 404, body: `[{"$severity":"error","$dataCode":"RecordNotFound","$message":"Resource not found","$source":""}]`}},
			wantAttempts: 1, wantErr: true, wantStatus: 404, wantCode: "RecordNotFound",
			check: func(t *testing.T, err error) { assert.True(t, IsNotFound(err)); assert.True(t, IsRefused(err)) },
		},
		{
			name: "error - single error object", answers: []answer{{status: 400, body: `{"$severity":"error","$dataCode":"RecordInvalid","$message":"Bad","$source":"name"}`}},
			wantAttempts: 1, wantErr: true, wantStatus: 400, wantCode: "RecordInvalid",
		},
		{
			name: "error - non-JSON body kept as a short excerpt", answers: []answer{{status: 502, body: "<html><body>" + strings.Repeat("Bad gateway ", 100) + "</body></html>"}},
			wantAttempts: 4, wantErr: true, wantRetryable: true, wantStatus: 502,
			check: func(t *testing.T, err error) {
				var apiErr *APIError
				require.ErrorAs(t, err, &apiErr)
				assert.Empty(t, apiErr.Items)
				assert.True(t, strings.HasPrefix(apiErr.Body, "<html><body>Bad gateway"))
				assert.LessOrEqual(t, len(apiErr.Body), maxExcerpt+len("…"))
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newTestEnv(t)
			e.sage.api = func(w http.ResponseWriter, _ *http.Request, _ recorded, n int) {
				a := tc.answers[min(n, len(tc.answers))-1]
				if a.hangup {
					conn, _, err := w.(http.Hijacker).Hijack()
					require.NoError(t, err)
					conn.Close()
					return
				}
				for k, v := range a.header {
					w.Header().Set(k, v)
				}
				writeRaw(w, a.status, a.body)
			}
			s := e.session()
			_, err := s.CreateContact(context.Background(), ContactRequest{IdempotencyID: "0123456789abcdef0123456789abcdef", Name: "A", ContactTypeIDs: []string{"CUSTOMER"}})

			reqs := e.sage.Requests()
			assert.Len(t, reqs, tc.wantAttempts)
			for _, r := range reqs[1:] {
				assert.Equal(t, string(reqs[0].Body), string(r.Body), "each attempt sends the same body")
				assert.NotEmpty(t, r.Body)
			}
			if tc.wantWaits != nil {
				assert.Equal(t, tc.wantWaits, nonNil(e.clock.Waits()))
			} else {
				assert.Len(t, e.clock.Waits(), tc.wantAttempts-1)
			}
			if !tc.wantErr {
				require.NoError(t, err)
				return
			}
			require.Error(t, err)
			assert.Equal(t, tc.wantRetryable, IsRetryable(err))
			var pe *PermanentError
			assert.Equal(t, !tc.wantRetryable, errors.As(err, &pe))
			assert.NotErrorIs(t, err, ErrConnectionLost)
			if tc.wantStatus != 0 {
				var apiErr *APIError
				require.ErrorAs(t, err, &apiErr)
				assert.Equal(t, tc.wantStatus, apiErr.StatusCode)
				assert.Equal(t, tc.wantCode, apiErr.DataCode())
			}
			if tc.wantAfter != 0 {
				var re *RetryableError
				require.ErrorAs(t, err, &re)
				assert.Equal(t, tc.wantAfter, re.RetryAfter)
			}
			if tc.check != nil {
				tc.check(t, err)
			}
		})
	}
}

func nonNil(d []time.Duration) []time.Duration {
	if d == nil {
		return []time.Duration{}
	}
	return d
}

func TestSession_ContextCancelled(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	s := e.session()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := s.GetContact(ctx, "c1")
	require.ErrorIs(t, err, context.Canceled)
	assert.False(t, IsRetryable(err))
	var pe *PermanentError
	assert.False(t, errors.As(err, &pe))
}

// TestSession_RateLimit checks the limiter is per business: RequestsPerMinute 60 gives a burst
// of 6, then one request a second on the Client's clock.
func TestSession_RateLimit(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t, func(c *Config) { c.RequestsPerMinute = 60 })
	tokA := e.sage.seed(e.clock.Now().Add(time.Hour))
	a := e.client.Session(Connection{CompanyID: 1, BusinessID: "business-a", Token: tokA}, e.store)
	tokB := e.sage.seed(e.clock.Now().Add(time.Hour))
	b := e.client.Session(Connection{CompanyID: 2, BusinessID: "business-b", Token: tokB}, e.store)
	a2 := e.client.Session(Connection{CompanyID: 3, BusinessID: "business-a", Token: tokB}, e.store)
	ctx := context.Background()

	for range 6 {
		_, err := a.GetContact(ctx, "c1")
		require.NoError(t, err)
	}
	assert.Empty(t, e.clock.Waits(), "the burst passes at once")
	for range 6 {
		_, err := b.GetContact(ctx, "c1")
		require.NoError(t, err)
	}
	assert.Empty(t, e.clock.Waits(), "another business has its own limiter")
	_, err := a2.GetContact(ctx, "c1")
	require.NoError(t, err)
	_, err = a.GetContact(ctx, "c1")
	require.NoError(t, err)
	assert.Equal(t, []time.Duration{time.Second, time.Second}, e.clock.Waits(), "a session on the same business shares its limiter")
}

func TestSession_DeadlineShorterThanRetryAfter(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	e.sage.api = func(w http.ResponseWriter, _ *http.Request, _ recorded, _ int) {
		w.Header().Set("Retry-After", "30")
		writeRaw(w, http.StatusTooManyRequests, `[{"$severity":"error","$dataCode":"TooManyRequests","$message":"Slow down","$source":""}]`)
	}
	s := e.session()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := s.GetContact(ctx, "c1")
	var re *RetryableError
	require.ErrorAs(t, err, &re)
	assert.Equal(t, 30*time.Second, re.RetryAfter)
	assert.Len(t, e.sage.Requests(), 1)
	assert.Empty(t, e.clock.Waits())
}
