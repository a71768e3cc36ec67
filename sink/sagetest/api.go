package sagetest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/shopspring/decimal"
)

// call is one authenticated API request being handled. Handlers run with s.mu held.
type call struct {
	b      *business
	now    time.Time
	query  url.Values
	body   []byte
	id     string // the {key} of the path
	wrap   string // the body's resource name
	plural string // the resource's path segment

	// since is updated_or_created_since, to the second (sinceSet: it was given), once read.
	since               time.Time
	sinceRead, sinceSet bool
}

// response is a handler's answer; body is marshalled unless raw is set.
type response struct {
	status int
	body   any
	raw    []byte
	header http.Header
}

func (r response) bytes() []byte {
	if r.raw != nil || r.body == nil {
		return r.raw
	}
	b, err := json.Marshal(r.body)
	if err != nil {
		panic(err)
	}
	return b
}

// resource is one API collection and the handlers it offers; nil handlers are not implemented.
type resource struct {
	list, get, create, update, del func(*call) response
	actions                        map[string]func(*call) response // POST /{resource}/{key}/{action}
	wrap                           string
	notInSpec                      bool // the Core API's /businesses
}

var resources = map[string]resource{
	"businesses": {list: listBusinesses, get: getBusiness, notInSpec: true},
	"contacts": {list: listContacts, get: getContact, create: createContact, update: updateContact,
		del: deleteContact, wrap: "contact"},
	"sales_invoices": {list: listInvoices, get: getInvoice, create: createInvoice, update: updateInvoice,
		del: voidInvoice, actions: map[string]func(*call) response{"release": releaseInvoice}, wrap: "sales_invoice"},
	"contact_payments": {list: listPayments, get: getPayment, create: createPayment, update: updatePayment,
		del: deletePayment, wrap: "contact_payment"},
	"contact_allocations": {list: listAllocations, get: getAllocation, create: createAllocation,
		del: deleteAllocation, wrap: "contact_allocation"},
	"bank_accounts":      {list: listBankAccounts, get: getBankAccount, create: createBankAccount, wrap: "bank_account"},
	"tax_rates":          {list: listTaxRates, get: getTaxRate},
	"ledger_accounts":    {list: listLedgerAccounts, get: getLedgerAccount},
	"payment_methods":    {list: listPaymentMethods, get: getPaymentMethod},
	"financial_settings": {list: getFinancialSettings},
}

// handlerFor picks the handler of a request path under /v3.1 ("/contacts/abc").
func handlerFor(method, path string) (h func(*call) response, res resource, plural, id string) {
	segs := strings.Split(strings.Trim(path, "/"), "/")
	res, ok := resources[segs[0]]
	if !ok {
		return nil, res, "", ""
	}
	plural = segs[0]
	switch {
	case len(segs) == 1 && method == http.MethodGet:
		h = res.list
	case len(segs) == 1 && method == http.MethodPost:
		h = res.create
	case len(segs) == 2 && method == http.MethodGet:
		h = res.get
	case len(segs) == 2 && method == http.MethodPut:
		h = res.update
	case len(segs) == 2 && method == http.MethodDelete:
		h = res.del
	case len(segs) == 3 && method == http.MethodPost:
		h = res.actions[segs[2]]
	}
	if len(segs) > 1 {
		id = segs[1]
	}
	return h, res, plural, id
}

