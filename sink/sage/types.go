package sage

import (
	"bytes"
	"encoding/json"
	"fmt"

	"github.com/shopspring/decimal"
)

// Decimal is an exact decimal as Sage Accounting v3.1 carries money, quantities and rates.
//
// It is written as a JSON number with exactly the digits it holds (never through float64), and
// read from either a JSON number or a JSON string, because Sage's responses send money as strings
// ("balance": "-430035.84") although the spec declares number/double.
type Decimal struct{ decimal.Decimal }

// D wraps d as a Decimal.
func D(d decimal.Decimal) Decimal { return Decimal{d} }

// DP returns a pointer to D(d), for optional request fields.
func DP(d decimal.Decimal) *Decimal { v := Decimal{d}; return &v }

// MustDecimal parses s ("12.50") as a Decimal and panics on a malformed literal; for tests and constants.
func MustDecimal(s string) Decimal { return Decimal{decimal.RequireFromString(s)} }

// MarshalJSON writes the decimal as a bare JSON number with the digits it holds, trailing zeros
// included: 102.00 stays 102.00 and 0.10 stays 0.10 (decimal.Decimal.String would write 102 and 0.1).
func (d Decimal) MarshalJSON() ([]byte, error) {
	if exp := d.Decimal.Exponent(); exp < 0 {
		return []byte(d.Decimal.StringFixed(-exp)), nil
	}
	return []byte(d.Decimal.String()), nil
}

// UnmarshalJSON accepts 12.5, "12.5" and null (which leaves zero).
func (d *Decimal) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	if bytes.Equal(b, []byte("null")) {
		d.Decimal = decimal.Zero
		return nil
	}
	if len(b) > 0 && b[0] == '"' {
		if len(b) >= 2 && b[len(b)-1] == '"' && bytes.IndexByte(b, '\\') < 0 {
			b = b[1 : len(b)-1] // the usual "12.50": no escapes to undo
		} else {
			var s string
			if err := json.Unmarshal(b, &s); err != nil {
				return fmt.Errorf("decimal: %w", err)
			}
			b = []byte(s)
		}
		if len(b) == 0 {
			d.Decimal = decimal.Zero
			return nil
		}
	}
	v, err := decimal.NewFromString(string(b))
	if err != nil {
		return fmt.Errorf("decimal %q: %w", b, err)
	}
	d.Decimal = v
	return nil
}

// Link is Sage's reference to another record in a response: {"id", "displayed_as", "$path"}.
type Link struct {
	ID          string `json:"id"`
	DisplayedAs string `json:"displayed_as,omitempty"`
	Path        string `json:"$path,omitempty"`
}

// Page is one page of a Sage list response ($items envelope). ItemsPerPage is read from
// "$itemsPerPage" and, for /businesses, "$items_per_page". Next is nil on the last page.
type Page[T any] struct {
	Total         int     `json:"$total"`
	Page          int     `json:"$page"`
	Next          *string `json:"$next"`
	Back          *string `json:"$back"`
	ItemsPerPage  int     `json:"$itemsPerPage"`
	ItemsPerPage2 int     `json:"$items_per_page"`
	Items         []T     `json:"$items"`
}

// PerPage returns the page size whichever key Sage used for it.
func (p Page[T]) PerPage() int {
	if p.ItemsPerPage != 0 {
		return p.ItemsPerPage
	}
	return p.ItemsPerPage2
}

// Address is a postal address as sent in contact.main_address and sales_invoice.main_address.
type Address struct {
	AddressLine1 string `json:"address_line_1,omitempty"`
	AddressLine2 string `json:"address_line_2,omitempty"`
	City         string `json:"city,omitempty"`
	Region       string `json:"region,omitempty"`
	PostalCode   string `json:"postal_code,omitempty"`
	CountryID    string `json:"country_id,omitempty"`
	// CountryGroupID is the country group ("GBIE", "EU", "US", …), as Sage's own examples send it.
	CountryGroupID string `json:"country_group_id,omitempty"`
	AddressTypeID  string `json:"address_type_id,omitempty"`
	IsMainAddress  *bool  `json:"is_main_address,omitempty"`
}

