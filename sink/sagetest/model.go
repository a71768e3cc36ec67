package sagetest

import (
	"bytes"
	"encoding/json"
	"fmt"

	"github.com/shopspring/decimal"
)

// Decimal is an exact decimal in the shape Sage sends it: a JSON string with at least two
// decimal places ("102.00", "1.00", "85.125"). It reads a JSON number or a JSON string, as
// Sage's request bodies accept both. It never passes through float64.
type Decimal struct{ decimal.Decimal }

// dec wraps d.
func dec(d decimal.Decimal) Decimal { return Decimal{d} }

// MarshalJSON writes the value as a quoted string with at least two decimal places.
func (d Decimal) MarshalJSON() ([]byte, error) {
	places := max(-d.Exponent(), 2)
	return []byte(`"` + d.StringFixed(places) + `"`), nil
}

// UnmarshalJSON accepts 12.5, "12.5" and null (zero).
func (d *Decimal) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	if bytes.Equal(b, []byte("null")) {
		d.Decimal = decimal.Zero
		return nil
	}
	if len(b) > 0 && b[0] == '"' {
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return fmt.Errorf("decimal: %w", err)
		}
		b = []byte(s)
	}
	v, err := decimal.NewFromString(string(b))
	if err != nil {
		return fmt.Errorf("decimal %q: %w", b, err)
	}
	d.Decimal = v
	return nil
}

// Link is Sage's reference to another record in a response: {"id", "displayed_as", "$path"}.
// $path is relative to the API base, e.g. "/contacts/0d40…".
type Link struct {
	ID          string `json:"id"`
	DisplayedAs string `json:"displayed_as"`
	Path        string `json:"$path,omitempty"`
}

// Address is a postal address as Sage returns it (contact.main_address, sales_invoice.main_address).
type Address struct {
	ID            string `json:"id,omitempty"`
	DisplayedAs   string `json:"displayed_as,omitempty"`
	AddressLine1  string `json:"address_line_1"`
	AddressLine2  string `json:"address_line_2"`
	City          string `json:"city"`
	Region        string `json:"region"`
	PostalCode    string `json:"postal_code"`
	Country       *Link  `json:"country,omitempty"`
	AddressType   *Link  `json:"address_type,omitempty"`
	IsMainAddress bool   `json:"is_main_address"`
}

// ContactPerson is contact.main_contact_person as Sage returns it; Email is also copied to
// contact.email.
type ContactPerson struct {
	ID                 string `json:"id"`
	DisplayedAs        string `json:"displayed_as"`
	ContactPersonTypes []Link `json:"contact_person_types"`
	Name               string `json:"name"`
	Telephone          string `json:"telephone"`
	Mobile             string `json:"mobile"`
	Email              string `json:"email"`
	IsMainContact      bool   `json:"is_main_contact"`
}

// Contact is a contact in the full response shape of GET /contacts/{key}.
type Contact struct {
	ID                        string         `json:"id"`
	DisplayedAs               string         `json:"displayed_as"`
	Path                      string         `json:"$path"`
	CreatedAt                 string         `json:"created_at"`
	UpdatedAt                 string         `json:"updated_at"`
	ContactTypes              []Link         `json:"contact_types"`
	Name                      string         `json:"name"`
	Reference                 string         `json:"reference"`
	Email                     string         `json:"email"`
	TaxNumber                 string         `json:"tax_number"`
	Notes                     string         `json:"notes"`
	CreditDays                *int           `json:"credit_days,omitempty"`
	DefaultSalesLedgerAccount *Link          `json:"default_sales_ledger_account,omitempty"`
	DefaultSalesTaxRate       *Link          `json:"default_sales_tax_rate,omitempty"`
	MainAddress               *Address       `json:"main_address,omitempty"`
	DeliveryAddress           *Address       `json:"delivery_address,omitempty"`
	MainContactPerson         *ContactPerson `json:"main_contact_person,omitempty"`
	Currency                  Link           `json:"currency"`
	Balance                   Decimal        `json:"balance"`
	Deletable                 bool           `json:"deletable"`
	IsActive                  bool           `json:"is_active"`
	System                    bool           `json:"system"`
}

