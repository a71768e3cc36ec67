package pipeline

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"time"
	"unicode"

	"github.com/shopspring/decimal"
	"golang.org/x/sync/errgroup"

	"github.com/gessync/gessync/cdc"
	"github.com/gessync/gessync/sink/sage"
	"github.com/gessync/gessync/state"
	"github.com/gessync/gessync/transform"
)

// Matcher is the part of a Sage session that matching reads (GET /contacts, /sales_invoices).
type Matcher interface {
	ListContacts(ctx context.Context, query url.Values) ([]sage.Contact, error)
	ListSalesInvoices(ctx context.Context, query url.Values) ([]sage.SalesInvoice, error)
}

// ambiguousError means two or more Sage records match one GES record: gessync creates nothing
// and asks a person which one it is.
type ambiguousError struct {
	what       string
	candidates []string
}

func (e *ambiguousError) Error() string {
	return fmt.Sprintf("%d Sage records match this %s: %s", len(e.candidates), e.what, strings.Join(e.candidates, "; "))
}

// lookup is where a create looks for its record in Sage first.
type lookup int

const (
	// lookEverywhere searches Sage (match): one to three reads.
	lookEverywhere lookup = iota
	// lookNowhere creates at once: the record cannot be in Sage.
	lookNowhere
	// lookOnInvoice searches only the receipts already allocated to the payment's invoice, as
	// read for its outstanding amount: no extra read.
	lookOnInvoice
)

// lookupFor decides where a create of j.rec looks for the record in Sage first. Every customer
// is searched for: one made in GES today may have been a Sage contact for years. An invoice or
// payment is searched for when it could be in Sage without gessync having put it there: it was
// created in GES before the company connected to this Sage business (its history, which the old
// integration or a bookkeeper may have entered), within a second and Config.ClockSkew of it, or
// its created_at is unknown (rows read back from GES rather than streamed). It is searched for
// too when gessync itself may have created it: an earlier create attempt was never acknowledged
// (state.AttemptCreate), because its reply was lost or the daemon died mid-call. Otherwise, an
// invoice made in GES since the connection is created at once (GES's invoice numbers are its
// own, and Sage refuses a second artefact with one: linkExisting); a payment is looked for only
// among the receipts a bookkeeper may have allocated to its invoice by hand (from the bank
// feed). The attempt is recorded before the create is sent, so a crash at any point leaves the
// next attempt searching.
//
// movedFrom are, when earlier unacknowledged attempts were recorded for other parents than
// parent (the invoice's customer, the payment's invoice, now), those parents: a create Sage
// committed then sits with one of them (matchInvoice, matchPayment).
func (w *lane) lookupFor(ctx context.Context, j job, parent int64) (look lookup, movedFrom []int64, err error) {
	if j.rec.Table == "customers" || !w.newSinceConnection(j) {
		return lookEverywhere, nil, nil
	}
	a, recorded := w.attempts[j.rec] // recorded with its mapping read (lane.mappingPair)
	first := a.first
	if recorded {
		delete(w.attempts, j.rec) // a create follows: a later one in this change searches
	} else {
		if first, err = w.p.cfg.Store.AttemptCreate(ctx, j.rec.Table, j.rec.ID, j.conn.BusinessID, parent); err != nil {
			return lookEverywhere, nil, fmt.Errorf("%s at LSN %s: %w", j.rec, j.lsn, err)
		}
	}
	switch {
	case !first:
		earlier, err := w.p.cfg.Store.Attempt(ctx, j.rec.Table, j.rec.ID, j.conn.BusinessID)
		if err != nil && !errors.Is(err, state.ErrNotFound) {
			return lookEverywhere, nil, fmt.Errorf("%s at LSN %s: %w", j.rec, j.lsn, err)
		}
		for _, p := range earlier.ParentIDs {
			if p != parent {
				movedFrom = append(movedFrom, p)
			}
		}
		return lookEverywhere, movedFrom, nil
	case j.rec.Table == "payments":
		return lookOnInvoice, nil, nil
	}
	return lookNowhere, nil, nil
}

