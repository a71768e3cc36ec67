package sage

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"time"

	jsonv2 "github.com/go-json-experiment/json"
	jsonv1 "github.com/go-json-experiment/json/v1"
)

// Sage Accounting v3.1 endpoints, relative to Config.APIURL.
const (
	pathBusinesses      = "/businesses"
	pathBankAccounts    = "/bank_accounts"
	pathTaxRates        = "/tax_rates"
	pathLedgerAccounts  = "/ledger_accounts"
	pathContacts        = "/contacts"
	pathSalesInvoices   = "/sales_invoices"
	pathContactPayments = "/contact_payments"
)

// itemsPerPage is Sage's largest page (NOTES §4).
const itemsPerPage = "200"

// maxPages stops a list whose $next never ends.
const maxPages = 10000

// Session is one company's Sage connection: every call carries its token and X-Business. It is
// safe for concurrent use; token refreshes are serialised per company (see Client.Session).
//
// Errors from its methods are, with errors.As:
//   - *RetryableError: network failures, 408, 429 and 5xx after Config.MaxAttempts (RetryAfter
//     set when Sage said how long to wait); token refresh or TokenStore failures; and, wrapping
//     ErrConnectionLost, a refused refresh token (invalid_grant), a 401 that a fresh token did
//     not cure, or a Session without BusinessID (ErrNoBusiness);
//   - *PermanentError: any other 4xx (422 RecordInvalid, 403 MultiUserAccessDenied, 404, …),
//     a 2xx body that does not decode, or a call that cannot be built (empty id);
//   - neither: the caller's ctx ended (the error wraps ctx.Err()).
//
// Sage's answer, when there was one, is reachable as an *APIError carrying the method and the
// path (never the query, a header or a token).
type Session struct {
	c     *Client
	conn  Connection // CompanyID and BusinessID; the token lives in tok
	store TokenStore
	tok   *tokenState
	rt    http.RoundTripper
	log   *slog.Logger
}

// CompanyID is the GES company this Session writes for.
func (s *Session) CompanyID() int64 { return s.conn.CompanyID }

// BusinessID is the Sage business sent as X-Business, "" before one is chosen.
func (s *Session) BusinessID() string { return s.conn.BusinessID }

// Businesses lists the Sage businesses the connection's user may reach (GET /businesses, Core
// API, all pages). It is the one call that works without a BusinessID.
func (s *Session) Businesses(ctx context.Context) ([]Business, error) {
	// attributes=all: the subscriptions tell the tier (Start or not).
	return list[Business](ctx, s, pathBusinesses, url.Values{"attributes": {"all"}}, false)
}

// BankAccounts lists the business's bank accounts (GET /bank_accounts, all pages,
// attributes=all). Balances are exact Decimals.
func (s *Session) BankAccounts(ctx context.Context) ([]BankAccount, error) {
	return list[BankAccount](ctx, s, pathBankAccounts, nil, true)
}

// CreateBankAccount creates a bank account (POST /bank_accounts, body {"bank_account": req},
// 201). Requires the user's Bank: Full Access right, else a *PermanentError (403).
func (s *Session) CreateBankAccount(ctx context.Context, req BankAccountRequest) (BankAccount, error) {
	var out BankAccount
	s.warnNoIdempotency(req.IdempotencyID, pathBankAccounts)
	err := s.do(ctx, http.MethodPost, pathBankAccounts, nil, map[string]any{"bank_account": req}, &out)
	return out, err
}

// TaxRates lists the business's tax rates (GET /tax_rates, all pages, attributes=all); in GB
// ids such as GB_STANDARD and GB_ZERO.
func (s *Session) TaxRates(ctx context.Context) ([]TaxRate, error) {
	return list[TaxRate](ctx, s, pathTaxRates, nil, true)
}

