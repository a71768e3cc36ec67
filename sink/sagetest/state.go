package sagetest

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"iter"
	"slices"
	"strings"
	"time"

	"github.com/shopspring/decimal"
)

// Tiers of Sage Accounting a sandbox business can run on.
const (
	TierStart    = "start"
	TierStandard = "standard"
	TierPlus     = "plus"
)

var tierNames = map[string]string{
	TierStart:    "Accounting Start",
	TierStandard: "Accounting Standard",
	TierPlus:     "Accounting Plus",
}

// newID returns a Sage-style id: 32 lowercase hex characters.
func newID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b[:])
}

// newUUID returns a random UUID, the shape of requested_by_id.
func newUUID() string {
	s := newID()
	return s[:8] + "-" + s[8:12] + "-4" + s[13:16] + "-8" + s[17:20] + "-" + s[20:]
}

// coll is an insertion-ordered set of records keyed by id. The records are kept in a slice in
// their order, so the scans the sandbox makes for searches and checks touch no map.
type coll[T any] struct {
	ids   []string
	items []T
	index map[string]int // id → position in ids and items
}

func (c *coll[T]) add(id string, v T) {
	if c.index == nil {
		c.index = map[string]int{}
	}
	if i, ok := c.index[id]; ok {
		c.items[i] = v
		return
	}
	c.index[id] = len(c.ids)
	c.ids = append(c.ids, id)
	c.items = append(c.items, v)
}

func (c *coll[T]) get(id string) (T, bool) {
	i, ok := c.index[id]
	if !ok {
		var zero T
		return zero, false
	}
	return c.items[i], true
}

func (c *coll[T]) remove(id string) {
	i, ok := c.index[id]
	if !ok {
		return
	}
	delete(c.index, id)
	c.ids = slices.Delete(c.ids, i, i+1)
	c.items = slices.Delete(c.items, i, i+1)
	for j := i; j < len(c.ids); j++ {
		c.index[c.ids[j]] = j
	}
}

func (c *coll[T]) all() iter.Seq2[int, T] {
	return func(yield func(int, T) bool) {
		for i, v := range c.items {
			if !yield(i, v) {
				return
			}
		}
	}
}

// tombstone records a deleted record for deleted_since queries.
type tombstone struct {
	id, displayedAs string
	at              time.Time
}

// business is one Sage business and everything in it.
type business struct {
	id, name, tier string
	userID         string // requested_by_id of the tokens issued for it
	created        time.Time
	// tokenGen is bumped when the connection's tokens are revoked; older tokens stop working.
	tokenGen int

	ledgers     coll[*ledgerAccount]
	bankAccts   coll[*bankAccount]
	contacts    coll[*contact]
	invoices    coll[*invoice]
	payments    coll[*payment]
	allocations coll[*allocation]
	deleted     map[string][]tombstone // resource → tombstones

	nextInvoice int
	// vatFiledTo is the end (YYYY-MM-DD) of the last VAT return submitted (FileVATReturn):
	// issued invoices dated on or before it are VAT reconciled. "" when none was.
	vatFiledTo string
	idem       map[string]idemEntry
	window     []time.Time // accepted API calls in the last 60 s, oldest first
}

type ledgerAccount struct {
	id, name, typeID   string
	nominal            int
	cisLabour, cisMats bool
	created            time.Time
}

var ledgerTypeNames = map[string]string{
	"SALES": "Sales", "OTHER_INCOME": "Other Income", "BANK": "Bank", "CURRENT_ASSETS": "Current Assets",
	"CURRENT_LIABILITY": "Current Liabilities", "DIRECT_EXPENSES": "Direct Expenses",
}

func (l *ledgerAccount) displayedAs() string { return fmt.Sprintf("%s (%d)", l.name, l.nominal) }

func (l *ledgerAccount) link() Link {
	return Link{ID: l.id, DisplayedAs: l.displayedAs(), Path: "/ledger_accounts/" + l.id}
}

// visibleInSales reports whether invoice lines may post to the account.
func (l *ledgerAccount) visibleInSales() bool {
	return l.typeID == "SALES" || l.typeID == "OTHER_INCOME"
}