// newSinceConnection reports whether j's row was created in GES after its company connected to
// this Sage business (by more than a second and Config.ClockSkew); false when unknown.
func (w *lane) newSinceConnection(j job) bool {
	created, ok := createdAt(j.row)
	return ok && !j.conn.ConnectedAt.IsZero() && created.After(j.conn.ConnectedAt.Add(w.p.cfg.ClockSkew+time.Second))
}

// createdAt is the row's created_at (timestamptz in every GES table), and false when the row
// has none or it cannot be read.
func createdAt(row cdc.Row) (time.Time, bool) {
	v, ok := row["created_at"]
	if !ok || v.Null || v.Unchanged {
		return time.Time{}, false
	}
	t, err := transform.ParseTimestamptz(v.Text)
	return t, err == nil
}

// match looks for an existing Sage record before a create, so a ledger that already holds the
// record gets it linked (and updated) instead of duplicated. It returns the Sage id and the key
// it matched on, or "" when there is nothing to link; same is true when the Sage record already
// carries what GES would send (an invoice with the same date and totals, a receipt with the same
// amount and date), so it needs no update: updating an invoice with receipts allocated would be
// refused.
//
// movedFrom (lookupFor) are the Sage records of the other parents unacknowledged earlier
// creates were sent for: the contacts of the invoice's customers then, the sales invoices of the
// payment's invoices then; none when the record has not moved since.
func (w *lane) match(ctx context.Context, j job, op transform.Op, movedFrom []string) (id, key string, same bool, err error) {
	m, ok := j.sage.(Matcher)
	if !ok {
		return "", "", false, nil
	}
	switch op.Kind {
	case transform.CreateContact:
		id, key, err := w.matchContact(ctx, j, m, op.Contact, w.newSinceConnection(j))
		return id, key, false, err
	case transform.CreateSalesInvoice:
		return w.matchInvoice(ctx, m, op.SalesInvoice, movedFrom)
	case transform.CreateContactPayment:
		// Linked, then updated: the allocation may differ from what this attempt planned.
		id, key, err := w.matchPayment(ctx, j, op.ContactPayment, movedFrom)
		return id, key, false, err
	}
	return "", "", false, nil
}

// movedFrom resolves lookupFor's earlier parents to their Sage records (match), leaving out
// those with none in this business.
func (w *lane) movedFrom(ctx context.Context, j job, parents []int64) ([]string, error) {
	table := "customers"
	if j.rec.Table == "payments" {
		table = "invoices"
	}
	var ids []string
	for _, parent := range parents {
		m, err := w.mapping(ctx, j, table, parent)
		if err != nil {
			return nil, err
		}
		if m.SageID != "" && !slices.Contains(ids, m.SageID) {
			ids = append(ids, m.SageID)
		}
	}
	return ids, nil
}

