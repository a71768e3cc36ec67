package transform

import (
	"time"

	"github.com/shopspring/decimal"
)

// Customer is a GES customers row (schema.sql). Optional text columns are "" when NULL.
type Customer struct {
	ID               int64
	CompanyID        int64
	AccountRef       string
	CustomerType     string // domestic | commercial | landlord | letting_agent
	Title            string
	FirstName        string
	LastName         string
	CompanyName      string
	Email            string
	Phone            string
	Mobile           string
	AddressLine1     string
	AddressLine2     string
	Town             string
	County           string
	Postcode         string
	CountryCode      string // ISO 3166 alpha-2, e.g. "GB"
	VATNumber        string
	CISRegistered    bool
	CISRate          *decimal.Decimal // percent: 0, 20 or 30; nil when not registered
	PaymentTermsDays int
	Notes            string
	Archived         bool
	UpdatedAt        time.Time
}

// Line is one element of invoices.line_items.
type Line struct {
	Description string
	Quantity    decimal.Decimal  // > 0, up to 3 dp
	UnitPrice   decimal.Decimal  // net of VAT, GBP
	Discount    decimal.Decimal  // GBP off this line's net, default 0
	VATRate     *decimal.Decimal // percent (20, 5, 0); nil = outside the scope of VAT
	Kind        string           // labour | materials | other
}

// Invoice is a GES invoices row (schema.sql).
type Invoice struct {
	ID               int64
	CompanyID        int64
	CustomerID       int64
	InvoiceNumber    string
	Status           string     // draft | issued | void
	IssueDate        *time.Time // a calendar date (UTC midnight); nil while draft
	DueDate          *time.Time
	JobReference     string
	SiteAddress      string
	VATReverseCharge bool
	Lines            []Line
	Subtotal         decimal.Decimal
	VATTotal         decimal.Decimal
	Total            decimal.Decimal
	CISDeduction     decimal.Decimal
	Notes            string
	VoidReason       string
	UpdatedAt        time.Time
}

// Payment is a GES payments row (schema.sql).
type Payment struct {
	ID        int64
	CompanyID int64
	InvoiceID int64
	Amount    decimal.Decimal // > 0; may exceed what is left to pay
	Method    string          // cash | card | bank_transfer | cheque | other
	PaidOn    time.Time       // a calendar date (UTC midnight)
	Reference string
	UpdatedAt time.Time
}