// LedgerAccounts lists the business's ledger accounts (GET /ledger_accounts, all pages,
// attributes=all); ids are per business, match them by nominal code.
func (s *Session) LedgerAccounts(ctx context.Context) ([]LedgerAccount, error) {
	return list[LedgerAccount](ctx, s, pathLedgerAccounts, nil, true)
}

// CreateContact creates a contact (POST /contacts, body {"contact": req}, 201). Set
// req.IdempotencyID: a create is retried on 5xx and network errors, and only the idempotency
// id stops a retry from making a second contact.
func (s *Session) CreateContact(ctx context.Context, req ContactRequest) (Contact, error) {
	var out Contact
	s.warnNoIdempotency(req.IdempotencyID, pathContacts)
	err := s.do(ctx, http.MethodPost, pathContacts, nil, map[string]any{"contact": req}, &out)
	return out, err
}

// UpdateContact changes contact id (PUT /contacts/{id}, body {"contact": req}, 200); fields left
// empty are not sent and stay as they are in Sage.
func (s *Session) UpdateContact(ctx context.Context, id string, req ContactRequest) (Contact, error) {
	var out Contact
	p, err := idPath(pathContacts, id)
	if err != nil {
		return out, err
	}
	err = s.do(ctx, http.MethodPut, p, nil, map[string]any{"contact": req}, &out)
	return out, err
}

// GetContact reads contact id (GET /contacts/{id}). An unknown id is a *PermanentError for which
// IsNotFound is true.
func (s *Session) GetContact(ctx context.Context, id string) (Contact, error) {
	var out Contact
	p, err := idPath(pathContacts, id)
	if err != nil {
		return out, err
	}
	err = s.do(ctx, http.MethodGet, p, nil, nil, &out)
	return out, err
}

// DeleteContact deletes contact id (DELETE /contacts/{id}, 204). Sage refuses (422) a contact
// that has transactions.
func (s *Session) DeleteContact(ctx context.Context, id string) error {
	p, err := idPath(pathContacts, id)
	if err != nil {
		return err
	}
	return s.do(ctx, http.MethodDelete, p, nil, nil, nil)
}

// CreateSalesInvoice creates a sales invoice (POST /sales_invoices, body {"sales_invoice": req},
// 201). Set req.IdempotencyID (see CreateContact). Money is sent as exact JSON numbers.
func (s *Session) CreateSalesInvoice(ctx context.Context, req SalesInvoiceRequest) (SalesInvoice, error) {
	var out SalesInvoice
	s.warnNoIdempotency(req.IdempotencyID, pathSalesInvoices)
	err := s.do(ctx, http.MethodPost, pathSalesInvoices, nil, map[string]any{"sales_invoice": req}, &out)
	return out, err
}

// UpdateSalesInvoice changes sales invoice id (PUT /sales_invoices/{id}, body
// {"sales_invoice": req}, 200). Sage refuses (422) invoices with allocations or on a VAT return.
func (s *Session) UpdateSalesInvoice(ctx context.Context, id string, req SalesInvoiceRequest) (SalesInvoice, error) {
	var out SalesInvoice
	p, err := idPath(pathSalesInvoices, id)
	if err != nil {
		return out, err
	}
	err = s.do(ctx, http.MethodPut, p, nil, map[string]any{"sales_invoice": req}, &out)
	return out, err
}

// GetSalesInvoice reads sales invoice id with its payment allocations
// (GET /sales_invoices/{id}?show_payments_allocations=true).
func (s *Session) GetSalesInvoice(ctx context.Context, id string) (SalesInvoice, error) {
	var out SalesInvoice
	p, err := idPath(pathSalesInvoices, id)
	if err != nil {
		return out, err
	}
	err = s.do(ctx, http.MethodGet, p, url.Values{"show_payments_allocations": {"true"}}, nil, &out)
	return out, err
}