// matchContact looks for c among the business's customer contacts by three rules in turn:
// reference, email, then name with postcode; a rule that finds two is ambiguous. Each rule is
// a search of Sage, unless the business's contact index (contactIndex) shows that no contact
// can meet it.
func (w *lane) matchContact(ctx context.Context, j job, m Matcher, c *sage.ContactRequest, together bool) (string, string, error) {
	type rule struct {
		key   string
		index uint32 // the contactIndex key a contact meeting the rule has
		query url.Values
		keep  func(sage.Contact) bool
	}
	xs := w.p.contacts
	var rules []rule
	if c.Reference != "" {
		rules = append(rules, rule{"reference", xs.key(keyReference, foldKey(c.Reference)), url.Values{"search": {c.Reference}}, func(x sage.Contact) bool {
			return strings.EqualFold(x.Reference, c.Reference)
		}})
	}
	if p := c.MainContactPerson; p != nil && p.Email != "" {
		rules = append(rules, rule{"email", xs.key(keyEmail, foldKey(p.Email)), url.Values{"email": {p.Email}}, func(x sage.Contact) bool {
			return strings.EqualFold(contactEmail(x), p.Email)
		}})
	}
	if a := c.MainAddress; a != nil && a.PostalCode != "" && c.Name != "" {
		rules = append(rules, rule{"name and postcode", xs.key(keyNamePost, namePostKey(c.Name, a.PostalCode)), url.Values{"search": {c.Name}}, func(x sage.Contact) bool {
			return normalise(x.Name) == normalise(c.Name) && x.MainAddress != nil && normalise(x.MainAddress.PostalCode) == normalise(a.PostalCode)
		}})
	}
	if l, ok := m.(contactLister); ok && len(rules) > 0 {
		if x := xs.of(j.conn.BusinessID); x != nil {
			if _, err := x.fresh(ctx, l, func(has func(uint32) bool) {
				rules = slices.DeleteFunc(rules, func(r rule) bool { return !has(r.index) })
			}); err != nil {
				return "", "", err
			}
		}
	}
	// A customer made in GES since the connection is rarely in Sage already, so every rule
	// runs: at once, one Sage round trip instead of three. An older one often is, by its first
	// rule, so the rules run one after another and stop at the first that finds it.
	for _, r := range rules {
		r.query.Set("contact_type_id", "CUSTOMER")
	}
	results := make([][]sage.Contact, len(rules))
	if together {
		g, gctx := errgroup.WithContext(ctx)
		for i, r := range rules {
			g.Go(func() (err error) {
				results[i], err = m.ListContacts(gctx, r.query)
				return err
			})
		}
		if err := g.Wait(); err != nil {
			return "", "", err
		}
	}
	for i, r := range rules {
		found := results[i]
		if !together {
			var err error
			if found, err = m.ListContacts(ctx, r.query); err != nil {
				return "", "", err
			}
		}
		var hits []sage.Contact
		for _, x := range found {
			if r.keep(x) {
				hits = append(hits, x)
			}
		}
		switch len(hits) {
		case 0:
			continue
		case 1:
			return hits[0].ID, r.key, nil
		default:
			var names []string
			for _, h := range hits {
				names = append(names, fmt.Sprintf("%q (reference %q, id %s)", h.Name, h.Reference, h.ID))
			}
			return "", "", &ambiguousError{what: "customer (on " + r.key + ")", candidates: names}
		}
	}
	return "", "", nil
}

func contactEmail(c sage.Contact) string {
	if c.Email != "" {
		return c.Email
	}
	if c.MainContactPerson != nil {
		return c.MainContactPerson.Email
	}
	return ""
}

// normalise folds case, punctuation and spaces: "Mrs. M Bennett" ~ "mrs m bennett", "LS6 2AB" ~ "ls62ab".
func normalise(s string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(s) {
		if unicode.IsLetter(r) || unicode.IsDigit(r) {
			b.WriteRune(r)
		}
	}
	return b.String()
}

// matchInvoice looks for inv's invoice number among its contact's sales invoices (GET
// /sales_invoices?contact_id=), and, when none has it and the invoice has moved to another
// customer since an unacknowledged create (movedFrom, the contacts such creates were sent
// for), among those contacts': the create Sage committed before the move. Either is linked;
// one on another contact is then updated, which moves it.
func (w *lane) matchInvoice(ctx context.Context, m Matcher, inv *sage.SalesInvoiceRequest, movedFrom []string) (string, string, bool, error) {
	if inv.ContactID == "" || inv.InvoiceNumber == "" {
		return "", "", false, nil
	}
	numbered := func(contact string) ([]sage.SalesInvoice, error) {
		found, err := m.ListSalesInvoices(ctx, url.Values{"contact_id": {contact}})
		if err != nil {
			return nil, err
		}
		var hits []sage.SalesInvoice
		for _, x := range found {
			if strings.EqualFold(x.InvoiceNumber, inv.InvoiceNumber) && x.DeletedAt == "" {
				hits = append(hits, x)
			}
		}
		return hits, nil
	}
	hits, err := numbered(inv.ContactID)
	if err != nil {
		return "", "", false, err
	}
	key := "invoice number"
	for _, contact := range movedFrom {
		if len(hits) > 0 {
			break
		}
		if contact == inv.ContactID {
			continue
		}
		if hits, err = numbered(contact); err != nil {
			return "", "", false, err
		}
		key = "invoice number, on a customer it was sent for before"
	}
	switch len(hits) {
	case 0:
		return "", "", false, nil
	case 1:
		h := hits[0]
		same := h.Date == inv.Date && equalAmount(h.NetAmount, inv.NetAmount) && equalAmount(h.TaxAmount, inv.TaxAmount) && equalAmount(h.TotalAmount, inv.TotalAmount)
		return h.ID, key, same && h.Contact != nil && h.Contact.ID == inv.ContactID, nil
	}
	var ids []string
	for _, h := range hits {
		ids = append(ids, fmt.Sprintf("%s (total %s, id %s)", h.InvoiceNumber, h.TotalAmount.StringFixed(2), h.ID))
	}
	return "", "", false, &ambiguousError{what: "invoice", candidates: ids}
}

