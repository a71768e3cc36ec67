package sagetest

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/shopspring/decimal"
)

// lineIn is one element of sales_invoice.invoice_lines in a request.
type lineIn struct {
	ID                   *string  `json:"id"`
	Description          *string  `json:"description"`
	LedgerAccountID      *string  `json:"ledger_account_id"`
	Quantity             *Decimal `json:"quantity"`
	UnitPrice            *Decimal `json:"unit_price"`
	DiscountAmount       *Decimal `json:"discount_amount"`
	DiscountPercentage   *Decimal `json:"discount_percentage"`
	NetAmount            *Decimal `json:"net_amount"`
	TaxRateID            *string  `json:"tax_rate_id"`
	TaxAmount            *Decimal `json:"tax_amount"`
	TotalAmount          *Decimal `json:"total_amount"`
	UnitPriceIncludesTax *bool    `json:"unit_price_includes_tax"`
	ProductID            *string  `json:"product_id"`
	ServiceID            *string  `json:"service_id"`
}

// invoiceIn is sales_invoice in the body of POST /sales_invoices and PUT /sales_invoices/{key}.
type invoiceIn struct {
	ContactID              *string    `json:"contact_id"`
	Date                   *string    `json:"date"`
	DueDate                *string    `json:"due_date"`
	InvoiceNumber          *string    `json:"invoice_number"`
	Reference              *string    `json:"reference"`
	Notes                  *string    `json:"notes"`
	StatusID               *string    `json:"status_id"`
	CurrencyID             *string    `json:"currency_id"`
	VATReverseCharge       *bool      `json:"vat_reverse_charge"`
	MainAddress            *addressIn `json:"main_address"`
	NetAmount              *Decimal   `json:"net_amount"`
	TaxAmount              *Decimal   `json:"tax_amount"`
	TotalAmount            *Decimal   `json:"total_amount"`
	ShippingNetAmount      *Decimal   `json:"shipping_net_amount"`
	WithholdingTaxRate     *Decimal   `json:"withholding_tax_rate"`
	WithholdingTaxAmount   *Decimal   `json:"withholding_tax_amount"`
	CISApplicableAmount    *Decimal   `json:"cis_applicable_amount"`
	TotalAfterCISDeduction *Decimal   `json:"total_after_cis_deduction"`
	InvoiceLines           *[]lineIn  `json:"invoice_lines"`
}

const (
	msgUnallocateFirst = "You must unallocate credit notes or receipts before editing this invoice"
	msgNumberTaken     = "Artefact number must be unique"
	// msgVATReconciled is Sage's refusal to edit or void an invoice on a submitted VAT return
	// (NOTES.md: php_sample#17).
	msgVATReconciled = "You cannot edit VAT reconciled transactions."
)

