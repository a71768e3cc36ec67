package transform

import (
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/shopspring/decimal"

	"github.com/gessync/gessync/sink/sage"
)

// Sage's limits on sales invoice fields (swagger SalesInvoice model).
const (
	maxInvoiceReference = 25
	maxInvoiceNotes     = 2000
	maxVoidReason       = 200
)

// Invoice statuses of invoices.status (schema.sql).
const (
	// StatusDraft is an invoice still being written; it never reaches Sage.
	StatusDraft = "draft"
	// StatusIssued is an invoice sent to the customer; it is created or updated in Sage.
	StatusIssued = "issued"
	// StatusVoid is a cancelled invoice; it is voided in Sage if it got there.
	StatusVoid = "void"
)

// DefaultVoidReason is sent when GES voids an invoice without a void_reason.
const DefaultVoidReason = "Voided in GES"

// DeletedVoidReason is sent when an invoice row is deleted from GES (see PlanDelete).
const DeletedVoidReason = "Deleted in GES"

// PlanInvoice maps a GES invoice to Sage sales invoice operations. cust must be the invoice's
// customer (only its CIS fields are read).
//
//   - draft: no ops; drafts never reach Sage.
//   - void: DELETE /sales_invoices/{k.Self}?void_reason= (VoidSalesInvoice) with GES's
//     void_reason (or DefaultVoidReason) squashed to one line and cut to 200 characters. An
//     invoice that never reached Sage is created and then voided (the void's SageID is left
//     empty for the caller to fill from the create), unless it was never issued (no issue date).
//   - issued: POST /sales_invoices (CreateSalesInvoice, when k.Self is "") or
//     PUT /sales_invoices/{k.Self} (UpdateSalesInvoice). The customer's contact must be known
//     (k.Contact), else *MissingParentError with Parent customers/CustomerID.
//   - any other status: *InvalidError{Field: "status"}.
//
// The body: contact_id, date = issue_date, due_date, invoice_number and reference = GES's
// invoice_number, vat_reverse_charge (always sent, so that an update can clear it), notes = GES's
// notes then "Job reference: …" and "Site address: …" on their own lines (cut to Sage's 2000
// characters, GES's notes first), and invoice_lines in GES's order. Each line: description,
// ledger_account_id = s.SalesLedgerAccountID, quantity, unit_price, discount_amount when not
// zero, net_amount = LineNet, tax_rate_id = s.TaxRates[RateKey(vat_rate)], tax_amount = LineVAT
// (always sent, 0 when zero-rated, outside the scope or reverse charged) and total_amount; the
// invoice's net_amount, tax_amount and total_amount are the lines' sums (Totals).
//
// Reverse charge: every tax_amount is 0 and the lines keep their rate's tax_rate_id. CIS (when
// CISApplies): labour lines post to s.CISLabourLedgerAccountID, materials lines to
// s.CISMaterialsLedgerAccountID, other lines to the sales ledger; withholding_tax_rate = cis_rate,
// withholding_tax_amount and cis_applicable_amount from CISDeduction, total_after_cis_deduction
// = total − deduction. Start tier: each line posts quantity 1 at unit_price = its net (discount
// folded in, no discount_amount), and a quantity other than 1 moves into the description
// (StartDescription); the totals do not change.
//
// GES's stored subtotal, vat_total, total and cis_deduction are compared with these figures and
// each difference becomes a note naming both; Sage always gets the line figures. A row Sage would
// refuse (no issue date, a due date before it, an invoice number over 25 characters, no lines, a
// line without description or with quantity ≤ 0, a VAT rate the business lacks, a CIS line kind
// that is not labour, materials or other, ledger settings missing) gives *InvalidError.
func PlanInvoice(inv Invoice, cust Customer, s Settings, k Known) ([]Op, error) {
	rec := Record{Table: "invoices", ID: inv.ID}
	switch inv.Status {
	case StatusDraft:
		return nil, nil
	case StatusVoid:
		reason := strings.TrimSpace(truncate(squash(inv.VoidReason), maxVoidReason))
		if reason == "" {
			reason = DefaultVoidReason
		}
		if k.Self != "" {
			return []Op{voidOp(rec, k.Self, reason)}, nil
		}
		if inv.IssueDate == nil {
			return nil, nil // a voided draft: it was never issued, so it never reaches Sage
		}
		// Issued and voided before it reached Sage: post it, then void it, so Sage's numbering
		// matches GES's and payments taken on it can land (as payments on account). The void's
		// SageID is the created invoice's, filled in when the create has answered.
		issued := inv
		issued.Status = StatusIssued
		ops, err := PlanInvoice(issued, cust, s, k)
		if err != nil {
			return nil, err
		}
		return append(ops, voidOp(rec, "", reason)), nil
	case StatusIssued:
	default:
		return nil, &InvalidError{
			Record: rec, Field: "status",
			Reason: fmt.Sprintf("The invoice status %q is not one gessync knows (draft, issued or void)", clip(inv.Status)),
			Action: "Report this to GES support; gessync needs an update to handle it",
		}
	}

	body, notes, err := invoiceBody(rec, inv, cust, s)
	if err != nil {
		return nil, err
	}
	if k.Contact == "" {
		return nil, &MissingParentError{Record: rec, Parent: Record{Table: "customers", ID: inv.CustomerID}}
	}
	body.ContactID = k.Contact

	op := Op{Record: rec, Hash: hashSalesInvoice(body), Notes: notes}
	if k.Self == "" {
		op.Kind = CreateSalesInvoice
		body.IdempotencyID = IdempotencyID(s.BusinessID, rec)
	} else {
		op.Kind = UpdateSalesInvoice
		op.SageID = k.Self
	}
	op.SalesInvoice = &body
	return []Op{op}, nil
}