// InvoiceLine is one line of a sales invoice as Sage returns it.
type InvoiceLine struct {
	ID             string  `json:"id"`
	DisplayedAs    string  `json:"displayed_as"`
	Description    string  `json:"description"`
	LedgerAccount  Link    `json:"ledger_account"`
	Quantity       Decimal `json:"quantity"`
	UnitPrice      Decimal `json:"unit_price"`
	DiscountAmount Decimal `json:"discount_amount"`
	NetAmount      Decimal `json:"net_amount"`
	TaxRate        *Link   `json:"tax_rate,omitempty"`
	TaxAmount      Decimal `json:"tax_amount"`
	TotalAmount    Decimal `json:"total_amount"`
}

// PaymentAllocation is one entry of sales_invoice.payments_allocations: money applied to the
// invoice by a contact payment (Type "CUSTOMER_RECEIPT", ContactPayment set) or by a contact
// allocation of a payment on account (Type "CUSTOMER_ALLOCATION", ContactAllocation set too).
// ID is the id of the allocated artefact on the payment or allocation.
type PaymentAllocation struct {
	ID                string  `json:"id"`
	Date              string  `json:"date"`
	Type              string  `json:"type"`
	Reference         string  `json:"reference"`
	Amount            Decimal `json:"amount"`
	Discount          Decimal `json:"discount"`
	ContactPayment    *Link   `json:"contact_payment,omitempty"`
	ContactAllocation *Link   `json:"contact_allocation,omitempty"`
}

// SalesInvoice is a sales invoice in the full response shape of GET /sales_invoices/{key}.
// Status.ID is DRAFT, UNPAID, PART_PAID, PAID or VOID. PaymentsAllocations is sent only with
// show_payments_allocations=true (always in the dump). DeletedAt is set on a deleted draft.
type SalesInvoice struct {
	ID                     string              `json:"id"`
	DisplayedAs            string              `json:"displayed_as"`
	Path                   string              `json:"$path"`
	CreatedAt              string              `json:"created_at"`
	UpdatedAt              string              `json:"updated_at"`
	DeletedAt              string              `json:"deleted_at,omitempty"`
	Editable               bool                `json:"editable"`
	InvoiceNumber          string              `json:"invoice_number"`
	Reference              string              `json:"reference"`
	Contact                Link                `json:"contact"`
	ContactName            string              `json:"contact_name"`
	ContactReference       string              `json:"contact_reference"`
	Date                   string              `json:"date"`
	DueDate                string              `json:"due_date"`
	Status                 Link                `json:"status"`
	Currency               Link                `json:"currency"`
	Notes                  string              `json:"notes"`
	MainAddress            *Address            `json:"main_address,omitempty"`
	VATReverseCharge       bool                `json:"vat_reverse_charge"`
	NetAmount              Decimal             `json:"net_amount"`
	TaxAmount              Decimal             `json:"tax_amount"`
	TotalAmount            Decimal             `json:"total_amount"`
	TotalPaid              Decimal             `json:"total_paid"`
	OutstandingAmount      Decimal             `json:"outstanding_amount"`
	VoidReason             string              `json:"void_reason"`
	IsCIS                  bool                `json:"is_cis"`
	HasCISLabour           bool                `json:"has_cis_labour"`
	HasCISMaterials        bool                `json:"has_cis_materials"`
	WithholdingTaxRate     Decimal             `json:"withholding_tax_rate"`
	WithholdingTaxAmount   Decimal             `json:"withholding_tax_amount"`
	CISApplicableAmount    Decimal             `json:"cis_applicable_amount"`
	TotalAfterCISDeduction Decimal             `json:"total_after_cis_deduction"`
	InvoiceLines           []InvoiceLine       `json:"invoice_lines"`
	PaymentsAllocations    []PaymentAllocation `json:"payments_allocations,omitempty"`
}

// AllocatedArtefact is one allocation of a contact payment or contact allocation: Amount of
// the payment applied to Artefact (a sales invoice, or a payment on account in an allocation,
// with a negative amount).
type AllocatedArtefact struct {
	ID       string  `json:"id"`
	Artefact Link    `json:"artefact"`
	Amount   Decimal `json:"amount"`
	Discount Decimal `json:"discount"`
}

// PaymentOnAccount is the unallocated excess of a contact payment (never on Start).
type PaymentOnAccount struct {
	ID                string  `json:"id"`
	DisplayedAs       string  `json:"displayed_as"`
	Path              string  `json:"$path"`
	Contact           Link    `json:"contact"`
	Date              string  `json:"date"`
	Reference         string  `json:"reference"`
	TotalAmount       Decimal `json:"total_amount"`
	OutstandingAmount Decimal `json:"outstanding_amount"`
	Status            Link    `json:"status"`
}

