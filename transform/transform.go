// Package transform turns GES rows into Sage Accounting v3.1 operations.
//
// It is pure: a decoded GES row, the company's Settings and the Sage ids already Known give a
// list of Ops. No I/O, no clocks. The rules follow ../shared/ges/schema.sql (GES's totals
// formula: VAT rounded half-up per line to 2 dp) and the Sage request bodies of sink/sage.
package transform

import (
	"fmt"

	"github.com/shopspring/decimal"

	"github.com/gessync/gessync/sink/sage"
)

// Tier is the Sage Accounting product a business runs on. Start has no quantities on invoice
// lines (each line posts as quantity 1), no payments on account and no contact allocations.
type Tier string

// The Sage Accounting tiers. An empty Tier is treated as TierStandard.
const (
	// TierStart is Sage Accounting Start: lines post as quantity 1 at their net, and the excess
	// of an overpayment cannot be kept as a payment on account.
	TierStart Tier = "start"
	// TierStandard is Sage Accounting Standard.
	TierStandard Tier = "standard"
	// TierPlus is Sage Accounting Plus.
	TierPlus Tier = "plus"
)

// Settings are one company's Sage choices and the ids looked up in its business when it connected.
type Settings struct {
	// BusinessID is the Sage business; it seeds idempotency ids.
	BusinessID string
	// BankAccountID receives customer receipts.
	BankAccountID string
	// SalesLedgerAccountID is the ledger account of ordinary sales lines (nominal 4000 by default).
	SalesLedgerAccountID string
	// CISLabourLedgerAccountID and CISMaterialsLedgerAccountID are used for the lines of invoices
	// to a CIS-registered customer; empty when the business has no CIS ledgers.
	CISLabourLedgerAccountID    string
	CISMaterialsLedgerAccountID string
	// TaxRates maps a GES vat_rate to the business's Sage tax rate id. Keys are the rate in
	// canonical decimal form ("20", "5", "0"); the key "" is for vat_rate null (outside the scope
	// of VAT). A rate missing from the map is an InvalidError naming the rate.
	TaxRates map[string]string
	// Tier decides how lines and overpayments are posted.
	Tier Tier
}

// Record names a GES row: table ("customers", "invoices", "payments") and primary key.
type Record struct {
	Table string
	ID    int64
}

// String is "table/id", e.g. "invoices/1042".
func (r Record) String() string { return fmt.Sprintf("%s/%d", r.Table, r.ID) }

// Known are the Sage ids the id map already holds for a change's record and its parents.
type Known struct {
	// Self is the record's own Sage id: contact, sales invoice or contact payment; "" if never synced.
	Self string
	// Contact is the Sage contact of the customer an invoice or payment belongs to.
	Contact string
	// SalesInvoice is, for a payment, the Sage sales invoice of its invoice.
	SalesInvoice string
	// Outstanding is, for a payment, what Sage says is still unpaid on its invoice before this
	// payment (its own earlier allocation excluded); nil when unknown, in which case the whole
	// payment is allocated.
	Outstanding *decimal.Decimal
}

// Kind is the kind of a Sage operation.
type Kind uint8

// The Sage operations transform plans, with the request each one stands for.
const (
	CreateContact        Kind = iota + 1 // POST /contacts
	UpdateContact                        // PUT /contacts/{id}
	DeleteContact                        // DELETE /contacts/{id}
	CreateSalesInvoice                   // POST /sales_invoices
	UpdateSalesInvoice                   // PUT /sales_invoices/{id}
	VoidSalesInvoice                     // DELETE /sales_invoices/{id}?void_reason=
	CreateContactPayment                 // POST /contact_payments
	UpdateContactPayment                 // PUT /contact_payments/{id}
	DeleteContactPayment                 // DELETE /contact_payments/{id}
)

var kindNames = map[Kind]string{
	CreateContact: "create contact", UpdateContact: "update contact", DeleteContact: "delete contact",
	CreateSalesInvoice: "create sales invoice", UpdateSalesInvoice: "update sales invoice",
	VoidSalesInvoice: "void sales invoice", CreateContactPayment: "create contact payment",
	UpdateContactPayment: "update contact payment", DeleteContactPayment: "delete contact payment",
}

// String is the kind in words, e.g. "create sales invoice".
func (k Kind) String() string {
	if s, ok := kindNames[k]; ok {
		return s
	}
	return fmt.Sprintf("kind(%d)", k)
}

// Op is one Sage operation for one GES record. Exactly one of Contact, SalesInvoice and
// ContactPayment is set for creates and updates; SageID is set for updates, voids and deletes.
type Op struct {
	Kind   Kind
	Record Record
	SageID string

	Contact        *sage.ContactRequest
	SalesInvoice   *sage.SalesInvoiceRequest
	ContactPayment *sage.ContactPaymentRequest
	// VoidReason is sent with VoidSalesInvoice (at most 200 characters).
	VoidReason string

	// Hash identifies the payload (SHA-256 hex of its JSON without the idempotency id, and for
	// contacts without the create-only contact_type_ids; for voids and deletes, of the kind, the
	// Sage id and the void reason), so that an update that would send what Sage already has can
	// be skipped: a create and a later update with the same content hash alike. A contact
	// payment's Hash is of its body as if the whole payment were allocated to the invoice
	// (k.Outstanding unknown), so that it is the same whatever Sage says is outstanding, and an
	// unchanged payment can be recognised before reading the invoice (PaymentHash).
	Hash string
	// Notes are plain-English remarks for the sync log (for example the excess of an overpayment
	// on Start that must be recorded by hand); empty for most ops.
	Notes []string
}

// InvalidError is a GES row that cannot become a valid Sage record. It is permanent: the row must
// be fixed in GES. Field names the GES column, Reason says what is wrong in plain English and
// Action what the engineer should do.
type InvalidError struct {
	Record Record
	Field  string
	Reason string
	Action string
}

// Error is "table/id: field: reason".
func (e *InvalidError) Error() string {
	return fmt.Sprintf("%s: %s: %s", e.Record, e.Field, e.Reason)
}

// MissingParentError says the record needs its parent in Sage first (an invoice's customer, a
// payment's invoice). The pipeline syncs the parent, or waits for it, and tries again.
type MissingParentError struct {
	Record Record
	Parent Record
}

// Error says which parent the record waits for.
func (e *MissingParentError) Error() string {
	return fmt.Sprintf("%s: waiting for %s to reach Sage", e.Record, e.Parent)
}