// api serves /v3.1/…: faults, authentication, rate limit, account states, validation, handler,
// then the reply (or a dropped connection).
func (s *Sandbox) api(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, 10<<20))
	if err != nil {
		return
	}
	if s.applyPreFaults(w, r, "") {
		return
	}

	s.mu.Lock()
	b, scope, resp := s.authenticate(r)
	s.mu.Unlock()
	if resp != nil {
		s.reply(w, r, *resp)
		return
	}
	if s.applyPreFaults(w, r, b.id) {
		return
	}

	s.mu.Lock()
	resp = s.admit(r, b, scope)
	s.mu.Unlock()
	if resp != nil {
		s.reply(w, r, *resp)
		return
	}

	path := strings.TrimPrefix(r.URL.Path, "/v3.1")
	h, res, plural, id := handlerFor(r.Method, path)
	specPath, _ := specPathOf(path)
	so := loadSpec().op(r.Method, specPath)
	if h == nil {
		switch {
		case so != nil:
			s.reply(w, r, apiError(http.StatusNotImplemented, "NotImplemented",
				fmt.Sprintf("%s %s is in the Sage spec but not implemented by the sandbox.", r.Method, specPath), ""))
		default:
			s.reply(w, r, apiError(http.StatusNotFound, "RecordNotFound", "No route matches "+r.Method+" "+r.URL.Path+".", ""))
		}
		return
	}
	if len(bytes.TrimSpace(body)) > 0 && !json.Valid(body) {
		s.reply(w, r, apiError(http.StatusBadRequest, "BadRequest", "The request body is not valid JSON.", ""))
		return
	}
	if so != nil && !res.notInSpec {
		if items := s.checkRequest(so, r, body, id); len(items) > 0 {
			s.invalidRequest(r, items)
			s.reply(w, r, response{status: http.StatusUnprocessableEntity, body: items})
			return
		}
	} else if items := validatePaging(r.URL.Query()); len(items) > 0 {
		s.invalidRequest(r, items)
		s.reply(w, r, response{status: http.StatusUnprocessableEntity, body: items})
		return
	}

	c := &call{b: b, query: r.URL.Query(), body: body, id: id, wrap: res.wrap, plural: plural}
	s.mu.Lock()
	c.now = s.opts.Now()
	out := h(c)
	s.mu.Unlock()

	if r.Method != http.MethodGet && s.dropAfterCommit(b.id) {
		resetConn(w)
		return
	}
	// Sage's clock when it read and wrote: what updated_or_created_since compares with.
	w.Header().Set("Date", c.now.UTC().Format(http.TimeFormat))
	s.reply(w, r, out)
}

// applyPreFaults applies the faults that act before a call is handled and reports whether the
// call was answered (500) or its connection reset.
func (s *Sandbox) applyPreFaults(w http.ResponseWriter, r *http.Request, businessID string) bool {
	d := s.preFaults(businessID)
	sleep(r, d.latency)
	switch {
	case d.fail:
		s.reply(w, r, apiError(http.StatusInternalServerError, "UnexpectedError", "An unexpected error occurred.", ""))
		return true
	case d.reset:
		resetConn(w)
		return true
	}
	return false
}

// authenticate finds the business of the bearer token and X-Business. Callers hold s.mu.
func (s *Sandbox) authenticate(r *http.Request) (*business, string, *response) {
	denied := apiError(http.StatusUnauthorized, "AuthorizationFailure", "Access denied.", "")
	h := r.Header.Get("Authorization")
	scheme, tok, ok := strings.Cut(h, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") || tok == "" {
		return nil, "", &denied
	}
	t, ok := s.tokens[tok]
	if !ok || t.kind != kindAccessToken || !t.valid(s.opts.Now()) {
		return nil, "", &denied
	}
	if x := r.Header.Get("X-Business"); x != "" && x != t.business.id {
		forbidden := apiError(http.StatusForbidden, "AuthorizationFailure",
			"The user has no access to business "+x+".", "X-Business")
		return nil, "", &forbidden
	}
	return t.business, t.scope, nil
}

// admit applies the business's rate limit and account states. Callers hold s.mu.
func (s *Sandbox) admit(r *http.Request, b *business, scope string) *response {
	flags := s.faults.Businesses[b.id]
	if flags.SubscriptionLapsed {
		e := apiError(http.StatusUnauthorized, "AuthorizationFailure", "No active subscription. (MSE)", "")
		return &e
	}
	if limit := s.opts.RateLimit; limit > 0 {
		now := s.opts.Now()
		cut := 0
		for cut < len(b.window) && !b.window[cut].After(now.Add(-rateLimitWindow)) {
			cut++
		}
		b.window = b.window[cut:]
		if len(b.window) >= limit {
			wait := b.window[0].Add(rateLimitWindow).Sub(now)
			e := apiError(http.StatusTooManyRequests, "TooManyRequests",
				fmt.Sprintf("Rate limit of %d requests per 60 seconds exceeded for this business.", limit), "")
			e.header = http.Header{"Retry-After": {strconv.Itoa(int(math.Ceil(wait.Seconds())))}}
			return &e
		}
		b.window = append(b.window, now)
	}
	if r.Method != http.MethodGet && (flags.ReadOnly || scope == scopeReadOnly) {
		e := apiError(http.StatusForbidden, "MultiUserAccessDenied",
			"The current user is not allowed to access that resource with that method.", "")
		return &e
	}
	return nil
}