// VoidSalesInvoice voids sales invoice id (DELETE /sales_invoices/{id}?void_reason=reason, 200)
// and returns the voided invoice. Sage requires a reason (at most 200 characters) unless the
// invoice is a draft, and refuses (422) invoices with allocations.
func (s *Session) VoidSalesInvoice(ctx context.Context, id, reason string) (SalesInvoice, error) {
	var out SalesInvoice
	p, err := idPath(pathSalesInvoices, id)
	if err != nil {
		return out, err
	}
	var q url.Values
	if reason != "" {
		q = url.Values{"void_reason": {reason}}
	}
	err = s.do(ctx, http.MethodDelete, p, q, nil, &out)
	return out, err
}

// CreateContactPayment records a payment (POST /contact_payments, body {"contact_payment": req},
// 201), usually a CUSTOMER_RECEIPT allocated to a sales invoice. Set req.IdempotencyID (see
// CreateContact).
func (s *Session) CreateContactPayment(ctx context.Context, req ContactPaymentRequest) (ContactPayment, error) {
	var out ContactPayment
	s.warnNoIdempotency(req.IdempotencyID, pathContactPayments)
	err := s.do(ctx, http.MethodPost, pathContactPayments, nil, map[string]any{"contact_payment": req}, &out)
	return out, err
}

// UpdateContactPayment changes payment id (PUT /contact_payments/{id}, body
// {"contact_payment": req}, 200). A non-nil empty req.AllocatedArtefacts is sent as [] and
// clears the payment's allocations.
func (s *Session) UpdateContactPayment(ctx context.Context, id string, req ContactPaymentRequest) (ContactPayment, error) {
	var out ContactPayment
	p, err := idPath(pathContactPayments, id)
	if err != nil {
		return out, err
	}
	err = s.do(ctx, http.MethodPut, p, nil, map[string]any{"contact_payment": req}, &out)
	return out, err
}

// GetContactPayment reads payment id (GET /contact_payments/{id}).
func (s *Session) GetContactPayment(ctx context.Context, id string) (ContactPayment, error) {
	var out ContactPayment
	p, err := idPath(pathContactPayments, id)
	if err != nil {
		return out, err
	}
	err = s.do(ctx, http.MethodGet, p, nil, nil, &out)
	return out, err
}

// DeleteContactPayment deletes payment id (DELETE /contact_payments/{id}, 204), which also
// removes its allocations.
func (s *Session) DeleteContactPayment(ctx context.Context, id string) error {
	p, err := idPath(pathContactPayments, id)
	if err != nil {
		return err
	}
	return s.do(ctx, http.MethodDelete, p, nil, nil, nil)
}

// ListContacts lists contacts (GET /contacts, all pages) filtered by query (search, email,
// contact_type_id, updated_or_created_since, …). items_per_page=200 and attributes=all are added
// unless query sets them.
func (s *Session) ListContacts(ctx context.Context, query url.Values) ([]Contact, error) {
	return list[Contact](ctx, s, pathContacts, query, true)
}

// ContactList is what ListContactsAt read: the contacts of every page read (their keys; none
// when they went to its each instead), the first page's $total, how many pages were read, and
// At, Sage's clock when it read the first page at the latest: its reply's Date header (to the
// second, rounded down) less the time the request took from here, since a server stamps Date as
// it answers; zero when the reply had no Date.
type ContactList struct {
	Contacts []ContactKeys
	Total    int
	Pages    int
	At       time.Time
}