func voidOp(rec Record, sageID, reason string) Op {
	return Op{
		Kind: VoidSalesInvoice, Record: rec, SageID: sageID, VoidReason: reason,
		Hash: hashRemoval(VoidSalesInvoice, sageID, reason),
	}
}

// invoiceBody builds an issued invoice's body without contact_id and idempotency_id.
func invoiceBody(rec Record, inv Invoice, cust Customer, s Settings) (sage.SalesInvoiceRequest, []string, error) {
	var notes []string
	invalid := func(field, reason, action string) (sage.SalesInvoiceRequest, []string, error) {
		return sage.SalesInvoiceRequest{}, nil, &InvalidError{Record: rec, Field: field, Reason: reason, Action: action}
	}

	if inv.IssueDate == nil {
		return invalid("issue_date", "The invoice is issued but has no issue date, and Sage needs one",
			"Set the invoice's issue date in GES")
	}
	if inv.DueDate != nil && inv.DueDate.Before(*inv.IssueDate) {
		return invalid("due_date",
			fmt.Sprintf("The due date %s is before the issue date %s", inv.DueDate.Format(time.DateOnly), inv.IssueDate.Format(time.DateOnly)),
			"Correct the invoice's due date in GES")
	}
	number := strings.TrimSpace(inv.InvoiceNumber)
	if n := utf8.RuneCountInString(number); n > maxInvoiceReference {
		return invalid("invoice_number",
			fmt.Sprintf("The invoice number %q is %d characters long but Sage allows at most %d in an invoice reference", clip(number), n, maxInvoiceReference),
			fmt.Sprintf("Give the invoice a number of at most %d characters in GES", maxInvoiceReference))
	}
	if len(inv.Lines) == 0 {
		return invalid("line_items", "The invoice has no lines, and Sage needs at least one",
			"Add the work done or the parts used to the invoice in GES")
	}

	cis := CISApplies(inv, cust)
	start := s.Tier == TierStart
	if s.SalesLedgerAccountID == "" {
		return invalid("sales_ledger_account", "No Sage sales ledger account is chosen for this business",
			"Choose the sales ledger account (nominal 4000 by default) in gessync's settings for this company")
	}

	body := sage.SalesInvoiceRequest{
		Date:          inv.IssueDate.Format(time.DateOnly),
		InvoiceNumber: number,
		Reference:     number,
	}
	if inv.DueDate != nil {
		body.DueDate = inv.DueDate.Format(time.DateOnly)
	}
	rc := inv.VATReverseCharge
	body.VATReverseCharge = &rc

	net, vat := decimal.Zero, decimal.Zero
	body.InvoiceLines = make([]sage.InvoiceLineRequest, 0, len(inv.Lines))
	for i, l := range inv.Lines {
		n := i + 1
		desc := strings.TrimSpace(l.Description)
		if desc == "" {
			return invalid("line_items", fmt.Sprintf("Line %d has no description, and Sage needs one on every line", n),
				fmt.Sprintf("Add a description to line %d of this invoice in GES", n))
		}
		if l.Quantity.Sign() <= 0 {
			return invalid("line_items", fmt.Sprintf("Line %d has quantity %s; it must be more than 0", n, canonical(l.Quantity)),
				fmt.Sprintf("Correct the quantity on line %d of this invoice in GES", n))
		}
		taxRateID, ok := s.TaxRates[RateKey(l.VATRate)]
		if !ok || taxRateID == "" {
			if l.VATRate == nil {
				return invalid("line_items",
					fmt.Sprintf("Line %d is outside the scope of VAT, but the Sage business has no tax rate for that", n),
					"Ask your accountant to make a no-VAT (outside the scope) tax rate available in Sage, or set a VAT rate on the line in GES, then retry")
			}
			return invalid("line_items",
				fmt.Sprintf("Line %d has VAT at %s%%, but the Sage business has no %s%% tax rate", n, RateKey(l.VATRate), RateKey(l.VATRate)),
				fmt.Sprintf("Ask your accountant to set up a %s%% VAT rate in Sage, or correct the VAT rate on line %d in GES, then retry", RateKey(l.VATRate), n))
		}

		ledger := s.SalesLedgerAccountID
		if cis {
			switch l.Kind {
			case LineLabour:
				if s.CISLabourLedgerAccountID == "" {
					return invalid("cis_labour_ledger_account",
						"This invoice is to a CIS contractor, but the Sage business has no CIS labour ledger account",
						"Ask your accountant to enable CIS (as a subcontractor) in Sage's settings, then reconnect or refresh gessync's settings for this company")
				}
				ledger = s.CISLabourLedgerAccountID
			case LineMaterials:
				if s.CISMaterialsLedgerAccountID == "" {
					return invalid("cis_materials_ledger_account",
						"This invoice is to a CIS contractor, but the Sage business has no CIS materials ledger account",
						"Ask your accountant to enable CIS (as a subcontractor) in Sage's settings, then reconnect or refresh gessync's settings for this company")
				}
				ledger = s.CISMaterialsLedgerAccountID
			case LineOther:
			default:
				return invalid("line_items",
					fmt.Sprintf("Line %d has kind %q; it must be labour, materials or other to work out the CIS deduction", n, clip(l.Kind)),
					fmt.Sprintf("Set line %d of this invoice to labour, materials or other in GES", n))
			}
		}

		lineNet := LineNet(l)
		lineVAT := LineVAT(l, rc)
		line := sage.InvoiceLineRequest{
			Description:     desc,
			LedgerAccountID: ledger,
			NetAmount:       sage.DP(lineNet),
			TaxRateID:       taxRateID,
			TaxAmount:       sage.DP(lineVAT),
			TotalAmount:     sage.DP(lineNet.Add(lineVAT)),
		}
		if start {
			// Start has no quantities: one unit at the line's net, discount folded in.
			if !l.Quantity.Equal(decimal.NewFromInt(1)) {
				line.Description = StartDescription(desc, l.Quantity, l.UnitPrice)
			}
			line.Quantity = sage.DP(decimal.NewFromInt(1))
			line.UnitPrice = sage.D(lineNet)
		} else {
			line.Quantity = sage.DP(l.Quantity)
			line.UnitPrice = sage.D(l.UnitPrice)
			if !l.Discount.IsZero() {
				line.DiscountAmount = sage.DP(l.Discount)
			}
		}
		body.InvoiceLines = append(body.InvoiceLines, line)
		net = net.Add(lineNet)
		vat = vat.Add(lineVAT)
	}
	total := net.Add(vat)
	body.NetAmount = sage.DP(net)
	body.TaxAmount = sage.DP(vat)
	body.TotalAmount = sage.DP(total)

	for _, c := range []struct {
		what         string
		stored, sent decimal.Decimal
	}{
		{"subtotal", inv.Subtotal, net},
		{"VAT total", inv.VATTotal, vat},
		{"total", inv.Total, total},
	} {
		if !c.stored.Equal(c.sent) {
			notes = append(notes, fmt.Sprintf(
				"GES's stored %s is %s but the invoice lines add up to %s; Sage was sent %s",
				c.what, Money(c.stored), Money(c.sent), Money(c.sent)))
		}
	}

	labour, deduction := CISDeduction(inv, cust)
	if cis {
		body.WithholdingTaxRate = sage.DP(*cust.CISRate)
		body.WithholdingTaxAmount = sage.DP(deduction)
		body.CISApplicableAmount = sage.DP(labour)
		body.TotalAfterCISDeduction = sage.DP(total.Sub(deduction))
		if !inv.CISDeduction.Equal(deduction) {
			notes = append(notes, fmt.Sprintf(
				"GES's stored CIS deduction is %s but %s%% of the labour lines' net %s is %s; Sage was sent %s",
				Money(inv.CISDeduction), canonical(*cust.CISRate), Money(labour), Money(deduction), Money(deduction)))
		}
	} else {
		if cust.CISRegistered && cust.CISRate == nil && hasKind(inv, LineLabour) {
			notes = append(notes, "The customer is CIS registered in GES but has no CIS rate, so no CIS deduction was sent to Sage")
		}
		if !inv.CISDeduction.IsZero() {
			notes = append(notes, fmt.Sprintf(
				"GES's stored CIS deduction is %s but no CIS applies to this invoice (the customer is not CIS registered with a rate, or there are no labour lines); Sage was sent no CIS deduction",
				Money(inv.CISDeduction)))
		}
	}

	body.Notes = invoiceNotes(inv, &notes)
	return body, notes, nil
}

