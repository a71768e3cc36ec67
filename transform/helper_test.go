package transform

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/shopspring/decimal"
	"github.com/stretchr/testify/require"

	"github.com/gessync/gessync/cdc"
	"github.com/gessync/gessync/sink/sage"
)

// d parses a decimal literal.
func d(s string) decimal.Decimal { return decimal.RequireFromString(s) }

// dp parses a decimal literal into a pointer.
func dp(s string) *decimal.Decimal { v := d(s); return &v }

// sd is the Sage request decimal of s.
func sd(s string) sage.Decimal { return sage.MustDecimal(s) }

// sdp points at the Sage request decimal of s.
func sdp(s string) *sage.Decimal { v := sage.MustDecimal(s); return &v }

// day is a calendar date at UTC midnight.
func day(s string) *time.Time {
	t, err := time.Parse(time.DateOnly, s)
	if err != nil {
		panic(err)
	}
	return &t
}

func ptr[T any](v T) *T { return &v }

// testSettings is a VAT-registered Standard business with CIS ledgers.
func testSettings() Settings {
	return Settings{
		BusinessID:                  "b0a1c2d3e4f5a6b7c8d9e0f1a2b3c4d5",
		BankAccountID:               "bank-current",
		SalesLedgerAccountID:        "ledger-4000",
		CISLabourLedgerAccountID:    "ledger-cis-labour",
		CISMaterialsLedgerAccountID: "ledger-cis-materials",
		TaxRates: map[string]string{
			"20": "GB_STANDARD", "5": "GB_LOWER", "0": "GB_ZERO", "": "GB_NO_TAX",
		},
		Tier: TierStandard,
	}
}

func withTier(s Settings, t Tier) Settings { s.Tier = t; return s }

// testCustomer is a domestic customer with every field set.
func testCustomer() Customer {
	return Customer{
		ID: 17, CompanyID: 3, AccountRef: "SMITH01", CustomerType: "domestic",
		Title: "Mrs", FirstName: "Jane", LastName: "Smith",
		Email: "jane.smith@example.co.uk", Phone: "01632 960123", Mobile: "07700 900123",
		AddressLine1: "12 Acacia Avenue", AddressLine2: "Flat 2", Town: "Leeds", County: "West Yorkshire",
		Postcode: "LS1 4AB", CountryCode: "GB", PaymentTermsDays: 30, Notes: "Side gate code 1234",
		UpdatedAt: time.Date(2026, 11, 29, 13, 56, 32, 123456000, time.UTC),
	}
}

// cisCustomer is a CIS-registered contractor deducting 20 %.
func cisCustomer() Customer {
	c := testCustomer()
	c.CompanyName = "Hargreaves Build Ltd"
	c.CustomerType = "commercial"
	c.CISRegistered = true
	c.CISRate = dp("20")
	return c
}

// testInvoice is an issued invoice with a service and a part, stored totals matching the lines.
func testInvoice() Invoice {
	return Invoice{
		ID: 1042, CompanyID: 3, CustomerID: 17, InvoiceNumber: "GES-1042", Status: StatusIssued,
		IssueDate: day("2026-11-29"), DueDate: day("2026-12-29"),
		Lines: []Line{
			{Description: "Annual boiler service", Quantity: d("1"), UnitPrice: d("85.00"), Discount: d("0"), VATRate: dp("20"), Kind: "labour"},
			{Description: "Radiator valve", Quantity: d("2"), UnitPrice: d("12.50"), Discount: d("0"), VATRate: dp("20"), Kind: "materials"},
		},
		Subtotal: d("110.00"), VATTotal: d("22.00"), Total: d("132.00"),
		UpdatedAt: time.Date(2026, 11, 29, 14, 0, 0, 0, time.UTC),
	}
}

// testPayment is a card payment of 132.00 against invoice 1042.
func testPayment() Payment {
	return Payment{
		ID: 501, CompanyID: 3, InvoiceID: 1042, Amount: d("132.00"), Method: "card",
		PaidOn: *day("2026-12-01"), Reference: "AUTH 884213",
		UpdatedAt: time.Date(2026, 12, 1, 9, 30, 0, 0, time.UTC),
	}
}