func equalAmount(have sage.Decimal, want *sage.Decimal) bool {
	return want != nil && have.Decimal.Equal(want.Decimal)
}

// matchPayment links a receipt already in Sage for this customer (typed in by hand, or created
// by an earlier attempt whose reply was lost, perhaps before the payment was edited) that no
// other GES payment is linked to: same date and reference, or, without a reference, same date
// and amount. It lists the contact's receipts (GET /contact_payments?contact_id=), since a
// receipt may carry no allocation to the invoice. When none is the payment and it has moved to
// another invoice since an unacknowledged create (movedFrom, the sales invoices such creates
// were sent for), it looks the same way among the receipts allocated to those invoices (GET
// /sales_invoices/{id}): the create Sage committed before the move.
func (w *lane) matchPayment(ctx context.Context, j job, p *sage.ContactPaymentRequest, movedFrom []string) (string, string, error) {
	lister, ok := j.sage.(interface {
		ListContactPayments(ctx context.Context, query url.Values) ([]sage.ContactPayment, error)
	})
	if !ok || p.ContactID == "" || p.TotalAmount == nil {
		return "", "", nil
	}
	found, err := lister.ListContactPayments(ctx, url.Values{"contact_id": {p.ContactID}, "transaction_type_id": {"CUSTOMER_RECEIPT"}})
	if err != nil {
		return "", "", err
	}
	receipts := make([]receipt, 0, len(found))
	for _, cp := range found {
		receipts = append(receipts, receipt{id: cp.ID, date: cp.Date, reference: cp.Reference, amount: cp.TotalAmount.Decimal})
	}
	id, key, err := w.pickReceipt(ctx, j, receipts, p)
	for _, invoice := range movedFrom {
		if id != "" || err != nil {
			break
		}
		inv, gerr := j.sage.GetSalesInvoice(ctx, invoice)
		if sage.IsNotFound(gerr) {
			continue
		}
		if gerr != nil {
			return "", "", gerr
		}
		if id, key, err = w.matchAllocated(ctx, j, &inv, p); id != "" {
			key += ", on an invoice it was sent for before"
		}
	}
	return id, key, err
}

// receipt is what pickReceipt compares of a Sage receipt: a contact payment as listed, or an
// allocation on an invoice (with the amount allocated).
type receipt struct {
	id, date, reference string
	amount              decimal.Decimal
	// allocated is true when amount is what the receipt allocates to one invoice, which is
	// less than its total when it overpaid the invoice or paid others too.
	allocated bool
}