// invoiceNotes is GES's notes, then "Job reference: …" and "Site address: …" on their own lines,
// within Sage's 2000 characters (GES's notes are cut first, with a note).
func invoiceNotes(inv Invoice, notes *[]string) string {
	var extra []string
	if j := squash(inv.JobReference); j != "" {
		extra = append(extra, "Job reference: "+j)
	}
	if a := squash(inv.SiteAddress); a != "" {
		extra = append(extra, "Site address: "+a)
	}
	tail := strings.Join(extra, "\n")
	own := strings.TrimSpace(inv.Notes)
	room := maxInvoiceNotes
	if tail != "" {
		room -= utf8.RuneCountInString(tail)
		if own != "" {
			room-- // the new line between them
		}
	}
	if room < 0 {
		// Job reference and site address alone overflow: keep what fits of them.
		*notes = append(*notes, fmt.Sprintf("The invoice notes are longer than the %d characters Sage allows; they were cut", maxInvoiceNotes))
		return truncate(tail, maxInvoiceNotes)
	}
	if utf8.RuneCountInString(own) > room {
		*notes = append(*notes, fmt.Sprintf(
			"The invoice notes are longer than the %d characters Sage allows; only the first %d characters of GES's notes were sent",
			maxInvoiceNotes, room))
		own = strings.TrimSpace(truncate(own, room))
	}
	switch {
	case own == "":
		return tail
	case tail == "":
		return own
	}
	return own + "\n" + tail
}

func hasKind(inv Invoice, kind string) bool {
	for _, l := range inv.Lines {
		if l.Kind == kind {
			return true
		}
	}
	return false
}

// StartDescription is a line's description on Sage Accounting Start, which has no quantities:
// "2 x Radiator valve @ 12.50" (quantity without trailing zeros, unit price with at least 2
// decimal places and more only when it has them).
func StartDescription(desc string, qty, unitPrice decimal.Decimal) string {
	price := canonical(unitPrice)
	if dot := strings.IndexByte(price, '.'); dot < 0 || len(price)-dot-1 <= 2 {
		price = unitPrice.StringFixed(2) // exact: it has at most 2 decimal places
	}
	return fmt.Sprintf("%s x %s @ %s", canonical(qty), desc, price)
}