// checkRequest is so.validateRequest for the requests Options.ValidateEvery picks, and no
// problems for the others.
func (s *Sandbox) checkRequest(so *specOp, r *http.Request, body []byte, id string) []errorItem {
	if every := s.opts.ValidateEvery; every > 1 {
		c, _ := s.seen.LoadOrStore(so, new(atomic.Uint64))
		if (c.(*atomic.Uint64).Add(1)-1)%uint64(every) != 0 {
			return nil
		}
	}
	return so.validateRequest(r, body, id)
}

// reply writes resp, after checking it against the spec when Options.InvalidResponse is set.
func (s *Sandbox) reply(w http.ResponseWriter, r *http.Request, resp response) {
	body := resp.bytes()
	h := w.Header()
	for k, v := range resp.header {
		h[k] = v
	}
	if resp.status != http.StatusNoContent {
		h.Set("Content-Type", "application/json; charset=utf-8")
		// Declared, as a JSON API's reply usually is: without it net/http chunks a body over
		// 2 KB, and the client cannot size its buffer.
		h.Set("Content-Length", strconv.Itoa(len(body)))
	}
	if s.opts.InvalidResponse != nil {
		if err := ValidateResponse(r, resp.status, h, body); err != nil {
			s.opts.InvalidResponse(r, err)
		}
	}
	w.WriteHeader(resp.status)
	if resp.status != http.StatusNoContent {
		_, _ = w.Write(body)
	}
}

// ---- errors ----

func apiError(status int, code, msg, source string) response {
	return response{status: status, body: errorItems(code, msg, source)}
}

// invalid is a 422 RecordInvalid answer with the given items.
func invalid(items ...errorItem) response {
	return response{status: http.StatusUnprocessableEntity, body: items}
}

// problem is one RecordInvalid item.
func problem(source, msg string) errorItem {
	return errorItem{Severity: "error", DataCode: "RecordInvalid", Message: msg, Source: source}
}

const msgRequired = "This field is required."

func notFound() response {
	return apiError(http.StatusNotFound, "RecordNotFound", "The record could not be found.", "")
}

func ok(status int, body any) response { return response{status: status, body: body} }

// problems collects RecordInvalid items.
type problems []errorItem

func (p *problems) add(source, msg string) { *p = append(*p, problem(source, msg)) }

// decode reads the resource object of the request body ({"contact": {…}} → the {…}) into a T.
// The body has passed spec validation, so a failure here is a type the spec allows but T does
// not hold.
func decode[T any](c *call) (T, *response) {
	var in T
	var outer map[string]json.RawMessage
	err := json.Unmarshal(c.body, &outer)
	if err == nil && outer[c.wrap] != nil {
		d := json.NewDecoder(bytes.NewReader(outer[c.wrap]))
		d.UseNumber()
		err = d.Decode(&in)
	}
	if err != nil {
		e := apiError(http.StatusBadRequest, "BadRequest", "The request body cannot be read: "+err.Error(), "")
		return in, &e
	}
	return in, nil
}

// ---- money checks ----

// checkMoney adds a problem when d has more than 2 decimal places.
func (p *problems) checkMoney(source string, d *Decimal) {
	if d != nil && !d.Equal(d.Round(2)) {
		p.add(source, "must have at most 2 decimal places")
	}
}

func (p *problems) checkPositive(source string, d *Decimal) {
	if d != nil && d.Sign() <= 0 {
		p.add(source, "must be greater than 0")
	}
}

func blank(s *string) bool { return s == nil || strings.TrimSpace(*s) == "" }

// ---- lists ----

const maxPerPage = 200

// validatePaging checks page/items_per_page/attributes for endpoints the spec lacks.
func validatePaging(q url.Values) []errorItem {
	var items []errorItem
	for name, vs := range q {
		switch name {
		case "page", "items_per_page":
			if n, err := strconv.Atoi(vs[0]); err != nil || n < 1 || (name == "items_per_page" && n > maxPerPage) {
				items = append(items, problem(name, "is invalid"))
			}
		case "attributes":
		default:
			items = append(items, problem(name, "is not a parameter of this endpoint."))
		}
	}
	return items
}