// applyInvoice validates in and applies it to iv (a copy the caller commits only when there are
// no problems). creating is true for POST.
func (c *call) applyInvoice(in *invoiceIn, iv *invoice, creating bool) problems {
	var p problems
	b := c.b
	if creating || in.ContactID != nil {
		ct, ok := b.contacts.get(deref(in.ContactID))
		switch {
		case !ok:
			p.add("contact_id", "The contact could not be found.")
		case !ct.isCustomer():
			p.add("contact_id", "The contact is not a customer.")
		default:
			iv.contactID = ct.id
		}
	}
	if in.Date != nil {
		iv.date = *in.Date
	}
	if _, err := time.Parse(time.DateOnly, iv.date); err != nil {
		p.add("date", "is not a valid date")
	}
	if in.CurrencyID != nil && *in.CurrencyID != "GBP" {
		p.add("currency_id", "Multi-currency is not enabled for this business.")
	}
	if in.ShippingNetAmount != nil && !in.ShippingNetAmount.IsZero() {
		p.add("shipping_net_amount", "Shipping is not supported by the sandbox.")
	}
	set(&iv.reference, in.Reference)
	set(&iv.notes, in.Notes)
	set(&iv.reverseCharge, in.VATReverseCharge)
	if in.MainAddress != nil {
		if iv.main == nil {
			iv.main = &address{}
		}
		a := *iv.main
		a.merge(in.MainAddress)
		iv.main = &a
	}
	if creating && deref(in.StatusID) == "DRAFT" {
		iv.draft = true
	}

	switch {
	case creating && in.InvoiceLines == nil:
		p.add("invoice_lines", msgRequired)
	case in.InvoiceLines != nil && len(*in.InvoiceLines) == 0:
		p.add("invoice_lines", "An invoice needs at least one line.")
	case in.InvoiceLines != nil:
		iv.lines = c.buildLines(*in.InvoiceLines, iv.lines, &p)
	}
	iv.net, iv.tax, iv.total = decimal.Zero, decimal.Zero, decimal.Zero
	for i, l := range iv.lines {
		iv.net, iv.tax, iv.total = iv.net.Add(l.net), iv.tax.Add(l.tax), iv.total.Add(l.total)
		if iv.reverseCharge && !l.tax.IsZero() {
			p.add(fmt.Sprintf("invoice_lines[%d].tax_amount", i), "must be 0 on a domestic reverse charge invoice")
		}
	}
	for _, t := range []struct {
		name  string
		given *Decimal
		sum   decimal.Decimal
	}{{"net_amount", in.NetAmount, iv.net}, {"tax_amount", in.TaxAmount, iv.tax}, {"total_amount", in.TotalAmount, iv.total}} {
		if t.given != nil && !t.given.Equal(t.sum) {
			p.add(t.name, fmt.Sprintf("does not equal the sum of the invoice lines (%s)", t.sum.StringFixed(2)))
		}
	}
	if iv.total.Sign() < 0 {
		p.add("total_amount", "An invoice total cannot be negative; use a credit note.")
	}

	// CIS (UK): kept as given; total_after_cis_deduction defaults to total less the deduction.
	for name, d := range map[string]*Decimal{"withholding_tax_amount": in.WithholdingTaxAmount,
		"cis_applicable_amount": in.CISApplicableAmount, "total_after_cis_deduction": in.TotalAfterCISDeduction} {
		p.checkMoney(name, d)
	}
	iv.whtRate = decimalOr(in.WithholdingTaxRate, iv.whtRate)
	iv.whtAmount = decimalOr(in.WithholdingTaxAmount, iv.whtAmount)
	iv.cisApplicable = decimalOr(in.CISApplicableAmount, iv.cisApplicable)
	switch {
	case in.TotalAfterCISDeduction != nil:
		iv.afterCIS = in.TotalAfterCISDeduction.Decimal
		if !iv.whtAmount.IsZero() && !iv.afterCIS.Equal(iv.total.Sub(iv.whtAmount)) {
			p.add("total_after_cis_deduction", "does not equal total_amount less withholding_tax_amount")
		}
	case !iv.whtAmount.IsZero():
		iv.afterCIS = iv.total.Sub(iv.whtAmount)
	}
	if iv.whtAmount.GreaterThan(iv.total) {
		p.add("withholding_tax_amount", "cannot be greater than the invoice total")
	}

	switch {
	case in.DueDate != nil:
		iv.dueDate = *in.DueDate
	case creating:
		days := 30
		if ct, ok := b.contacts.get(iv.contactID); ok && ct.creditDays != nil {
			days = *ct.creditDays
		}
		if d, err := time.Parse(time.DateOnly, iv.date); err == nil {
			iv.dueDate = d.AddDate(0, 0, days).Format(time.DateOnly)
		}
	}
	if iv.dueDate != "" && iv.dueDate < iv.date {
		p.add("due_date", "cannot be before the invoice date")
	}

	if n := in.InvoiceNumber; n != nil && strings.TrimSpace(*n) != "" {
		iv.number = strings.TrimSpace(*n)
	}
	if iv.number != "" && b.invoiceNumberTaken(iv.number, iv.id) {
		p.add("invoice_number", msgNumberTaken)
	}
	return p
}

func (b *business) invoiceNumberTaken(number, self string) bool {
	for _, other := range b.invoices.all() {
		if other.id != self && strings.EqualFold(other.number, number) {
			return true
		}
	}
	return false
}

// nextInvoiceNumber is the next free "SI-n".
func (b *business) nextInvoiceNumber() string {
	for {
		n := "SI-" + strconv.Itoa(b.nextInvoice)
		b.nextInvoice++
		if !b.invoiceNumberTaken(n, "") {
			return n
		}
	}
}