type bankAccount struct {
	id, typeID, name string
	details          BankAccountDetails
	ledger           *ledgerAccount
	method           string
	created, updated time.Time
}

var bankAccountTypes = map[string]string{
	"CHECKING": "Current", "SAVINGS": "Savings", "CREDIT_CARD": "Credit Card",
	"CASH_IN_HAND": "Cash in Hand", "LOAN": "Loan", "OTHER": "Other",
}

func (a *bankAccount) displayedAs() string { return fmt.Sprintf("%s (%d)", a.name, a.ledger.nominal) }

func (a *bankAccount) link() Link {
	return Link{ID: a.id, DisplayedAs: a.displayedAs(), Path: "/bank_accounts/" + a.id}
}

type taxRate struct {
	id, name string
	pct      decimal.Decimal
}

// taxRates are the UK rates every business has.
var taxRates = []taxRate{
	{"GB_STANDARD", "Standard 20.00%", decimal.NewFromInt(20)},
	{"GB_LOWER", "Lower 5.00%", decimal.NewFromInt(5)},
	{"GB_ZERO", "Zero 0.00%", decimal.Zero},
	{"GB_EXEMPT", "Exempt 0.00%", decimal.Zero},
	{"GB_NO_TAX", "No VAT", decimal.Zero},
}

func findTaxRate(id string) (taxRate, bool) {
	for _, r := range taxRates {
		if r.id == id {
			return r, true
		}
	}
	return taxRate{}, false
}

func (r taxRate) link() Link { return Link{ID: r.id, DisplayedAs: r.name, Path: "/tax_rates/" + r.id} }

// paymentMethods are the payment methods every business has, in Sage's order.
var paymentMethods = []struct{ id, name string }{
	{"ALTERNATIVE_PAYMENT", "Alternative Payment"},
	{"BANK_TRANSFER", "Bank Transfer"},
	{"CASH", "Cash"},
	{"CHECK", "Cheque"},
	{"CREDIT_DEBIT", "Credit/Debit Card"},
}

func paymentMethodLink(id string) (Link, bool) {
	for _, m := range paymentMethods {
		if m.id == id {
			return Link{ID: m.id, DisplayedAs: m.name, Path: "/payment_methods/" + m.id}, true
		}
	}
	return Link{}, false
}

var gbp = Link{ID: "GBP", DisplayedAs: "Pound Sterling (GBP)", Path: "/currencies/GBP"}

type addressIn struct {
	AddressLine1   *string `json:"address_line_1"`
	AddressLine2   *string `json:"address_line_2"`
	City           *string `json:"city"`
	Region         *string `json:"region"`
	PostalCode     *string `json:"postal_code"`
	CountryID      *string `json:"country_id"`
	CountryGroupID *string `json:"country_group_id"`
	AddressTypeID  *string `json:"address_type_id"`
	Name           *string `json:"name"`
	IsMainAddress  *bool   `json:"is_main_address"`
}

type address struct {
	id                                     string
	line1, line2, city, region, postalCode string
	countryID, typeID                      string
	main                                   bool
}

// merge applies the fields present in in.
func (a *address) merge(in *addressIn) {
	set(&a.line1, in.AddressLine1)
	set(&a.line2, in.AddressLine2)
	set(&a.city, in.City)
	set(&a.region, in.Region)
	set(&a.postalCode, in.PostalCode)
	set(&a.countryID, in.CountryID)
	set(&a.typeID, in.AddressTypeID)
	set(&a.main, in.IsMainAddress)
}

// render gives the response shape; a contact's addresses are records of their own (with an
// id and displayed_as), an invoice's are not.
func (a *address) render() *Address {
	if a == nil {
		return nil
	}
	out := &Address{
		ID: a.id, AddressLine1: a.line1, AddressLine2: a.line2, City: a.city,
		Region: a.region, PostalCode: a.postalCode, IsMainAddress: a.main,
	}
	if a.id != "" {
		out.DisplayedAs = strings.Join(nonEmpty(a.line1, a.city, a.postalCode), "\n")
	}
	if a.countryID != "" {
		out.Country = &Link{ID: a.countryID, DisplayedAs: a.countryID, Path: "/countries/" + a.countryID}
	}
	if a.typeID != "" {
		out.AddressType = &Link{ID: a.typeID, DisplayedAs: a.typeID, Path: "/address_types/" + a.typeID}
	}
	return out
}

