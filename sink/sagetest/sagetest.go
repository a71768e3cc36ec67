// Package sagetest is an in-memory Sage Accounting v3.1 server for tests, the demo and
// `gessync sandbox`, in the manner of net/http/httptest. Nothing in production uses it.
//
// It follows Sage's own paths and shapes (https://developer.sage.com/accounting/, the v3.1
// "Accounts" swagger embedded from testdata/) and, where Sage's behaviour is not documented,
// the strictest plausible reading of it (see /work/shared/sage/NOTES.md in the project):
//
//   - OAuth2 authorization code flow: GET /oauth2/auth/central approves at once and redirects
//     with a code (valid 60 s, single use); POST /token exchanges it, or a refresh token, for a
//     300 s access token and a rotating 31-day refresh token (the old one is retired at once).
//   - The API under /v3.1/: businesses, contacts, sales_invoices (+ /release), contact_payments,
//     contact_allocations, bank_accounts, tax_rates, ledger_accounts, payment_methods and
//     financial_settings. Every call needs "Authorization: Bearer <access token>"; X-Business
//     picks the business (absent: the one the token was issued for; another one: 403).
//   - Bodies are wrapped in the singular resource name ({"contact": {…}}); lists use Sage's
//     envelope {$total, $page, $next, $back, $itemsPerPage, $items}; money in responses is a
//     JSON string ("102.00"); errors are Sage's array
//     [{"$severity","$dataCode","$message","$source"}].
//   - Every request body and query string is validated against the swagger (422 RecordInvalid),
//     stricter than the spec in two ways: unknown body attributes and unknown query parameters are
//     refused (real Sage ignores them silently), and the spec's maxLength of each response field is
//     applied to the request field of the same name.
//   - Sage's refusals: unique invoice numbers, required fields, editing or voiding an allocated
//     invoice, editing or voiding an invoice on a submitted VAT return (FileVATReturn),
//     over-allocation, Accounting Start's limits, a read-only user, a lapsed subscription, the
//     per-business rate limit (429 with Retry-After), token expiry.
//   - Idempotency: a create carrying "idempotency_id" inside the resource object, repeated within
//     7 days, answers the first result again and creates nothing.
//   - Faults (see Faults) for outages, latency, resets and replies lost after the write.
//
// Sandbox-only endpoints live under /_sandbox/: GET dump, GET/PUT faults, POST businesses and
// POST tokens. All times come from Options.Now, so tests can move the clock.
package sagetest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"time"
)

// Options configures a Sandbox. The zero value is ready to use.
type Options struct {
	// Now is the sandbox's clock (token and code expiry, rate-limit window, idempotency window,
	// created_at/updated_at). Nil means time.Now.
	Now func() time.Time
	// ClientID and ClientSecret are the OAuth client credentials the sandbox accepts; empty
	// accepts any.
	ClientID, ClientSecret string
	// RateLimit is the number of API requests a business may make in any 60 s; beyond it the
	// sandbox answers 429 with Retry-After. 0 means 200 (Sage's documented figure), negative
	// turns the limit off.
	RateLimit int
	// Logger receives one Debug line per request (never a token). Nil discards.
	Logger *slog.Logger
	// InvalidResponse, when set, is called for every /v3.1 response that does not validate
	// against the spec (money sent as strings is allowed). Tests set it to report a failure.
	InvalidResponse func(r *http.Request, err error)
	// InvalidRequest, when set, is called for every /v3.1 request whose query or body the spec
	// forbids (the sandbox answers it 422 RecordInvalid). Tests set it to prove a client only
	// sends what the spec allows.
	InvalidRequest func(r *http.Request, problems string)
	// ValidateEvery, above 1, checks against the spec only one request in ValidateEvery of each
	// operation (the first, then every ValidateEvery-th); 0 or 1 checks every request. For
	// benchmarks, where the sandbox stands in for Sage's servers on the machine being measured:
	// the spec check is most of its CPU. Its own rules (required fields, totals, allocations)
	// still apply to every request.
	ValidateEvery int
}

// Sandbox is an in-memory Sage Accounting v3.1 server. It is an http.Handler and safe for
// concurrent use. Create it with New, or NewServer for a listening one.
type Sandbox struct {
	opts Options
	log  *slog.Logger

	mu         sync.Mutex
	businesses coll[*business]
	tokens     map[string]*token
	codes      map[string]*authCode
	faults     Faults
	nBusiness  int
	// seen counts each operation's requests, for Options.ValidateEvery: *specOp → *atomic.Uint64.
	seen sync.Map
}