// ContactPerson is contact.main_contact_person: where Sage keeps a contact's email and phones.
type ContactPerson struct {
	Name                 string   `json:"name,omitempty"`
	Email                string   `json:"email,omitempty"`
	Telephone            string   `json:"telephone,omitempty"`
	Mobile               string   `json:"mobile,omitempty"`
	IsMainContact        *bool    `json:"is_main_contact,omitempty"`
	ContactPersonTypeIDs []string `json:"contact_person_type_ids,omitempty"`
}

// ContactRequest is the body of POST /contacts and PUT /contacts/{id}, wrapped as {"contact": …}.
// Required on POST: Name and ContactTypeIDs (["CUSTOMER"]). Reference is at most 10 characters.
type ContactRequest struct {
	IdempotencyID               string         `json:"idempotency_id,omitempty"`
	Name                        string         `json:"name,omitempty"`
	ContactTypeIDs              []string       `json:"contact_type_ids,omitempty"`
	Reference                   string         `json:"reference,omitempty"`
	TaxNumber                   string         `json:"tax_number,omitempty"`
	Notes                       string         `json:"notes,omitempty"`
	CreditDays                  *int           `json:"credit_days,omitempty"`
	DefaultSalesLedgerAccountID string         `json:"default_sales_ledger_account_id,omitempty"`
	MainAddress                 *Address       `json:"main_address,omitempty"`
	MainContactPerson           *ContactPerson `json:"main_contact_person,omitempty"`
}

// Contact is a contact as Sage returns it (GET/POST/PUT /contacts).
type Contact struct {
	ID                string         `json:"id"`
	DisplayedAs       string         `json:"displayed_as,omitempty"`
	Name              string         `json:"name"`
	Reference         string         `json:"reference,omitempty"`
	Email             string         `json:"email,omitempty"`
	ContactTypes      []Link         `json:"contact_types,omitempty"`
	TaxNumber         string         `json:"tax_number,omitempty"`
	Notes             string         `json:"notes,omitempty"`
	CreditDays        *int           `json:"credit_days,omitempty"`
	MainAddress       *Address       `json:"main_address,omitempty"`
	MainContactPerson *ContactPerson `json:"main_contact_person,omitempty"`
	Deletable         bool           `json:"deletable,omitempty"`
	CreatedAt         string         `json:"created_at,omitempty"`
	UpdatedAt         string         `json:"updated_at,omitempty"`
}

// ContactKeys is the part of a contact (an item of GET /contacts) that tells contacts apart:
// what gessync matches a customer on. Decoding a page into it skips the rest of each contact.
type ContactKeys struct {
	ID                string      `json:"id"`
	Name              string      `json:"name"`
	Reference         string      `json:"reference,omitempty"`
	Email             string      `json:"email,omitempty"`
	MainAddress       *AddressKey `json:"main_address,omitempty"`
	MainContactPerson *PersonKey  `json:"main_contact_person,omitempty"`
}

// AddressKey is the part of contact.main_address that ContactKeys keeps: its postcode.
type AddressKey struct {
	PostalCode string `json:"postal_code,omitempty"`
}

// PersonKey is the part of contact.main_contact_person that ContactKeys keeps: its email.
type PersonKey struct {
	Email string `json:"email,omitempty"`
}

// InvoiceLineRequest is one element of sales_invoice.invoice_lines. Required: Description,
// LedgerAccountID, UnitPrice. TaxAmount is required unless the tax rate is zero, exempt or no-tax.
type InvoiceLineRequest struct {
	Description     string   `json:"description"`
	LedgerAccountID string   `json:"ledger_account_id"`
	Quantity        *Decimal `json:"quantity,omitempty"`
	UnitPrice       Decimal  `json:"unit_price"`
	DiscountAmount  *Decimal `json:"discount_amount,omitempty"`
	NetAmount       *Decimal `json:"net_amount,omitempty"`
	TaxRateID       string   `json:"tax_rate_id,omitempty"`
	TaxAmount       *Decimal `json:"tax_amount,omitempty"`
	TotalAmount     *Decimal `json:"total_amount,omitempty"`
}