func nonEmpty(ss ...string) []string {
	return slices.DeleteFunc(ss, func(s string) bool { return s == "" })
}

// set copies *from into *to when from is present.
func set[T any](to *T, from *T) {
	if from != nil {
		*to = *from
	}
}

type personIn struct {
	ContactPersonTypeIDs *[]string `json:"contact_person_type_ids"`
	Name                 *string   `json:"name"`
	JobTitle             *string   `json:"job_title"`
	Telephone            *string   `json:"telephone"`
	Mobile               *string   `json:"mobile"`
	Email                *string   `json:"email"`
	Fax                  *string   `json:"fax"`
	IsMainContact        *bool     `json:"is_main_contact"`
}

type person struct {
	id                            string
	typeIDs                       []string
	name, telephone, mobile, mail string
}

type contact struct {
	id                      string
	name, reference         string
	typeIDs                 []string
	taxNumber, notes        string
	creditDays              *int
	salesLedger, salesTaxID string
	main, delivery          *address
	person                  *person
	created, updated        time.Time
}

func (c *contact) displayedAs() string {
	if c.reference == "" {
		return c.name
	}
	return fmt.Sprintf("%s (%s)", c.name, c.reference)
}

func (c *contact) link() Link {
	return Link{ID: c.id, DisplayedAs: c.displayedAs(), Path: "/contacts/" + c.id}
}

func (c *contact) isCustomer() bool { return slices.Contains(c.typeIDs, "CUSTOMER") }

type line struct {
	id, description, ledgerID, taxRateID           string
	quantity, unitPrice, discount, net, tax, total decimal.Decimal
}

// application is money applied to an invoice: directly by a payment's allocated artefact
// (allocation == nil) or by a contact allocation drawing on a payment's payment on account.
type application struct {
	id         string
	invoice    *invoice
	payment    *payment
	allocation *allocation
	amount     decimal.Decimal
}

type invoice struct {
	id, number, reference, contactID string
	date, dueDate, notes             string
	draft, void, deleted             bool
	voidReason                       string
	reverseCharge                    bool
	lines                            []line
	net, tax, total                  decimal.Decimal
	// CIS (UK): as given, or derived.
	whtRate, whtAmount, cisApplicable, afterCIS decimal.Decimal
	main                                        *address
	apps                                        []*application
	created, updated, deletedAt                 time.Time
}

func (iv *invoice) paid() decimal.Decimal {
	sum := decimal.Zero
	for _, a := range iv.apps {
		sum = sum.Add(a.amount)
	}
	return sum
}

func (iv *invoice) outstanding() decimal.Decimal {
	switch {
	case iv.void:
		return decimal.Zero
	case iv.draft:
		return iv.total
	default:
		return iv.total.Sub(iv.paid())
	}
}

func (iv *invoice) status() string {
	switch {
	case iv.void:
		return "VOID"
	case iv.draft:
		return "DRAFT"
	case iv.outstanding().Sign() <= 0:
		return "PAID"
	case iv.paid().Sign() > 0:
		return "PART_PAID"
	default:
		return "UNPAID"
	}
}

var statusNames = map[string]string{
	"DRAFT": "Draft", "UNPAID": "Unpaid", "PART_PAID": "Part Paid", "PAID": "Paid", "VOID": "Void",
}

func (iv *invoice) link() Link {
	return Link{ID: iv.id, DisplayedAs: iv.number, Path: "/sales_invoices/" + iv.id}
}

type payment struct {
	id, contactID, bankID, methodID string
	txType, date, reference         string
	total                           decimal.Decimal
	apps                            []*application // direct allocations to invoices
	poaID                           string         // id of the payment on account, when total exceeds apps
	poaUsed                         []*application // applications drawn from the payment on account
	created, updated                time.Time
}

func sumApps(apps []*application) decimal.Decimal {
	sum := decimal.Zero
	for _, a := range apps {
		sum = sum.Add(a.amount)
	}
	return sum
}