// ListContactsAt lists contacts like ListContacts (GET /contacts, all pages, items_per_page=200
// and attributes=all unless query sets them) and says when, by Sage's clock, it did: a later
// list with updated_or_created_since a little before At sees every contact this one could not.
// When limit > 0 and the first page's $total exceeds limit, it stops after the first page
// (Contacts then holds that page only). When each is set, it gets every page's contacts as the
// page is read, and they are not kept: a read of 25 pages then holds one at a time.
func (s *Session) ListContactsAt(ctx context.Context, query url.Values, limit int, each func([]ContactKeys)) (ContactList, error) {
	var out ContactList
	var first http.Header
	var took time.Duration
	start := s.c.clock.Now()
	items, total, err := listPages[ContactKeys](ctx, s, pathContacts, query, true, each == nil, func(p Page[ContactKeys], h http.Header) bool {
		if first == nil {
			first, took = h, s.c.clock.Now().Sub(start)
		}
		out.Pages++
		if each != nil {
			each(p.Items)
		}
		return limit <= 0 || p.Total <= limit
	})
	if err != nil {
		return ContactList{}, err
	}
	out.Contacts, out.Total = items, total
	if d, err := http.ParseTime(first.Get("Date")); err == nil {
		out.At = d.UTC().Add(-took)
	}
	return out, nil
}

// ListSalesInvoices lists sales invoices (GET /sales_invoices, all pages) filtered by query
// (search, contact_id, status_id, from_date, updated_or_created_since, …). items_per_page=200
// and attributes=all are added unless query sets them.
func (s *Session) ListSalesInvoices(ctx context.Context, query url.Values) ([]SalesInvoice, error) {
	return list[SalesInvoice](ctx, s, pathSalesInvoices, query, true)
}

// ListContactPayments lists contact payments (GET /contact_payments, all pages) filtered by
// query (contact_id, transaction_type_id, from_date, …), with items_per_page=200 and
// attributes=all unless query sets them.
func (s *Session) ListContactPayments(ctx context.Context, query url.Values) ([]ContactPayment, error) {
	return list[ContactPayment](ctx, s, pathContactPayments, query, true)
}

// warnNoIdempotency logs a create sent without idempotency_id, which a retry could duplicate.
func (s *Session) warnNoIdempotency(id, path string) {
	if id == "" {
		s.log.Warn("sage create without idempotency_id; a retried request may create a duplicate", "path", path)
	}
}

// idPath is base + "/" + the escaped id; an empty id would address the collection instead.
func idPath(base, id string) (string, error) {
	if strings.TrimSpace(id) == "" {
		return "", &PermanentError{Err: fmt.Errorf("sage %s: empty id", base)}
	}
	return base + "/" + url.PathEscape(id), nil
}

// list reads every page of a list endpoint, following $next until it is null. With defaults,
// items_per_page=200 and attributes=all are added unless query has them; they are carried onto
// each $next that lacks them.
func list[T any](ctx context.Context, s *Session, path string, query url.Values, defaults bool) ([]T, error) {
	all, _, err := listPages[T](ctx, s, path, query, defaults, true, nil)
	return all, err
}

// listPages is list, also giving the first page's $total, with more (when not nil) called on
// each page read, with its reply's header: false stops the list after that page. Pages' items
// are returned only with keep (more may take them instead).
func listPages[T any](ctx context.Context, s *Session, path string, query url.Values, defaults, keep bool, more func(Page[T], http.Header) bool) ([]T, int, error) {
	q := url.Values{}
	for k, v := range query {
		q[k] = append([]string(nil), v...)
	}
	if defaults {
		if q.Get("items_per_page") == "" {
			q.Set("items_per_page", itemsPerPage)
		}
		if q.Get("attributes") == "" {
			q.Set("attributes", "all")
		}
	}
	u, err := s.c.endpoint(path, q)
	if err != nil {
		return nil, 0, err
	}
	var all []T
	total := -1
	seen := map[string]bool{u.String(): true}
	for range maxPages {
		var page Page[T]
		h, err := s.doURLHeader(ctx, http.MethodGet, u, nil, &page)
		if err != nil {
			return nil, 0, err
		}
		if total < 0 {
			total = page.Total
		}
		if keep {
			all = append(all, page.Items...)
		}
		goOn := more == nil || more(page, h)
		if !goOn || page.Next == nil || *page.Next == "" {
			return all, total, nil
		}
		next, err := s.c.resolveNext(*page.Next, q)
		if err != nil {
			return nil, 0, &PermanentError{Err: fmt.Errorf("sage GET %s: following $next: %w", path, err)}
		}
		if seen[next.String()] {
			return nil, 0, &PermanentError{Err: fmt.Errorf("sage GET %s: $next repeats page %s", path, next.RequestURI())}
		}
		seen[next.String()] = true
		u = next
	}
	return nil, 0, &PermanentError{Err: fmt.Errorf("sage GET %s: more than %d pages", path, maxPages)}
}