// SalesInvoiceRequest is the body of POST /sales_invoices and PUT /sales_invoices/{id}, wrapped as
// {"sales_invoice": …}. Required on POST: ContactID, Date (YYYY-MM-DD), InvoiceLines. Reference is
// at most 25 characters. The CIS fields (UK) are WithholdingTaxRate/WithholdingTaxAmount,
// CISApplicableAmount and TotalAfterCISDeduction.
type SalesInvoiceRequest struct {
	IdempotencyID          string               `json:"idempotency_id,omitempty"`
	ContactID              string               `json:"contact_id,omitempty"`
	Date                   string               `json:"date,omitempty"`
	DueDate                string               `json:"due_date,omitempty"`
	InvoiceNumber          string               `json:"invoice_number,omitempty"`
	Reference              string               `json:"reference,omitempty"`
	Notes                  string               `json:"notes,omitempty"`
	VATReverseCharge       *bool                `json:"vat_reverse_charge,omitempty"`
	MainAddress            *Address             `json:"main_address,omitempty"`
	NetAmount              *Decimal             `json:"net_amount,omitempty"`
	TaxAmount              *Decimal             `json:"tax_amount,omitempty"`
	TotalAmount            *Decimal             `json:"total_amount,omitempty"`
	WithholdingTaxRate     *Decimal             `json:"withholding_tax_rate,omitempty"`
	WithholdingTaxAmount   *Decimal             `json:"withholding_tax_amount,omitempty"`
	CISApplicableAmount    *Decimal             `json:"cis_applicable_amount,omitempty"`
	TotalAfterCISDeduction *Decimal             `json:"total_after_cis_deduction,omitempty"`
	InvoiceLines           []InvoiceLineRequest `json:"invoice_lines,omitempty"`
}

// InvoiceLine is one line of a sales invoice as Sage returns it.
type InvoiceLine struct {
	ID             string  `json:"id,omitempty"`
	Description    string  `json:"description"`
	LedgerAccount  *Link   `json:"ledger_account,omitempty"`
	Quantity       Decimal `json:"quantity"`
	UnitPrice      Decimal `json:"unit_price"`
	DiscountAmount Decimal `json:"discount_amount"`
	NetAmount      Decimal `json:"net_amount"`
	TaxRate        *Link   `json:"tax_rate,omitempty"`
	TaxAmount      Decimal `json:"tax_amount"`
	TotalAmount    Decimal `json:"total_amount"`
}

// PaymentAllocation is one entry of sales_invoice.payments_allocations (with
// show_payments_allocations=true): money applied to the invoice by a contact payment
// (ContactPayment set) or by a contact allocation (ContactAllocation set). Spec: PaymentAllocation.
type PaymentAllocation struct {
	Date              string  `json:"date,omitempty"`
	Type              string  `json:"type,omitempty"`
	Reference         string  `json:"reference,omitempty"`
	Amount            Decimal `json:"amount"`
	ContactPayment    *Link   `json:"contact_payment,omitempty"`
	ContactAllocation *Link   `json:"contact_allocation,omitempty"`
}