// onAccount is the unallocated excess of the payment.
func (p *payment) onAccount() decimal.Decimal { return p.total.Sub(sumApps(p.apps)) }

// onAccountOutstanding is what is left of the payment on account to allocate.
func (p *payment) onAccountOutstanding() decimal.Decimal {
	return p.onAccount().Sub(sumApps(p.poaUsed))
}

func (p *payment) displayedAs() string {
	if p.reference != "" {
		return p.reference
	}
	return "Customer Receipt"
}

func (p *payment) link() Link {
	return Link{ID: p.id, DisplayedAs: p.displayedAs(), Path: "/contact_payments/" + p.id}
}

type allocation struct {
	id, contactID, date, txType string
	apps                        []*application
	// poa are the payment on account entries: payment and the (positive) amount drawn.
	poa              []poaDraw
	created, updated time.Time
}

type poaDraw struct {
	id     string
	pay    *payment
	amount decimal.Decimal
}

var txTypeNames = map[string]string{
	"CUSTOMER_RECEIPT": "Customer Receipt", "CUSTOMER_ALLOCATION": "Customer Allocation",
	"PAYMENT_ON_ACCOUNT": "Payment on Account",
}

func txTypeLink(id string) Link {
	return Link{ID: id, DisplayedAs: txTypeNames[id], Path: "/transaction_types/" + id}
}

// newBusiness creates a business with the standard UK chart of accounts and, unless
// noBank, one current account "Current Account" on nominal 1200.
func newBusiness(name, tier string, now time.Time, noBank bool) *business {
	b := &business{
		id: newID(), name: name, tier: tier, userID: newUUID(), created: now,
		deleted: map[string][]tombstone{}, idem: map[string]idemEntry{}, nextInvoice: 1,
	}
	for _, l := range []ledgerAccount{
		{name: "Debtors Control", typeID: "CURRENT_ASSETS", nominal: 1100},
		{name: "VAT on Sales", typeID: "CURRENT_LIABILITY", nominal: 2200},
		{name: "Sales Type A", typeID: "SALES", nominal: 4000},
		{name: "Sales Type B", typeID: "SALES", nominal: 4001},
		{name: "Sales Type C", typeID: "SALES", nominal: 4002},
		{name: "Sales - CIS Labour", typeID: "SALES", nominal: 4010, cisLabour: true},
		{name: "Sales - CIS Materials", typeID: "SALES", nominal: 4011, cisMats: true},
		{name: "Other Income", typeID: "OTHER_INCOME", nominal: 4900},
		{name: "Cost of Sales - Goods", typeID: "DIRECT_EXPENSES", nominal: 5000},
	} {
		l.id, l.created = newID(), now
		b.ledgers.add(l.id, &l)
	}
	if !noBank {
		b.addBankAccount("CHECKING", BankAccountDetails{AccountName: "Current Account"}, 1200, "", now)
	}
	return b
}

// addBankAccount creates a bank account and its ledger account (nominal 0 = next free from 1200).
func (b *business) addBankAccount(typeID string, details BankAccountDetails, nominal int, method string, now time.Time) *bankAccount {
	if nominal == 0 {
		nominal = 1200
		for b.ledgerByNominal(nominal) != nil {
			nominal += 10
		}
	}
	if details.AccountName == "" {
		details.AccountName = bankAccountTypes[typeID]
	}
	if method == "" {
		method = "BANK_TRANSFER"
		if typeID == "CASH_IN_HAND" {
			method = "CASH"
		}
	}
	l := &ledgerAccount{id: newID(), name: details.AccountName, typeID: "BANK", nominal: nominal, created: now}
	b.ledgers.add(l.id, l)
	a := &bankAccount{
		id: newID(), typeID: typeID, name: details.AccountName, details: details, ledger: l,
		method: method, created: now, updated: now,
	}
	b.bankAccts.add(a.id, a)
	return a
}

func (b *business) ledgerByNominal(n int) *ledgerAccount {
	for _, l := range b.ledgers.all() {
		if l.nominal == n {
			return l
		}
	}
	return nil
}