// pickReceipt chooses among receipts the one GES payment p is: not linked to another GES
// payment, same date and reference, or without a reference, same date and amount. Two or more
// are an *ambiguousError; none is "".
func (w *lane) pickReceipt(ctx context.Context, j job, receipts []receipt, p *sage.ContactPaymentRequest) (string, string, error) {
	var cands []receipt
	var ids []string
	for _, r := range receipts {
		if r.date == p.Date {
			cands = append(cands, r)
			ids = append(ids, r.id)
		}
	}
	if len(cands) == 0 {
		return "", "", nil
	}
	taken, err := w.p.cfg.Store.Linked(ctx, "payments", j.conn.BusinessID, ids)
	if err != nil {
		return "", "", err
	}
	var hits []string
	for _, r := range cands {
		if taken[r.id] {
			continue
		}
		if p.Reference == "" && r.allocated && !r.amount.Equal(p.TotalAmount.Decimal) {
			// Matched on amount, it is the receipt's total that counts (GET /contact_payments/{id}).
			cp, err := j.sage.GetContactPayment(ctx, r.id)
			if err != nil && !sage.IsNotFound(err) {
				return "", "", err
			}
			if err == nil {
				r.amount = cp.TotalAmount.Decimal
			}
		}
		if (p.Reference != "" && r.reference == p.Reference) || (p.Reference == "" && r.amount.Equal(p.TotalAmount.Decimal)) {
			hits = append(hits, r.id)
		}
	}
	switch len(hits) {
	case 0:
		return "", "", nil
	case 1:
		if p.Reference != "" {
			return hits[0], "date and reference", nil
		}
		return hits[0], "date and amount", nil
	}
	return "", "", &ambiguousError{what: "payment", candidates: hits}
}

// matchAllocated links a receipt already allocated to the payment's invoice (recorded in Sage
// by hand, say from the bank feed) that no other GES payment is linked to: same date and
// reference, or without a reference, same date and amount (the receipt's total, read when it
// allocates another amount to inv). inv is the invoice as read for its outstanding amount
// (lane.outstanding) or, for a payment that moved, the invoice it was sent for before.
func (w *lane) matchAllocated(ctx context.Context, j job, inv *sage.SalesInvoice, p *sage.ContactPaymentRequest) (string, string, error) {
	if inv == nil || p.TotalAmount == nil {
		return "", "", nil
	}
	var receipts []receipt
	for _, a := range inv.PaymentsAllocations {
		if a.ContactPayment == nil {
			continue
		}
		receipts = append(receipts, receipt{id: a.ContactPayment.ID, date: a.Date, reference: a.Reference, amount: a.Amount.Decimal, allocated: true})
	}
	return w.pickReceipt(ctx, j, receipts, p)
}

// linkExisting handles "Artefact number must be unique": when the invoice already in Sage with
// that number has the same contact and total, it is this invoice, so it is linked; otherwise
// the clash is reported.
func (w *lane) linkExisting(ctx context.Context, j job, inv *sage.SalesInvoiceRequest) (string, error) {
	m, ok := j.sage.(Matcher)
	if !ok || inv.Date == "" {
		return "", nil
	}
	found, err := m.ListSalesInvoices(ctx, url.Values{"from_date": {inv.Date}, "to_date": {inv.Date}})
	if err != nil {
		return "", err
	}
	for _, x := range found {
		if !strings.EqualFold(x.InvoiceNumber, inv.InvoiceNumber) {
			continue
		}
		sameContact := x.Contact != nil && x.Contact.ID == inv.ContactID
		sameTotal := inv.TotalAmount != nil && x.TotalAmount.Decimal.Equal(inv.TotalAmount.Decimal)
		if sameContact && sameTotal {
			return x.ID, nil
		}
		contact := ""
		if x.Contact != nil {
			contact = x.Contact.DisplayedAs
		}
		return "", &ambiguousError{what: "invoice number", candidates: []string{fmt.Sprintf("Sage already has %s for %s, total £%s", x.InvoiceNumber, contact, x.TotalAmount.StringFixed(2))}}
	}
	return "", nil
}

func (w *lane) logMatch(ctx context.Context, j job, key, sageID string) error {
	_, err := w.note(ctx, j, state.LevelInfo, "match."+strings.ReplaceAll(key, " ", "_"),
		fmt.Sprintf("Linked to the %s already in Sage (id %s), matched on %s, instead of creating another.", singular(j.rec.Table), sageID, key), "", "")
	return err
}