// endpoint is the absolute URL of an API path with query.
func (c *Client) endpoint(path string, q url.Values) (*url.URL, error) {
	if c.apiURL == nil {
		return nil, &PermanentError{Err: fmt.Errorf("sage api url %q is not an absolute url", c.cfg.APIURL)}
	}
	raw := c.cfg.APIURL + path
	if len(q) > 0 {
		raw += "?" + q.Encode()
	}
	u, err := url.Parse(raw)
	if err != nil {
		return nil, &PermanentError{Err: fmt.Errorf("sage %s: %w", path, err)}
	}
	return u, nil
}

// resolveNext turns Sage's $next ("/contacts?page=2&items_per_page=200", relative to the API
// base) into an absolute URL on the API host, adding the parameters of q it lacks. An absolute
// $next on another host is refused: the bearer token must not go there.
func (c *Client) resolveNext(next string, q url.Values) (*url.URL, error) {
	ref, err := url.Parse(next)
	if err != nil {
		return nil, err
	}
	u := *c.apiURL
	switch {
	case ref.IsAbs() || ref.Host != "":
		if ref.Host != c.apiURL.Host || (ref.Scheme != "" && ref.Scheme != c.apiURL.Scheme) {
			return nil, fmt.Errorf("$next points to another host %q", ref.Host)
		}
		u.Path, u.RawPath = ref.Path, ref.RawPath
	case strings.HasPrefix(ref.Path, "/"):
		base := strings.TrimRight(c.apiURL.Path, "/")
		if base != "" && (ref.Path == base || strings.HasPrefix(ref.Path, base+"/")) {
			u.Path, u.RawPath = ref.Path, ref.RawPath
		} else {
			u.Path, u.RawPath = base+ref.Path, ""
			if ref.RawPath != "" {
				u.RawPath = strings.TrimRight(c.apiURL.EscapedPath(), "/") + ref.RawPath
			}
		}
	default:
		return nil, fmt.Errorf("$next %q is not a path", next)
	}
	nq := ref.Query()
	for k, v := range q {
		if _, ok := nq[k]; !ok {
			nq[k] = v
		}
	}
	u.RawQuery = nq.Encode()
	u.Fragment = ""
	return &u, nil
}

// do sends one API call: method to path with query, in (if not nil) as the JSON body, and the
// JSON answer decoded into out (if not nil).
func (s *Session) do(ctx context.Context, method, path string, query url.Values, in, out any) error {
	u, err := s.c.endpoint(path, query)
	if err != nil {
		return err
	}
	return s.doURL(ctx, method, u, in, out)
}

func (s *Session) doURL(ctx context.Context, method string, u *url.URL, in, out any) error {
	_, err := s.doURLHeader(ctx, method, u, in, out)
	return err
}