// info summarises b for tests.
func (b *business) info() BusinessInfo {
	bi := BusinessInfo{ID: b.id, Name: b.name, Tier: b.tier}
	for _, a := range b.bankAccts.all() {
		if a.typeID == "CHECKING" {
			bi.BankAccountID = a.id
			break
		}
	}
	for _, l := range b.ledgers.all() {
		switch {
		case l.nominal == 4000:
			bi.SalesLedgerAccountID = l.id
		case l.cisLabour:
			bi.CISLabourLedgerAccountID = l.id
		case l.cisMats:
			bi.CISMaterialsLedgerAccountID = l.id
		}
	}
	return bi
}

func (b *business) link() Link {
	return Link{ID: b.id, DisplayedAs: b.name, Path: "/businesses/" + b.id}
}

func (b *business) tombstone(resource, id, displayedAs string, at time.Time) {
	b.deleted[resource] = append(b.deleted[resource], tombstone{id: id, displayedAs: displayedAs, at: at})
}

// ---- rendering into response shapes ----

func ts(t time.Time) string { return t.UTC().Format(time.RFC3339) }

func money(d decimal.Decimal) Decimal { return dec(d.Round(2)) }

func (b *business) renderContact(c *contact) Contact {
	out := Contact{
		ID: c.id, DisplayedAs: c.displayedAs(), Path: "/contacts/" + c.id,
		CreatedAt: ts(c.created), UpdatedAt: ts(c.updated),
		Name: c.name, Reference: c.reference, TaxNumber: c.taxNumber, Notes: c.notes,
		CreditDays: c.creditDays, Currency: gbp, IsActive: true,
		MainAddress: c.main.render(), DeliveryAddress: c.delivery.render(),
		Deletable: !b.contactInUse(c.id),
	}
	out.ContactTypes = []Link{}
	for _, t := range c.typeIDs {
		out.ContactTypes = append(out.ContactTypes, Link{ID: t, DisplayedAs: contactTypes[t], Path: "/contact_types/" + t})
	}
	if l, ok := b.ledgers.get(c.salesLedger); ok {
		lk := l.link()
		out.DefaultSalesLedgerAccount = &lk
	}
	if r, ok := findTaxRate(c.salesTaxID); ok {
		lk := r.link()
		out.DefaultSalesTaxRate = &lk
	}
	if p := c.person; p != nil {
		out.Email = p.mail
		cp := &ContactPerson{
			ID: p.id, DisplayedAs: p.name, Name: p.name, Telephone: p.telephone, Mobile: p.mobile,
			Email: p.mail, IsMainContact: true, ContactPersonTypes: []Link{},
		}
		for _, t := range p.typeIDs {
			cp.ContactPersonTypes = append(cp.ContactPersonTypes, Link{ID: t, DisplayedAs: t, Path: "/contact_person_types/" + t})
		}
		out.MainContactPerson = cp
	}
	bal := decimal.Zero
	for _, iv := range b.invoices.all() {
		if iv.contactID == c.id && !iv.draft {
			bal = bal.Add(iv.outstanding())
		}
	}
	for _, p := range b.payments.all() {
		if p.contactID == c.id {
			bal = bal.Sub(p.onAccountOutstanding())
		}
	}
	out.Balance = money(bal)
	return out
}

var contactTypes = map[string]string{"CUSTOMER": "Customer", "VENDOR": "Supplier"}

func (b *business) contactInUse(id string) bool {
	for _, iv := range b.invoices.all() {
		if iv.contactID == id {
			return true
		}
	}
	for _, p := range b.payments.all() {
		if p.contactID == id {
			return true
		}
	}
	return false
}

func (b *business) contactLink(id string) Link {
	if c, ok := b.contacts.get(id); ok {
		return c.link()
	}
	return Link{ID: id, DisplayedAs: "", Path: "/contacts/" + id}
}