// envelopeBody is Sage's list response. Items are the records themselves with attributes=all
// (encoded once, with the envelope), or each record's picked attributes (pick).
type envelopeBody struct {
	Total        int     `json:"$total"`
	Page         int     `json:"$page"`
	Next         *string `json:"$next"`
	Back         *string `json:"$back"`
	ItemsPerPage int     `json:"$itemsPerPage"`
	Items        []any   `json:"$items"`
}

// page answers a list of full records (each with id, displayed_as, $path) as one page of Sage's
// envelope: page and items_per_page (default 20, at most 200; a page past the end gives the last
// page), and only id, displayed_as and $path unless attributes=all or a comma list asks for more.
func page[T any](c *call, all []T) response {
	return pageOf(c, all, func(v T) T { return v })
}

// pageOf is page for a list of records that render (as T) only if they fall on the page asked
// for: a list filters every record of a business, and most fall on no page read.
func pageOf[R, T any](c *call, all []R, render func(R) T) response {
	per := 20
	if v, err := strconv.Atoi(c.query.Get("items_per_page")); err == nil {
		per = min(max(v, 1), maxPerPage)
	}
	pages := max(1, (len(all)+per-1)/per)
	n := 1
	if v, err := strconv.Atoi(c.query.Get("page")); err == nil && v > 1 {
		n = min(v, pages)
	}
	lo, hi := (n-1)*per, min(n*per, len(all))
	env := envelopeBody{Total: len(all), Page: n, ItemsPerPage: per, Items: make([]any, 0, hi-lo)}
	attributes := c.query.Get("attributes")
	for _, r := range all[lo:hi] {
		if attributes == "all" {
			env.Items = append(env.Items, render(r))
		} else {
			env.Items = append(env.Items, pick(render(r), attributes))
		}
	}
	link := func(p int) *string {
		q := url.Values{}
		for k, v := range c.query {
			if k != "page" && k != "items_per_page" {
				q[k] = v
			}
		}
		s := fmt.Sprintf("/%s?page=%d&items_per_page=%d", c.plural, p, per)
		if len(q) > 0 {
			s += "&" + q.Encode()
		}
		return &s
	}
	if n < pages {
		env.Next = link(n + 1)
	}
	if n > 1 {
		env.Back = link(n - 1)
	}
	return ok(http.StatusOK, env)
}