// invoiceKnown is what the id map holds for an invoice whose customer is in Sage.
func invoiceKnown() Known { return Known{Contact: "contact-17"} }

// paymentKnown is what the id map holds for a payment whose invoice is in Sage.
func paymentKnown() Known { return Known{Contact: "contact-17", SalesInvoice: "si-1042"} }

func text(s string) cdc.Value { return cdc.Value{Text: s} }

var null = cdc.Value{Null: true}

var unchanged = cdc.Value{Unchanged: true}

// customerRow is testCustomer as pgoutput sends it.
func customerRow() cdc.Row {
	return cdc.Row{
		"id": text("17"), "company_id": text("3"), "account_ref": text("SMITH01"),
		"customer_type": text("domestic"), "title": text("Mrs"), "first_name": text("Jane"),
		"last_name": text("Smith"), "company_name": null, "email": text("jane.smith@example.co.uk"),
		"phone": text("01632 960123"), "mobile": text("07700 900123"),
		"address_line1": text("12 Acacia Avenue"), "address_line2": text("Flat 2"),
		"town": text("Leeds"), "county": text("West Yorkshire"), "postcode": text("LS1 4AB"),
		"country_code": text("GB"), "vat_number": null, "cis_registered": text("f"),
		"cis_rate": null, "payment_terms_days": text("30"), "notes": text("Side gate code 1234"),
		"archived": text("f"), "created_at": text("2026-01-02 08:00:00+00"),
		"updated_at": text("2026-11-29 13:56:32.123456+00"),
	}
}

const testLineItems = `[{"description": "Annual boiler service", "quantity": 1, "unit_price": 85.00, "discount": 0.00, "vat_rate": 20, "kind": "labour"},
 {"description": "Radiator valve", "quantity": 2, "unit_price": 12.50, "vat_rate": 20, "kind": "materials"}]`

// invoiceRow is testInvoice as pgoutput sends it.
func invoiceRow() cdc.Row {
	return cdc.Row{
		"id": text("1042"), "company_id": text("3"), "customer_id": text("17"),
		"invoice_number": text("GES-1042"), "status": text("issued"),
		"issue_date": text("2026-11-29"), "due_date": text("2026-12-29"),
		"job_reference": null, "site_address": null, "vat_reverse_charge": text("f"),
		"line_items": text(testLineItems), "subtotal": text("110.00"), "vat_total": text("22.00"),
		"total": text("132.00"), "cis_deduction": text("0.00"), "notes": null, "void_reason": null,
		"created_at": text("2026-11-29 13:00:00+00"), "updated_at": text("2026-11-29 14:00:00+00"),
	}
}

// paymentRow is testPayment as pgoutput sends it.
func paymentRow() cdc.Row {
	return cdc.Row{
		"id": text("501"), "company_id": text("3"), "invoice_id": text("1042"),
		"amount": text("132.00"), "method": text("card"), "paid_on": text("2026-12-01"),
		"reference": text("AUTH 884213"), "created_at": text("2026-12-01 09:30:00+00"),
		"updated_at": text("2026-12-01 09:30:00+00"),
	}
}

// with returns a copy of r with the given columns replaced (a Value) or removed (nil).
func with(r cdc.Row, kv ...any) cdc.Row {
	out := cdc.Row{}
	for k, v := range r {
		out[k] = v
	}
	for i := 0; i < len(kv); i += 2 {
		name := kv[i].(string)
		switch v := kv[i+1].(type) {
		case nil:
			delete(out, name)
		case cdc.Value:
			out[name] = v
		case string:
			out[name] = text(v)
		default:
			panic("with: bad value")
		}
	}
	return out
}

// requireInvalid asserts err is an *InvalidError for field and returns it.
func requireInvalid(t *testing.T, err error, field string) *InvalidError {
	t.Helper()
	var ie *InvalidError
	require.ErrorAs(t, err, &ie)
	require.Equal(t, field, ie.Field)
	require.NotEmpty(t, ie.Reason)
	require.NotEmpty(t, ie.Action)
	return ie
}

// mustJSON is v's JSON text.
func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	require.NoError(t, err)
	return string(b)
}