func (b *business) renderInvoice(iv *invoice, withAllocations bool) SalesInvoice {
	st := iv.status()
	out := SalesInvoice{
		ID: iv.id, DisplayedAs: iv.number, Path: "/sales_invoices/" + iv.id,
		CreatedAt: ts(iv.created), UpdatedAt: ts(iv.updated),
		Editable:      !iv.void && len(iv.apps) == 0,
		InvoiceNumber: iv.number, Reference: iv.reference, Contact: b.contactLink(iv.contactID),
		Date: iv.date, DueDate: iv.dueDate,
		Status:   Link{ID: st, DisplayedAs: statusNames[st], Path: "/artefact_statuses/" + st},
		Currency: gbp, Notes: iv.notes, MainAddress: iv.main.render(),
		VATReverseCharge: iv.reverseCharge,
		NetAmount:        money(iv.net), TaxAmount: money(iv.tax), TotalAmount: money(iv.total),
		TotalPaid: money(iv.paid()), OutstandingAmount: money(iv.outstanding()),
		VoidReason:         iv.voidReason,
		WithholdingTaxRate: dec(iv.whtRate), WithholdingTaxAmount: money(iv.whtAmount),
		CISApplicableAmount: money(iv.cisApplicable), TotalAfterCISDeduction: money(iv.afterCIS),
		InvoiceLines: []InvoiceLine{},
	}
	if c, ok := b.contacts.get(iv.contactID); ok {
		out.ContactName, out.ContactReference = c.name, c.reference
	}
	if iv.deleted {
		out.DeletedAt = ts(iv.deletedAt)
	}
	for _, ln := range iv.lines {
		l := InvoiceLine{
			ID: ln.id, DisplayedAs: ln.description, Description: ln.description,
			Quantity: dec(ln.quantity), UnitPrice: dec(ln.unitPrice), DiscountAmount: money(ln.discount),
			NetAmount: money(ln.net), TaxAmount: money(ln.tax), TotalAmount: money(ln.total),
		}
		if la, ok := b.ledgers.get(ln.ledgerID); ok {
			l.LedgerAccount = la.link()
			out.HasCISLabour = out.HasCISLabour || la.cisLabour
			out.HasCISMaterials = out.HasCISMaterials || la.cisMats
		}
		if r, ok := findTaxRate(ln.taxRateID); ok {
			lk := r.link()
			l.TaxRate = &lk
		}
		out.InvoiceLines = append(out.InvoiceLines, l)
	}
	out.IsCIS = out.HasCISLabour || out.HasCISMaterials || iv.whtAmount.Sign() != 0
	if withAllocations {
		for _, a := range iv.apps {
			pa := PaymentAllocation{
				ID: a.id, Amount: money(a.amount), Discount: money(decimal.Zero),
				Date: a.payment.date, Reference: a.payment.reference, Type: "CUSTOMER_RECEIPT",
			}
			pl := a.payment.link()
			pa.ContactPayment = &pl
			if a.allocation != nil {
				pa.Type, pa.Date = "CUSTOMER_ALLOCATION", a.allocation.date
				al := Link{ID: a.allocation.id, DisplayedAs: txTypeNames["CUSTOMER_ALLOCATION"], Path: "/contact_allocations/" + a.allocation.id}
				pa.ContactAllocation = &al
			}
			out.PaymentsAllocations = append(out.PaymentsAllocations, pa)
		}
	}
	return out
}

func (b *business) renderPayment(p *payment) ContactPayment {
	out := ContactPayment{
		ID: p.id, DisplayedAs: p.displayedAs(), Path: "/contact_payments/" + p.id,
		CreatedAt: ts(p.created), UpdatedAt: ts(p.updated),
		TransactionType: txTypeLink(p.txType), Contact: b.contactLink(p.contactID),
		Date: p.date, NetAmount: money(p.total), TaxAmount: money(decimal.Zero), TotalAmount: money(p.total),
		Currency: gbp, Reference: p.reference, AllocatedArtefacts: []AllocatedArtefact{}, Editable: true,
	}
	if a, ok := b.bankAccts.get(p.bankID); ok {
		out.BankAccount = a.link()
	}
	out.PaymentMethod, _ = paymentMethodLink(p.methodID)
	for _, a := range p.apps {
		out.AllocatedArtefacts = append(out.AllocatedArtefacts, AllocatedArtefact{
			ID: a.id, Artefact: a.invoice.link(), Amount: money(a.amount), Discount: money(decimal.Zero),
		})
	}
	if p.poaID != "" && p.onAccount().Sign() > 0 {
		st := "UNPAID"
		if len(p.poaUsed) > 0 {
			st = "PART_PAID"
		}
		if p.onAccountOutstanding().Sign() <= 0 {
			st = "PAID"
		}
		out.PaymentOnAccount = &PaymentOnAccount{
			ID: p.poaID, DisplayedAs: "Payment on Account", Path: "/payments_on_account/" + p.poaID,
			Contact: out.Contact, Date: p.date, Reference: p.reference,
			TotalAmount: money(p.onAccount()), OutstandingAmount: money(p.onAccountOutstanding()),
			Status: Link{ID: st, DisplayedAs: statusNames[st], Path: "/artefact_statuses/" + st},
		}
	}
	return out
}