// New returns a Sandbox with no businesses.
func New(opts Options) *Sandbox {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.RateLimit == 0 {
		opts.RateLimit = 200
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Sandbox{
		opts: opts, log: log.With("component", "sagetest"),
		tokens: map[string]*token{}, codes: map[string]*authCode{},
	}
}

// Server is a Sandbox listening on a loopback address, like httptest.Server. URL is its base,
// e.g. "http://127.0.0.1:41234"; the API is at URL+"/v3.1".
type Server struct {
	URL string
	*Sandbox
	srv *httptest.Server
}

// NewServer starts a Sandbox on 127.0.0.1 with a random port. Call Close when done.
func NewServer(opts Options) *Server {
	sb := New(opts)
	srv := httptest.NewServer(sb)
	return &Server{URL: srv.URL, Sandbox: sb, srv: srv}
}

// Close shuts the server down, waiting for requests in flight.
func (s *Server) Close() { s.srv.Close() }

// Client returns an HTTP client for the server, like httptest.Server.Client.
func (s *Server) Client() *http.Client { return s.srv.Client() }

// APIURL is the API base for sink/sage.Config.APIURL: URL+"/v3.1".
func (s *Server) APIURL() string { return s.URL + "/v3.1" }

// AuthURL is the authorize endpoint for sink/sage.Config.AuthURL: URL+"/oauth2/auth/central".
func (s *Server) AuthURL() string { return s.URL + "/oauth2/auth/central" }

// TokenURL is the token endpoint for sink/sage.Config.TokenURL: URL+"/token".
func (s *Server) TokenURL() string { return s.URL + "/token" }

// BusinessInfo describes a sandbox business and the ids a test usually needs from it.
type BusinessInfo struct {
	ID   string `json:"id"`
	Name string `json:"name"`
	Tier string `json:"tier"`
	// BankAccountID is the current account (type CHECKING) "Current Account", "" when the
	// business was created without bank accounts.
	BankAccountID string `json:"bank_account_id"`
	// SalesLedgerAccountID is nominal 4000 "Sales Type A".
	SalesLedgerAccountID string `json:"sales_ledger_account_id"`
	// CISLabourLedgerAccountID and CISMaterialsLedgerAccountID are the sales ledger accounts
	// flagged cis_labour (4010) and cis_materials (4011).
	CISLabourLedgerAccountID    string `json:"cis_labour_ledger_account_id"`
	CISMaterialsLedgerAccountID string `json:"cis_materials_ledger_account_id"`
}

// CreateBusiness adds a business on tier "start", "standard" or "plus" ("" = standard) with the
// standard chart of accounts and a current account, and returns it. An empty name becomes
// "Sandbox Business N". It panics on an unknown tier.
func (s *Sandbox) CreateBusiness(name, tier string) BusinessInfo {
	s.mu.Lock()
	defer s.mu.Unlock()
	b, err := s.createBusiness(name, tier, false)
	if err != nil {
		panic("sagetest: " + err.Error())
	}
	return b.info()
}

func (s *Sandbox) createBusiness(name, tier string, noBank bool) (*business, error) {
	if tier == "" {
		tier = TierStandard
	}
	if _, ok := tierNames[tier]; !ok {
		return nil, fmt.Errorf("unknown tier %q (want start, standard or plus)", tier)
	}
	s.nBusiness++
	if name == "" {
		name = fmt.Sprintf("Sandbox Business %d", s.nBusiness)
	}
	b := newBusiness(name, tier, s.opts.Now(), noBank)
	s.businesses.add(b.id, b)
	return b, nil
}

// FileVATReturn submits business's VAT return for the periods ending on to (YYYY-MM-DD), as
// its accountant would in Sage: from then on its issued invoices dated on or before to are VAT
// reconciled, and editing or voiding one is refused (422 RecordInvalid "You cannot edit VAT
// reconciled transactions."). Payments and their allocations are not affected (standard,
// accrual scheme). It errors on an unknown business or a malformed date.
func (s *Sandbox) FileVATReturn(businessID, to string) error {
	if _, err := time.Parse(time.DateOnly, to); err != nil {
		return fmt.Errorf("sagetest: VAT return end %q: %w", to, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	b, ok := s.businesses.get(businessID)
	if !ok {
		return fmt.Errorf("sagetest: no business %s", businessID)
	}
	b.vatFiledTo = max(b.vatFiledTo, to)
	return nil
}

// Dump returns everything the sandbox holds, the same as GET /_sandbox/dump.
func (s *Sandbox) Dump() Dump {
	s.mu.Lock()
	defer s.mu.Unlock()
	d := Dump{Businesses: []BusinessDump{}}
	for _, b := range s.businesses.all() {
		d.Businesses = append(d.Businesses, b.dump())
	}
	// A JSON round trip makes the copy deep and exactly what the endpoint sends.
	raw, err := json.Marshal(d)
	if err != nil {
		panic(err)
	}
	var out Dump
	if err := json.Unmarshal(raw, &out); err != nil {
		panic(err)
	}
	return out
}

// ServeHTTP routes the OAuth endpoints, the API under /v3.1/ and the /_sandbox/ endpoints.
func (s *Sandbox) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
	start := time.Now()
	defer func() {
		s.log.Debug("request", "method", r.Method, "path", r.URL.Path, "status", rec.status,
			"business", r.Header.Get("X-Business"), "elapsed", time.Since(start))
	}()
	switch p := r.URL.Path; {
	case p == "/oauth2/auth/central":
		s.authorize(rec, r)
	case p == "/token":
		s.token(rec, r)
	case strings.HasPrefix(p, "/v3.1/"):
		s.api(rec, r)
	case strings.HasPrefix(p, "/_sandbox/"):
		s.sandboxEndpoint(rec, r)
	default:
		writeJSON(rec, http.StatusNotFound, errorItems("RecordNotFound", "No route matches "+p+".", ""))
	}
}

// statusRecorder remembers the status written, for the request log.
type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (w *statusRecorder) WriteHeader(code int) {
	w.status = code
	w.ResponseWriter.WriteHeader(code)
}

// Unwrap lets http.ResponseController reach the connection (for resets).
func (w *statusRecorder) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// sandboxEndpoint serves /_sandbox/…: dump, faults, businesses, tokens.
func (s *Sandbox) sandboxEndpoint(w http.ResponseWriter, r *http.Request) {
	switch r.Method + " " + r.URL.Path {
	case "GET /_sandbox/dump":
		writeJSON(w, http.StatusOK, s.Dump())
	case "GET /_sandbox/faults":
		writeJSON(w, http.StatusOK, s.Faults())
	case "PUT /_sandbox/faults":
		var f Faults
		if err := decodeStrict(r.Body, &f); err != nil {
			writeJSON(w, http.StatusBadRequest, errorItems("BadRequest", err.Error(), ""))
			return
		}
		if err := s.checkFaults(f); err != nil {
			writeJSON(w, http.StatusUnprocessableEntity, errorItems("RecordInvalid", err.Error(), ""))
			return
		}
		s.SetFaults(f)
		writeJSON(w, http.StatusOK, s.Faults())
	case "POST /_sandbox/businesses":
		var in struct {
			Name         string `json:"name"`
			Tier         string `json:"tier"`
			BankAccounts string `json:"bank_accounts"`
		}
		if err := decodeStrict(r.Body, &in); err != nil {
			writeJSON(w, http.StatusBadRequest, errorItems("BadRequest", err.Error(), ""))
			return
		}
		s.mu.Lock()
		b, err := s.createBusiness(in.Name, in.Tier, in.BankAccounts == "none")
		s.mu.Unlock()
		if err != nil {
			writeJSON(w, http.StatusUnprocessableEntity, errorItems("RecordInvalid", err.Error(), "tier"))
			return
		}
		writeJSON(w, http.StatusCreated, b.info())
	case "POST /_sandbox/tokens":
		var in struct {
			BusinessID string `json:"business_id"`
		}
		if err := decodeStrict(r.Body, &in); err != nil {
			writeJSON(w, http.StatusBadRequest, errorItems("BadRequest", err.Error(), ""))
			return
		}
		s.mu.Lock()
		b, ok := s.businesses.get(in.BusinessID)
		var resp tokenResponse
		if ok {
			resp = s.issue(b, "full_access")
		}
		s.mu.Unlock()
		if !ok {
			writeJSON(w, http.StatusNotFound, errorItems("RecordNotFound", "No business "+in.BusinessID+".", "business_id"))
			return
		}
		writeJSON(w, http.StatusCreated, resp)
	default:
		writeJSON(w, http.StatusNotFound, errorItems("RecordNotFound", "No sandbox endpoint "+r.Method+" "+r.URL.Path+".", ""))
	}
}

// decodeStrict decodes one JSON value, refusing unknown fields.
func decodeStrict(r io.Reader, v any) error {
	body, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("request body: %w", err)
	}
	return nil
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

// errorItem is one element of Sage's error body.
type errorItem struct {
	Severity string `json:"$severity"`
	DataCode string `json:"$dataCode"`
	Message  string `json:"$message"`
	Source   string `json:"$source"`
}

func errorItems(code, msg, source string) []errorItem {
	return []errorItem{{Severity: "error", DataCode: code, Message: msg, Source: source}}
}