// ContactPayment is a contact payment in the full response shape of GET /contact_payments/{key}.
// TransactionType.ID is CUSTOMER_RECEIPT.
type ContactPayment struct {
	ID                 string              `json:"id"`
	DisplayedAs        string              `json:"displayed_as"`
	Path               string              `json:"$path"`
	CreatedAt          string              `json:"created_at"`
	UpdatedAt          string              `json:"updated_at"`
	TransactionType    Link                `json:"transaction_type"`
	Contact            Link                `json:"contact"`
	BankAccount        Link                `json:"bank_account"`
	PaymentMethod      Link                `json:"payment_method"`
	Date               string              `json:"date"`
	NetAmount          Decimal             `json:"net_amount"`
	TaxAmount          Decimal             `json:"tax_amount"`
	TotalAmount        Decimal             `json:"total_amount"`
	Currency           Link                `json:"currency"`
	Reference          string              `json:"reference"`
	AllocatedArtefacts []AllocatedArtefact `json:"allocated_artefacts"`
	PaymentOnAccount   *PaymentOnAccount   `json:"payment_on_account,omitempty"`
	Editable           bool                `json:"editable"`
}

// ContactAllocation is a contact allocation (POST /contact_allocations): a payment on account
// (negative amount) allocated to invoices (positive amounts). TransactionType.ID is
// CUSTOMER_ALLOCATION.
type ContactAllocation struct {
	ID                 string              `json:"id"`
	DisplayedAs        string              `json:"displayed_as"`
	Path               string              `json:"$path"`
	CreatedAt          string              `json:"created_at"`
	UpdatedAt          string              `json:"updated_at"`
	TransactionType    Link                `json:"transaction_type"`
	Date               string              `json:"date"`
	Contact            Link                `json:"contact"`
	AllocatedArtefacts []AllocatedArtefact `json:"allocated_artefacts"`
}

// BankAccountDetails is bank_account.bank_account_details.
type BankAccountDetails struct {
	AccountName   string `json:"account_name"`
	AccountNumber string `json:"account_number"`
	SortCode      string `json:"sort_code"`
	BIC           string `json:"bic"`
	IBAN          string `json:"iban"`
}

// BankAccount is a bank account in the full response shape of GET /bank_accounts/{key}.
// BankAccountType.ID is CHECKING (a current account), SAVINGS, CREDIT_CARD, CASH_IN_HAND, LOAN
// or OTHER. Balance is the sum of the receipts paid into it.
type BankAccount struct {
	ID                   string             `json:"id"`
	DisplayedAs          string             `json:"displayed_as"`
	Path                 string             `json:"$path"`
	CreatedAt            string             `json:"created_at"`
	UpdatedAt            string             `json:"updated_at"`
	BankAccountDetails   BankAccountDetails `json:"bank_account_details"`
	LedgerAccount        Link               `json:"ledger_account"`
	BankAccountType      Link               `json:"bank_account_type"`
	Balance              Decimal            `json:"balance"`
	NominalCode          int                `json:"nominal_code"`
	Editable             bool               `json:"editable"`
	Deletable            bool               `json:"deletable"`
	DefaultPaymentMethod Link               `json:"default_payment_method"`
	IsActive             bool               `json:"is_active"`
	Currency             Link               `json:"currency"`
}

// Dump is everything the sandbox holds, as GET /_sandbox/dump returns it:
// {"businesses":[{"id","name","tier","contacts":[…],"sales_invoices":[…],…}]}.
type Dump struct {
	Businesses []BusinessDump `json:"businesses"`
}

// BusinessDump is one business in a Dump. Records are in creation order and in the API's full
// response shape; sales invoices always carry payments_allocations. Deleted contacts, payments
// and draft invoices are absent; voided invoices stay, with status VOID.
type BusinessDump struct {
	ID                 string              `json:"id"`
	Name               string              `json:"name"`
	Tier               string              `json:"tier"`
	Contacts           []Contact           `json:"contacts"`
	SalesInvoices      []SalesInvoice      `json:"sales_invoices"`
	ContactPayments    []ContactPayment    `json:"contact_payments"`
	ContactAllocations []ContactAllocation `json:"contact_allocations"`
	BankAccounts       []BankAccount       `json:"bank_accounts"`
}

// Business returns the business with the given id, or nil.
func (d Dump) Business(id string) *BusinessDump {
	for i := range d.Businesses {
		if d.Businesses[i].ID == id {
			return &d.Businesses[i]
		}
	}
	return nil
}