// SalesInvoice is a sales invoice as Sage returns it (GET/POST/PUT /sales_invoices, and the
// voided invoice from DELETE /sales_invoices/{id}).
type SalesInvoice struct {
	ID                     string              `json:"id"`
	DisplayedAs            string              `json:"displayed_as,omitempty"`
	InvoiceNumber          string              `json:"invoice_number,omitempty"`
	Reference              string              `json:"reference,omitempty"`
	Contact                *Link               `json:"contact,omitempty"`
	Date                   string              `json:"date,omitempty"`
	DueDate                string              `json:"due_date,omitempty"`
	Status                 *Link               `json:"status,omitempty"`
	Notes                  string              `json:"notes,omitempty"`
	VATReverseCharge       bool                `json:"vat_reverse_charge,omitempty"`
	NetAmount              Decimal             `json:"net_amount"`
	TaxAmount              Decimal             `json:"tax_amount"`
	TotalAmount            Decimal             `json:"total_amount"`
	OutstandingAmount      Decimal             `json:"outstanding_amount"`
	TotalPaid              Decimal             `json:"total_paid"`
	WithholdingTaxRate     Decimal             `json:"withholding_tax_rate"`
	WithholdingTaxAmount   Decimal             `json:"withholding_tax_amount"`
	CISApplicableAmount    Decimal             `json:"cis_applicable_amount"`
	TotalAfterCISDeduction Decimal             `json:"total_after_cis_deduction"`
	VoidReason             string              `json:"void_reason,omitempty"`
	Editable               bool                `json:"editable,omitempty"`
	InvoiceLines           []InvoiceLine       `json:"invoice_lines,omitempty"`
	PaymentsAllocations    []PaymentAllocation `json:"payments_allocations,omitempty"`
	DeletedAt              string              `json:"deleted_at,omitempty"`
	CreatedAt              string              `json:"created_at,omitempty"`
	UpdatedAt              string              `json:"updated_at,omitempty"`
}

// AllocatedArtefactRequest allocates part of a contact payment to an artefact (a sales invoice id).
type AllocatedArtefactRequest struct {
	ArtefactID string   `json:"artefact_id"`
	Amount     Decimal  `json:"amount"`
	Discount   *Decimal `json:"discount,omitempty"`
}

// PaymentOnAccountRequest is contact_payment.payment_on_account: the unallocated excess of a receipt.
type PaymentOnAccountRequest struct {
	ContactID   string   `json:"contact_id,omitempty"`
	Date        string   `json:"date,omitempty"`
	Reference   string   `json:"reference,omitempty"`
	TotalAmount *Decimal `json:"total_amount,omitempty"`
}

// ContactPaymentRequest is the body of POST /contact_payments and PUT /contact_payments/{id},
// wrapped as {"contact_payment": …}. Required on POST: TransactionTypeID ("CUSTOMER_RECEIPT"),
// ContactID, BankAccountID, Date, TotalAmount. Reference is at most 25 characters. TotalAmount may
// not be less than the allocated amounts; any excess is a payment on account (not in Start).
type ContactPaymentRequest struct {
	IdempotencyID      string                     `json:"idempotency_id,omitempty"`
	TransactionTypeID  string                     `json:"transaction_type_id,omitempty"`
	ContactID          string                     `json:"contact_id,omitempty"`
	BankAccountID      string                     `json:"bank_account_id,omitempty"`
	PaymentMethodID    string                     `json:"payment_method_id,omitempty"`
	Date               string                     `json:"date,omitempty"`
	TotalAmount        *Decimal                   `json:"total_amount,omitempty"`
	Reference          string                     `json:"reference,omitempty"`
	AllocatedArtefacts []AllocatedArtefactRequest `json:"allocated_artefacts,omitempty"`
	PaymentOnAccount   *PaymentOnAccountRequest   `json:"payment_on_account,omitempty"`
}

// MarshalJSON writes the payment like the default encoding, except that a non-nil empty
// AllocatedArtefacts is sent as "allocated_artefacts": [] (what PUT /contact_payments/{id} needs
// to clear a payment's allocations); a nil one is left out.
func (r ContactPaymentRequest) MarshalJSON() ([]byte, error) {
	type plain ContactPaymentRequest
	if r.AllocatedArtefacts == nil || len(r.AllocatedArtefacts) > 0 {
		return json.Marshal(plain(r))
	}
	return json.Marshal(struct {
		plain
		AllocatedArtefacts []AllocatedArtefactRequest `json:"allocated_artefacts"`
	}{plain(r), []AllocatedArtefactRequest{}})
}