// pick marshals v keeping only the base attributes and those asked for.
func pick(v any, attributes string) json.RawMessage {
	raw, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	if attributes == "all" {
		return raw
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil {
		panic(err)
	}
	keep := []string{"id", "displayed_as", "$path"}
	for _, a := range strings.Split(attributes, ",") {
		keep = append(keep, strings.TrimSpace(a))
	}
	for k := range m {
		if !slices.Contains(keep, k) {
			delete(m, k)
		}
	}
	out, _ := json.Marshal(m)
	return out
}

// parseSince parses an updated_or_created_since or deleted_since value: a date or a date-time.
func parseSince(v string) (time.Time, bool) {
	for _, layout := range []string{time.RFC3339Nano, "2006-01-02T15:04Z07:00", "2006-01-02T15:04:05", "2006-01-02"} {
		if t, err := time.Parse(layout, v); err == nil {
			return t, true
		}
	}
	return time.Time{}, false
}

// deletedSince answers a list of tombstones deleted after the deleted_since parameter.
func (c *call) deletedSince(resource string) (response, bool) {
	v := c.query.Get("deleted_since")
	if v == "" {
		return response{}, false
	}
	since, _ := parseSince(v)
	type gone struct {
		ID          string `json:"id"`
		DisplayedAs string `json:"displayed_as"`
		Path        string `json:"$path"`
		DeletedAt   string `json:"deleted_at"`
	}
	var out []gone
	for _, t := range c.b.deleted[resource] {
		if t.at.After(since) {
			out = append(out, gone{ID: t.id, DisplayedAs: t.displayedAs, Path: "/" + resource + "/" + t.id, DeletedAt: ts(t.at)})
		}
	}
	return page(c, out), true
}

// updatedSince reports whether t passes the updated_or_created_since filter, parsed once a call.
func (c *call) updatedSince(t time.Time) bool {
	if !c.sinceRead {
		c.sinceRead = true
		if v := c.query.Get("updated_or_created_since"); v != "" {
			since, _ := parseSince(v)
			c.since = since.Truncate(time.Second)
			c.sinceSet = true
		}
	}
	return !c.sinceSet || !t.Before(c.since)
}

// dateRange reports whether date (YYYY-MM-DD) is within from_date/to_date.
func (c *call) dateRange(date string) bool {
	if f := c.query.Get("from_date"); f != "" && date < f[:min(len(f), 10)] {
		return false
	}
	if t := c.query.Get("to_date"); t != "" && date > t[:min(len(t), 10)] {
		return false
	}
	return true
}

// sortableTime formats times so that they sort as strings.
const sortableTime = "2006-01-02T15:04:05.000000000"

// sortBy orders records by the sort parameter (attribute[:asc|desc]) among allowed keys,
// returning a problem for any other value.
func sortBy[T any](c *call, items []T, keys map[string]func(T) string) *response {
	v := c.query.Get("sort")
	if v == "" {
		return nil
	}
	attr, dir, _ := strings.Cut(v, ":")
	key, ok := keys[attr]
	if !ok || (dir != "" && dir != "asc" && dir != "desc") {
		e := invalid(problem("sort", "is invalid"))
		return &e
	}
	slices.SortStableFunc(items, func(a, b T) int {
		r := strings.Compare(key(a), key(b))
		if dir == "desc" {
			return -r
		}
		return r
	})
	return nil
}

// ---- idempotency ----

type idemEntry struct {
	request []byte // canonical request body without idempotency_id
	status  int
	body    []byte
	at      time.Time
}

// idempotent runs create unless the body's idempotency_id was used for this endpoint in the
// last 7 days, in which case it answers the first result again. The same id with a different
// body is refused.
func (c *call) idempotent(create func() response) response {
	var outer map[string]json.RawMessage
	_ = json.Unmarshal(c.body, &outer)
	// The resource's attributes, each value kept as sent: re-encoding sorts the attributes and
	// compacts the values, so the same request with its attributes in another order or with
	// other spacing compares equal (keys inside a nested object must keep their order). Values
	// stay raw: decoding them cost a third of the sandbox's time under load.
	var inner map[string]json.RawMessage
	_ = json.Unmarshal(outer[c.wrap], &inner)
	var key string
	_ = json.Unmarshal(inner["idempotency_id"], &key)
	if key == "" {
		return create()
	}
	delete(inner, "idempotency_id")
	canon, _ := json.Marshal(inner)
	k := c.plural + " " + key
	if e, ok := c.b.idem[k]; ok && c.now.Sub(e.at) < idempotencyTTL {
		if !bytes.Equal(e.request, canon) {
			return invalid(problem("idempotency_id", "has already been used for a different request."))
		}
		return response{status: e.status, raw: e.body}
	}
	resp := create()
	if resp.status/100 == 2 {
		resp.raw = resp.bytes() // encoded once, for the reply and for a repeat
		c.b.idem[k] = idemEntry{request: canon, status: resp.status, body: resp.raw, at: c.now}
	}
	return resp
}

// ---- small helpers ----

func decimalOr(d *Decimal, def decimal.Decimal) decimal.Decimal {
	if d == nil {
		return def
	}
	return d.Decimal
}

func containsFold(s, sub string) bool {
	// Without allocating, in one pass while both are ASCII: the sandbox runs this over every
	// contact of a business per search.
	if len(sub) == 0 {
		return true
	}
	if sub[0] < utf8.RuneSelf && isASCII(sub) {
		first := lowerASCII(sub[0])
		ascii := true
		for i := 0; i < len(s); i++ {
			b := s[i]
			if b >= utf8.RuneSelf {
				ascii = false
				break
			}
			if lowerASCII(b) == first && i+len(sub) <= len(s) && strings.EqualFold(s[i:i+len(sub)], sub) {
				return true
			}
		}
		if ascii {
			return false
		}
	}
	return strings.Contains(strings.ToLower(s), strings.ToLower(sub))
}

func lowerASCII(b byte) byte {
	if 'A' <= b && b <= 'Z' {
		return b + 'a' - 'A'
	}
	return b
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= utf8.RuneSelf {
			return false
		}
	}
	return true
}

// invalidRequest reports a request the spec forbids to Options.InvalidRequest.
func (s *Sandbox) invalidRequest(r *http.Request, items []errorItem) {
	if s.opts.InvalidRequest == nil {
		return
	}
	var parts []string
	for _, it := range items {
		parts = append(parts, strings.TrimSpace(it.Source+" "+it.Message))
	}
	s.opts.InvalidRequest(r, strings.Join(parts, "; "))
}