// buildLines validates and computes invoice lines. A line whose id names an existing line
// starts from it (PUT); other lines are new and need description, ledger_account_id and
// unit_price. Net is quantity × unit_price − discount_amount rounded half up to 2 dp unless
// net_amount is given; tax is the given tax_amount (required unless the rate is 0 %); total is
// net + tax and must equal total_amount when that is given.
func (c *call) buildLines(in []lineIn, old []line, p *problems) []line {
	out := make([]line, 0, len(in))
	for i, li := range in {
		src := func(f string) string { return fmt.Sprintf("invoice_lines[%d].%s", i, f) }
		l := line{quantity: decimal.NewFromInt(1)}
		existing := false
		if li.ID != nil {
			for _, o := range old {
				if o.id == *li.ID {
					l, existing = o, true
				}
			}
			if !existing {
				p.add(src("id"), "The invoice line could not be found.")
			}
		} else {
			l.id = newID()
		}
		if existing || li.Description != nil {
			set(&l.description, li.Description)
		}
		if strings.TrimSpace(l.description) == "" {
			p.add(src("description"), msgRequired)
		}
		set(&l.ledgerID, li.LedgerAccountID)
		if l.ledgerID == "" {
			p.add(src("ledger_account_id"), msgRequired)
		} else if la, ok := c.b.ledgers.get(l.ledgerID); !ok || !la.visibleInSales() {
			p.add(src("ledger_account_id"), "is not a sales ledger account of this business")
		}
		if li.UnitPrice == nil && !existing {
			p.add(src("unit_price"), msgRequired)
		}
		l.unitPrice = decimalOr(li.UnitPrice, l.unitPrice)
		l.quantity = decimalOr(li.Quantity, l.quantity)
		if l.quantity.Sign() <= 0 {
			p.add(src("quantity"), "must be greater than 0")
		}
		p.checkMoney(src("discount_amount"), li.DiscountAmount)
		l.discount = decimalOr(li.DiscountAmount, l.discount)
		if l.discount.Sign() < 0 {
			p.add(src("discount_amount"), "cannot be negative")
		}
		if c.b.tier == TierStart {
			if !l.quantity.Equal(decimal.NewFromInt(1)) {
				p.add(src("quantity"), "Accounting Start invoice lines have no quantity: it must be 1.")
			}
			if !l.discount.IsZero() {
				p.add(src("discount_amount"), "Accounting Start invoice lines have no discount.")
			}
		}
		for name, unsupported := range map[string]bool{
			"discount_percentage":     li.DiscountPercentage != nil && !li.DiscountPercentage.IsZero(),
			"unit_price_includes_tax": li.UnitPriceIncludesTax != nil && *li.UnitPriceIncludesTax,
			"product_id":              li.ProductID != nil,
			"service_id":              li.ServiceID != nil,
		} {
			if unsupported {
				p.add(src(name), "is not supported by the sandbox.")
			}
		}

		set(&l.taxRateID, li.TaxRateID)
		rate, rateOK := findTaxRate(l.taxRateID)
		switch {
		case l.taxRateID == "":
			p.add(src("tax_rate_id"), msgRequired)
		case !rateOK:
			p.add(src("tax_rate_id"), "is not a tax rate of this business")
		}
		p.checkMoney(src("tax_amount"), li.TaxAmount)
		switch {
		case li.TaxAmount != nil:
			l.tax = li.TaxAmount.Decimal
		case !existing && rateOK && rate.pct.IsPositive():
			p.add(src("tax_amount"), msgRequired)
		case !existing:
			l.tax = decimal.Zero
		}
		if rateOK && rate.pct.IsZero() && !l.tax.IsZero() {
			p.add(src("tax_amount"), fmt.Sprintf("must be 0 for tax rate %s", rate.id))
		}

		p.checkMoney(src("net_amount"), li.NetAmount)
		if li.NetAmount != nil {
			l.net = li.NetAmount.Decimal
		} else {
			l.net = l.quantity.Mul(l.unitPrice).Sub(l.discount).Round(2)
		}
		l.total = l.net.Add(l.tax)
		p.checkMoney(src("total_amount"), li.TotalAmount)
		if li.TotalAmount != nil && !li.TotalAmount.Equal(l.total) {
			p.add(src("total_amount"), fmt.Sprintf("does not equal net_amount + tax_amount (%s)", l.total.StringFixed(2)))
		}
		out = append(out, l)
	}
	return out
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// createInvoice serves POST /sales_invoices: {"sales_invoice": {contact_id, date,
// invoice_lines, …}} → 201 SalesInvoice, status UNPAID (DRAFT with status_id DRAFT), numbered
// SI-n unless invoice_number is given.
func createInvoice(c *call) response {
	return c.idempotent(func() response {
		in, e := decode[invoiceIn](c)
		if e != nil {
			return *e
		}
		iv := &invoice{id: newID(), created: c.now, updated: c.now}
		if p := c.applyInvoice(&in, iv, true); len(p) > 0 {
			return invalid(p...)
		}
		if iv.number == "" {
			iv.number = c.b.nextInvoiceNumber()
		}
		c.b.invoices.add(iv.id, iv)
		return ok(http.StatusCreated, c.b.renderInvoice(iv, false))
	})
}

// updateInvoice serves PUT /sales_invoices/{key}: the attributes present are changed; lines, when
// given, replace the invoice's lines (a line with an existing id keeps it). An invoice with
// payments or allocations, or a void one, is refused. status_id is ignored, as in Sage.
func updateInvoice(c *call) response {
	iv, found := c.b.invoices.get(c.id)
	if !found {
		return notFound()
	}
	if iv.void {
		return invalid(problem("", "A void invoice cannot be edited."))
	}
	if c.b.onVATReturn(iv) {
		return invalid(problem("", msgVATReconciled))
	}
	if len(iv.apps) > 0 {
		return invalid(problem("", msgUnallocateFirst))
	}
	in, e := decode[invoiceIn](c)
	if e != nil {
		return *e
	}
	nv := *iv
	if p := c.applyInvoice(&in, &nv, false); len(p) > 0 {
		return invalid(p...)
	}
	nv.updated = c.now
	*iv = nv
	return ok(http.StatusOK, c.b.renderInvoice(iv, false))
}

// voidInvoice serves DELETE /sales_invoices/{key}?void_reason=…: voids the invoice (status VOID,
// 200 with the invoice). void_reason (≤ 200 characters) is required unless the invoice is a
// draft, which is deleted instead (200 with deleted_at set). An invoice with payments or
// allocations is refused.
func voidInvoice(c *call) response {
	iv, found := c.b.invoices.get(c.id)
	if !found {
		return notFound()
	}
	if iv.draft {
		c.b.invoices.remove(iv.id)
		c.b.tombstone("sales_invoices", iv.id, iv.number, c.now)
		iv.deleted, iv.deletedAt = true, c.now
		return ok(http.StatusOK, c.b.renderInvoice(iv, false))
	}
	if iv.void {
		return invalid(problem("", "This invoice has already been voided."))
	}
	if c.b.onVATReturn(iv) {
		return invalid(problem("", msgVATReconciled))
	}
	if len(iv.apps) > 0 {
		return invalid(problem("", msgUnallocateFirst))
	}
	reason := strings.TrimSpace(c.query.Get("void_reason"))
	switch {
	case reason == "":
		return invalid(problem("void_reason", msgRequired))
	case utf8.RuneCountInString(reason) > 200:
		return invalid(problem("void_reason", "is too long (maximum is 200 characters)"))
	}
	iv.void, iv.voidReason, iv.updated = true, reason, c.now
	return ok(http.StatusOK, c.b.renderInvoice(iv, false))
}

// releaseInvoice serves POST /sales_invoices/{key}/release: a draft becomes UNPAID → 201.
func releaseInvoice(c *call) response {
	iv, found := c.b.invoices.get(c.id)
	if !found {
		return notFound()
	}
	if !iv.draft {
		return invalid(problem("", "Only a draft invoice can be released."))
	}
	iv.draft, iv.updated = false, c.now
	return ok(http.StatusCreated, c.b.renderInvoice(iv, false))
}

// getInvoice serves GET /sales_invoices/{key}[?show_payments_allocations=true].
func getInvoice(c *call) response {
	iv, found := c.b.invoices.get(c.id)
	if !found {
		return notFound()
	}
	return ok(http.StatusOK, c.b.renderInvoice(iv, c.query.Get("show_payments_allocations") == "true"))
}

// listInvoices serves GET /sales_invoices with search (reference or contact name,
// case-insensitive substring; not the invoice number), contact_id, status_id, from_date/to_date
// (inclusive, on date), updated_or_created_since, deleted_since, has_attachments, sort
// (created_at|updated_at|date|due_date[:asc|desc]) and show_payments_allocations.
func listInvoices(c *call) response {
	if resp, ok := c.deletedSince("sales_invoices"); ok {
		return resp
	}
	q := c.query
	withAllocs := q.Get("show_payments_allocations") == "true"
	var ivs []*invoice
	for _, iv := range c.b.invoices.all() {
		name := ""
		if ct, ok := c.b.contacts.get(iv.contactID); ok {
			name = ct.name
		}
		switch s := q.Get("search"); {
		case s != "" && !containsFold(iv.reference, s) && !containsFold(name, s):
		case q.Get("contact_id") != "" && iv.contactID != q.Get("contact_id"):
		case q.Get("status_id") != "" && iv.status() != q.Get("status_id"):
		case q.Get("has_attachments") == "true":
		case !c.dateRange(iv.date), !c.updatedSince(iv.updated):
		default:
			ivs = append(ivs, iv)
		}
	}
	if e := sortBy(c, ivs, map[string]func(*invoice) string{
		"created_at": func(iv *invoice) string { return iv.created.UTC().Format(sortableTime) },
		"updated_at": func(iv *invoice) string { return iv.updated.UTC().Format(sortableTime) },
		"date":       func(iv *invoice) string { return iv.date },
		"due_date":   func(iv *invoice) string { return iv.dueDate },
	}); e != nil {
		return *e
	}
	return pageOf(c, ivs, func(iv *invoice) SalesInvoice { return c.b.renderInvoice(iv, withAllocs) })
}