// doURLHeader is doURL, also giving the header of a 2xx reply.
func (s *Session) doURLHeader(ctx context.Context, method string, u *url.URL, in, out any) (http.Header, error) {
	path := s.c.apiPath(u)
	if s.conn.BusinessID == "" && path != pathBusinesses {
		return nil, &RetryableError{Err: fmt.Errorf("sage %s %s: %w: %w", method, path, ErrConnectionLost, ErrNoBusiness)}
	}
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return nil, &PermanentError{Err: fmt.Errorf("sage %s %s: encoding request: %w", method, path, err)}
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, u.String(), body)
	if err != nil {
		return nil, &PermanentError{Err: fmt.Errorf("sage %s %s: building request: %w", method, path, err)}
	}
	req.Header.Set("Accept", "application/json")
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if s.conn.BusinessID != "" {
		req.Header.Set("X-Business", s.conn.BusinessID)
	}
	resp, err := s.rt.RoundTrip(req)
	if err != nil {
		return nil, s.transportError(ctx, method, path, err)
	}
	defer resp.Body.Close()
	var data []byte
	if b, ok := resp.Body.(*readBodyCloser); ok {
		data = b.Bytes() // read whole by sendTransport: no second copy
	} else if data, err = io.ReadAll(resp.Body); err != nil {
		return nil, &RetryableError{Err: fmt.Errorf("sage %s %s: reading response: %w", method, path, err)}
	}
	if resp.StatusCode >= 200 && resp.StatusCode <= 299 {
		if out == nil || len(bytes.TrimSpace(data)) == 0 {
			return resp.Header, nil
		}
		if err := decodeReply(data, out); err != nil {
			return nil, &PermanentError{Err: fmt.Errorf("sage %s %s: decoding %d response: %w", method, path, resp.StatusCode, err)}
		}
		return resp.Header, nil
	}
	apiErr := newAPIError(method, path, resp, data, s.c.clock.Now(), s.secrets())
	switch {
	case resp.StatusCode == http.StatusUnauthorized:
		// authTransport already refreshed the token and tried again: it does not work.
		s.log.Warn("sage refused a fresh token; the company must reconnect", "method", method, "path", path, "code", apiErr.DataCode())
		return nil, &RetryableError{Err: fmt.Errorf("%w: %w", ErrConnectionLost, apiErr)}
	case retryableStatus(resp.StatusCode):
		return nil, &RetryableError{Err: apiErr, RetryAfter: apiErr.RetryAfter}
	default:
		return nil, &PermanentError{Err: apiErr}
	}
}

// decodeReply decodes a 2xx reply's JSON into out with encoding/json's (v1) semantics, through
// the encoding/json/v2 implementation (github.com/go-json-experiment/json): it decodes Sage's
// replies two to three times faster with a third of the allocations
// (BenchmarkDecodeReply). Nothing decoded keeps a reference to data. Reply types must not
// use encoding/json.Number: this package does not know it and refuses a number there
// (FuzzDecodeReply compares the two decoders over the reply types).
func decodeReply(data []byte, out any) error {
	return jsonv2.Unmarshal(data, out, jsonv1.DefaultOptionsV1())
}

// transportError classifies an error from the transport chain, keeping its class on top and
// adding the method and path.
func (s *Session) transportError(ctx context.Context, method, path string, err error) error {
	var re *RetryableError
	var pe *PermanentError
	switch {
	case errors.As(err, &re):
		return &RetryableError{Err: fmt.Errorf("sage %s %s: %w", method, path, re.Err), RetryAfter: re.RetryAfter}
	case errors.As(err, &pe):
		return &PermanentError{Err: fmt.Errorf("sage %s %s: %w", method, path, pe.Err)}
	case ctx.Err() != nil:
		return fmt.Errorf("sage %s %s: %w", method, path, ctx.Err())
	}
	return &RetryableError{Err: fmt.Errorf("sage %s %s: %w", method, path, redactErr(err, s.secrets()))}
}

// secrets are the strings no error text may contain: the client secret and the company's
// recent tokens.
func (s *Session) secrets() []string {
	return append(s.tok.secretList(), s.c.cfg.ClientSecret)
}

// apiPath is u's path below the API base, for error messages and logs.
func (c *Client) apiPath(u *url.URL) string {
	p := u.EscapedPath()
	if base := strings.TrimRight(c.apiURL.EscapedPath(), "/"); base != "" {
		p = strings.TrimPrefix(p, base)
	}
	return p
}