// AllocatedArtefact is one allocation of a contact payment as Sage returns it.
type AllocatedArtefact struct {
	ID       string  `json:"id,omitempty"`
	Artefact *Link   `json:"artefact,omitempty"`
	Amount   Decimal `json:"amount"`
}

// ContactPayment is a contact payment as Sage returns it (GET/POST/PUT /contact_payments).
type ContactPayment struct {
	ID                 string              `json:"id"`
	DisplayedAs        string              `json:"displayed_as,omitempty"`
	TransactionType    *Link               `json:"transaction_type,omitempty"`
	Contact            *Link               `json:"contact,omitempty"`
	BankAccount        *Link               `json:"bank_account,omitempty"`
	PaymentMethod      *Link               `json:"payment_method,omitempty"`
	Date               string              `json:"date,omitempty"`
	TotalAmount        Decimal             `json:"total_amount"`
	Reference          string              `json:"reference,omitempty"`
	AllocatedArtefacts []AllocatedArtefact `json:"allocated_artefacts,omitempty"`
	PaymentOnAccount   *Link               `json:"payment_on_account,omitempty"`
	CreatedAt          string              `json:"created_at,omitempty"`
	UpdatedAt          string              `json:"updated_at,omitempty"`
}

// Business is one Sage business the user may reach (GET /businesses, Core API).
type Business struct {
	ID            string `json:"id"`
	DisplayedAs   string `json:"displayed_as,omitempty"`
	Name          string `json:"name,omitempty"`
	Subscriptions []struct {
		ID          string `json:"id,omitempty"`
		DisplayedAs string `json:"displayed_as,omitempty"`
	} `json:"subscriptions,omitempty"`
}

// BankAccount is a bank account of the business (GET/POST /bank_accounts).
// BankAccountType.ID is e.g. "CHECKING" (current account), "SAVINGS", "CREDIT_CARD", "CASH_IN_HAND".
type BankAccount struct {
	ID                 string  `json:"id"`
	DisplayedAs        string  `json:"displayed_as,omitempty"`
	BankAccountType    *Link   `json:"bank_account_type,omitempty"`
	Balance            Decimal `json:"balance"`
	BankAccountDetails *struct {
		AccountName string `json:"account_name,omitempty"`
	} `json:"bank_account_details,omitempty"`
}

// BankAccountRequest is the body of POST /bank_accounts, wrapped as {"bank_account": …}.
type BankAccountRequest struct {
	IdempotencyID      string `json:"idempotency_id,omitempty"`
	BankAccountTypeID  string `json:"bank_account_type_id"`
	BankAccountDetails struct {
		AccountName string `json:"account_name"`
	} `json:"bank_account_details"`
}

// TaxRate is a tax rate of the business (GET /tax_rates). In GB: GB_STANDARD (20), GB_LOWER (5),
// GB_ZERO (0), GB_EXEMPT, GB_NO_TAX.
type TaxRate struct {
	ID          string  `json:"id"`
	DisplayedAs string  `json:"displayed_as,omitempty"`
	Name        string  `json:"name,omitempty"`
	Percentage  Decimal `json:"percentage"`
	IsVisible   bool    `json:"is_visible,omitempty"`
}

// LedgerAccount is a ledger account (GET /ledger_accounts); Nominalcode is e.g. 4000 for Sales.
type LedgerAccount struct {
	ID                string `json:"id"`
	DisplayedAs       string `json:"displayed_as,omitempty"`
	Name              string `json:"name,omitempty"`
	Nominalcode       int    `json:"nominal_code,omitempty"`
	LedgerAccountType *Link  `json:"ledger_account_type,omitempty"`
	CISLabour         bool   `json:"cis_labour,omitempty"`
	CISMaterials      bool   `json:"cis_materials,omitempty"`
}

// PaymentMethod is a payment method (GET /payment_methods): CASH, CHECK, CREDIT_DEBIT, BANK_TRANSFER, …
type PaymentMethod struct {
	ID          string `json:"id"`
	DisplayedAs string `json:"displayed_as,omitempty"`
}