func (b *business) renderAllocation(al *allocation) ContactAllocation {
	out := ContactAllocation{
		ID: al.id, DisplayedAs: txTypeNames[al.txType], Path: "/contact_allocations/" + al.id,
		CreatedAt: ts(al.created), UpdatedAt: ts(al.updated),
		TransactionType: txTypeLink(al.txType), Date: al.date, Contact: b.contactLink(al.contactID),
		AllocatedArtefacts: []AllocatedArtefact{},
	}
	for _, a := range al.apps {
		out.AllocatedArtefacts = append(out.AllocatedArtefacts, AllocatedArtefact{
			ID: a.id, Artefact: a.invoice.link(), Amount: money(a.amount), Discount: money(decimal.Zero),
		})
	}
	for _, d := range al.poa {
		out.AllocatedArtefacts = append(out.AllocatedArtefacts, AllocatedArtefact{
			ID: d.id, Artefact: Link{ID: d.pay.poaID, DisplayedAs: "Payment on Account", Path: "/payments_on_account/" + d.pay.poaID},
			Amount: money(d.amount.Neg()), Discount: money(decimal.Zero),
		})
	}
	return out
}

func (b *business) renderBankAccount(a *bankAccount) BankAccount {
	bal := decimal.Zero
	for _, p := range b.payments.all() {
		if p.bankID == a.id {
			bal = bal.Add(p.total)
		}
	}
	method, _ := paymentMethodLink(a.method)
	return BankAccount{
		ID: a.id, DisplayedAs: a.displayedAs(), Path: "/bank_accounts/" + a.id,
		CreatedAt: ts(a.created), UpdatedAt: ts(a.updated),
		BankAccountDetails: a.details, LedgerAccount: a.ledger.link(),
		BankAccountType: Link{ID: a.typeID, DisplayedAs: bankAccountTypes[a.typeID], Path: "/bank_account_types/" + a.typeID},
		Balance:         money(bal), NominalCode: a.ledger.nominal, Editable: true, Deletable: bal.IsZero(),
		DefaultPaymentMethod: method, IsActive: true, Currency: gbp,
	}
}

func (b *business) dump() BusinessDump {
	d := BusinessDump{
		ID: b.id, Name: b.name, Tier: b.tier,
		Contacts: []Contact{}, SalesInvoices: []SalesInvoice{}, ContactPayments: []ContactPayment{},
		ContactAllocations: []ContactAllocation{}, BankAccounts: []BankAccount{},
	}
	for _, c := range b.contacts.all() {
		d.Contacts = append(d.Contacts, b.renderContact(c))
	}
	for _, iv := range b.invoices.all() {
		d.SalesInvoices = append(d.SalesInvoices, b.renderInvoice(iv, true))
	}
	for _, p := range b.payments.all() {
		d.ContactPayments = append(d.ContactPayments, b.renderPayment(p))
	}
	for _, al := range b.allocations.all() {
		d.ContactAllocations = append(d.ContactAllocations, b.renderAllocation(al))
	}
	for _, a := range b.bankAccts.all() {
		d.BankAccounts = append(d.BankAccounts, b.renderBankAccount(a))
	}
	return d
}

// onVATReturn reports whether iv is on a submitted VAT return: issued, and dated within the
// periods filed (FileVATReturn). Sage refuses to edit or void such an invoice.
func (b *business) onVATReturn(iv *invoice) bool {
	return b.vatFiledTo != "" && !iv.draft && iv.date != "" && iv.date <= b.vatFiledTo
}
