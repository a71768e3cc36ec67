package transform

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/gessync/gessync/cdc"
)

func TestDecodeCustomer(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		row        cdc.Row
		want       func() Customer
		wantErr    error  // errors.Is target
		wantColumn string // ColumnError.Column
		wantField  string // InvalidError.Field
	}{
		{name: "ok - full row", row: customerRow(), want: testCustomer},
		{
			name: "ok - nulls are empty strings and a nil CIS rate",
			row: with(customerRow(), "account_ref", null, "title", null, "first_name", null, "email", null,
				"phone", null, "notes", null),
			want: func() Customer {
				c := testCustomer()
				c.AccountRef, c.Title, c.FirstName, c.Email, c.Phone, c.Notes = "", "", "", "", "", ""
				return c
			},
		},
		{
			name: "ok - CIS registered with a rate",
			row:  with(customerRow(), "cis_registered", "t", "cis_rate", "20.00", "company_name", "Hargreaves Build Ltd"),
			want: func() Customer {
				c := testCustomer()
				c.CISRegistered, c.CISRate, c.CompanyName = true, dp("20.00"), "Hargreaves Build Ltd"
				return c
			},
		},
		{
			name: "ok - unknown columns are ignored and created_at is not needed",
			row:  with(customerRow(), "loyalty_points", "12", "created_at", nil),
			want: testCustomer,
		},
		{
			name: "ok - updated_at with another offset is stored in UTC",
			row:  with(customerRow(), "updated_at", "2026-11-29 19:26:32.123456+05:30"),
			want: testCustomer,
		},
		{
			name: "ok - char(2) country code is trimmed",
			row:  with(customerRow(), "country_code", "IE"),
			want: func() Customer { c := testCustomer(); c.CountryCode = "IE"; return c },
		},
		{name: "error - notes unchanged TOAST value", row: with(customerRow(), "notes", unchanged), wantErr: ErrUnchangedColumn, wantColumn: "notes"},
		{name: "error - notes missing", row: with(customerRow(), "notes", nil), wantErr: ErrMissingColumn, wantColumn: "notes"},
		{name: "error - id missing", row: with(customerRow(), "id", nil), wantErr: ErrMissingColumn, wantColumn: "id"},
		{name: "error - boolean not t or f", row: with(customerRow(), "cis_registered", "yes"), wantField: "cis_registered"},
		{name: "error - archived null", row: with(customerRow(), "archived", null), wantField: "archived"},
		{name: "error - cis_rate not a number", row: with(customerRow(), "cis_rate", "twenty"), wantField: "cis_rate"},
		{name: "error - cis_rate NaN", row: with(customerRow(), "cis_rate", "NaN"), wantField: "cis_rate"},
		{name: "error - payment terms not an integer", row: with(customerRow(), "payment_terms_days", "30.5"), wantField: "payment_terms_days"},
		{name: "error - updated_at not a timestamp", row: with(customerRow(), "updated_at", "yesterday"), wantField: "updated_at"},
		{name: "error - updated_at infinity", row: with(customerRow(), "updated_at", "infinity"), wantField: "updated_at"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, err := DecodeCustomer(tc.row)
			switch {
			case tc.wantErr != nil:
				require.ErrorIs(t, err, tc.wantErr)
				var ce *ColumnError
				require.ErrorAs(t, err, &ce)
				require.Equal(t, tc.wantColumn, ce.Column)
				require.Contains(t, err.Error(), tc.wantColumn)
			case tc.wantField != "":
				ie := requireInvalid(t, err, tc.wantField)
				require.Equal(t, Record{Table: "customers", ID: 17}, ie.Record)
			default:
				require.NoError(t, err)
				want := tc.want()
				require.True(t, want.UpdatedAt.Equal(got.UpdatedAt), "updated_at %s", got.UpdatedAt)
				require.Equal(t, time.UTC, got.UpdatedAt.Location())
				got.UpdatedAt = want.UpdatedAt
				require.Equal(t, want, got)
			}
		})
	}
}

func TestDecodeInvoice(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		row        cdc.Row
		want       func() Invoice
		wantErr    error
		wantColumn string
		wantField  string
		wantReason string
	}{
		{name: "ok - full row", row: invoiceRow(), want: testInvoice},
		{
			name: "ok - draft without dates, empty lines",
			row:  with(invoiceRow(), "status", "draft", "issue_date", null, "due_date", null, "line_items", "[]"),
			want: func() Invoice {
				inv := testInvoice()
				inv.Status, inv.IssueDate, inv.DueDate, inv.Lines = StatusDraft, nil, nil, []Line{}
				return inv
			},
		},
		{
			name: "ok - exact numbers, defaults and null VAT rate",
			row: with(invoiceRow(), "line_items",
				`[{"description":"Copper pipe 15mm","quantity":1.125,"unit_price":0.1,"vat_rate":null},`+
					`{"description":"Call-out","quantity":"1","unit_price":"65.00","discount":"5.005","vat_rate":5,"kind":" Labour "},`+
					`{"description":"Permit","quantity":1,"unit_price":12345678901234.99,"vat_rate":0,"kind":"other","extra":true}]`),
			want: func() Invoice {
				inv := testInvoice()
				inv.Lines = []Line{
					{Description: "Copper pipe 15mm", Quantity: d("1.125"), UnitPrice: d("0.1"), Kind: "other"},
					{Description: "Call-out", Quantity: d("1"), UnitPrice: d("65.00"), Discount: d("5.005"), VATRate: dp("5"), Kind: "labour"},
					{Description: "Permit", Quantity: d("1"), UnitPrice: d("12345678901234.99"), VATRate: dp("0"), Kind: "other"},
				}
				return inv
			},
		},
		{
			name: "ok - reverse charge, job reference and notes",
			row: with(invoiceRow(), "vat_reverse_charge", "t", "job_reference", "PO 7781",
				"site_address", "Unit 4, Mill Lane, Leeds", "notes", "Thanks", "void_reason", ""),
			want: func() Invoice {
				inv := testInvoice()
				inv.VATReverseCharge, inv.JobReference, inv.SiteAddress, inv.Notes = true, "PO 7781", "Unit 4, Mill Lane, Leeds", "Thanks"
				return inv
			},
		},
		{name: "error - line_items unchanged TOAST value", row: with(invoiceRow(), "line_items", unchanged), wantErr: ErrUnchangedColumn, wantColumn: "line_items"},
		{name: "error - status missing", row: with(invoiceRow(), "status", nil), wantErr: ErrMissingColumn, wantColumn: "status"},
		{name: "error - line_items not JSON", row: with(invoiceRow(), "line_items", `[{"description":`), wantField: "line_items", wantReason: "malformed JSON"},
		{name: "error - line_items an object", row: with(invoiceRow(), "line_items", `{"description":"x"}`), wantField: "line_items"},
		{name: "error - line_items JSON null", row: with(invoiceRow(), "line_items", `null`), wantField: "line_items"},
		{name: "error - line_items data after the array", row: with(invoiceRow(), "line_items", `[] []`), wantField: "line_items"},
		{name: "error - quantity missing", row: with(invoiceRow(), "line_items", `[{"description":"x","unit_price":1}]`), wantField: "line_items", wantReason: "line 1: quantity is missing"},
		{name: "error - unit price missing", row: with(invoiceRow(), "line_items", `[{"description":"x","quantity":1},{"description":"y","quantity":1}]`), wantField: "line_items", wantReason: "line 1: unit_price is missing"},
		{name: "error - quantity a boolean", row: with(invoiceRow(), "line_items", `[{"description":"x","quantity":1,"unit_price":1},{"description":"y","quantity":true,"unit_price":1}]`), wantField: "line_items", wantReason: "line 2: quantity is not a number"},
		{name: "error - description a number", row: with(invoiceRow(), "line_items", `[{"description":7,"quantity":1,"unit_price":1}]`), wantField: "line_items", wantReason: "description is not text"},
		{name: "error - price NaN string", row: with(invoiceRow(), "line_items", `[{"description":"x","quantity":1,"unit_price":"NaN"}]`), wantField: "line_items"},
		{name: "error - huge exponent", row: with(invoiceRow(), "line_items", `[{"description":"x","quantity":1e999999999,"unit_price":1}]`), wantField: "line_items"},
		{name: "error - too many decimal places", row: with(invoiceRow(), "line_items", `[{"description":"x","quantity":1,"unit_price":0.0000000000001}]`), wantField: "line_items"},
		{name: "error - issue_date malformed", row: with(invoiceRow(), "issue_date", "29/11/2026"), wantField: "issue_date"},
		{name: "error - subtotal malformed", row: with(invoiceRow(), "subtotal", "£110"), wantField: "subtotal"},
		{name: "error - reverse charge null", row: with(invoiceRow(), "vat_reverse_charge", null), wantField: "vat_reverse_charge"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, err := DecodeInvoice(tc.row)
			switch {
			case tc.wantErr != nil:
				require.ErrorIs(t, err, tc.wantErr)
				var ce *ColumnError
				require.ErrorAs(t, err, &ce)
				require.Equal(t, tc.wantColumn, ce.Column)
			case tc.wantField != "":
				ie := requireInvalid(t, err, tc.wantField)
				require.Contains(t, ie.Reason, tc.wantReason)
			default:
				require.NoError(t, err)
				want := tc.want()
				require.Len(t, got.Lines, len(want.Lines))
				for i := range want.Lines {
					requireLineEqual(t, want.Lines[i], got.Lines[i])
				}
				got.Lines, want.Lines = nil, nil
				require.True(t, want.UpdatedAt.Equal(got.UpdatedAt))
				got.UpdatedAt = want.UpdatedAt
				require.True(t, want.Subtotal.Equal(got.Subtotal) && want.VATTotal.Equal(got.VATTotal) && want.Total.Equal(got.Total))
				got.Subtotal, got.VATTotal, got.Total, got.CISDeduction = want.Subtotal, want.VATTotal, want.Total, want.CISDeduction
				require.Equal(t, want, got)
			}
		})
	}
}

// requireLineEqual compares lines by decimal value, not representation.
func requireLineEqual(t *testing.T, want, got Line) {
	t.Helper()
	require.Equal(t, want.Description, got.Description)
	require.Equal(t, want.Kind, got.Kind)
	require.True(t, want.Quantity.Equal(got.Quantity), "quantity %s want %s", got.Quantity, want.Quantity)
	require.True(t, want.UnitPrice.Equal(got.UnitPrice), "unit_price %s want %s", got.UnitPrice, want.UnitPrice)
	require.True(t, want.Discount.Equal(got.Discount), "discount %s want %s", got.Discount, want.Discount)
	if want.VATRate == nil {
		require.Nil(t, got.VATRate)
	} else {
		require.NotNil(t, got.VATRate)
		require.True(t, want.VATRate.Equal(*got.VATRate), "vat_rate %s want %s", got.VATRate, want.VATRate)
	}
}

func TestDecodePayment(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		row        cdc.Row
		want       func() Payment
		wantErr    error
		wantColumn string
		wantField  string
	}{
		{name: "ok - full row", row: paymentRow(), want: testPayment},
		{
			name: "ok - null reference",
			row:  with(paymentRow(), "reference", null),
			want: func() Payment { p := testPayment(); p.Reference = ""; return p },
		},
		{name: "error - paid_on missing", row: with(paymentRow(), "paid_on", nil), wantErr: ErrMissingColumn, wantColumn: "paid_on"},
		{name: "error - reference unchanged", row: with(paymentRow(), "reference", unchanged), wantErr: ErrUnchangedColumn, wantColumn: "reference"},
		{name: "error - paid_on null", row: with(paymentRow(), "paid_on", null), wantField: "paid_on"},
		{name: "error - amount malformed", row: with(paymentRow(), "amount", "12,50"), wantField: "amount"},
		{name: "error - invoice_id malformed", row: with(paymentRow(), "invoice_id", "x"), wantField: "invoice_id"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, err := DecodePayment(tc.row)
			switch {
			case tc.wantErr != nil:
				require.ErrorIs(t, err, tc.wantErr)
				var ce *ColumnError
				require.ErrorAs(t, err, &ce)
				require.Equal(t, tc.wantColumn, ce.Column)
			case tc.wantField != "":
				requireInvalid(t, err, tc.wantField)
			default:
				require.NoError(t, err)
				want := tc.want()
				require.True(t, want.Amount.Equal(got.Amount))
				got.Amount = want.Amount
				require.True(t, want.UpdatedAt.Equal(got.UpdatedAt))
				got.UpdatedAt = want.UpdatedAt
				require.Equal(t, want, got)
			}
		})
	}
}

func TestParseTimestamptz(t *testing.T) {
	t.Parallel()
	want := time.Date(2026, 11, 29, 13, 56, 32, 123456000, time.UTC)
	tests := []struct {
		name string
		in   string
		want time.Time
		err  bool
	}{
		{name: "ok - UTC with microseconds", in: "2026-11-29 13:56:32.123456+00", want: want},
		{name: "ok - BST", in: "2026-11-29 14:56:32.123456+01", want: want},
		{name: "ok - negative half hour offset", in: "2026-11-29 10:26:32.123456-03:30", want: want},
		{name: "ok - no fraction", in: "2026-11-29 13:56:32+00", want: want.Truncate(time.Second)},
		{name: "ok - seconds in offset (LMT)", in: "1847-12-01 00:00:00-00:01:15", want: time.Date(1847, 12, 1, 0, 1, 15, 0, time.UTC)},
		{name: "error - no offset", in: "2026-11-29 13:56:32", err: true},
		{name: "error - infinity", in: "infinity", err: true},
		{name: "error - BC", in: "0044-03-15 12:00:00+00 BC", err: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, err := ParseTimestamptz(tc.in)
			if tc.err {
				require.Error(t, err)
				return
			}
			require.NoError(t, err)
			require.True(t, tc.want.Equal(got), "got %s", got)
			require.Equal(t, time.UTC, got.Location())
		})
	}
}

func TestColumnsCoverDecoders(t *testing.T) {
	t.Parallel()
	// Removing any listed column must fail decoding with ErrMissingColumn, and the fixtures hold
	// nothing the decoders need beyond the list (apart from created_at, which is ignored).
	for table, row := range map[string]cdc.Row{"customers": customerRow(), "invoices": invoiceRow(), "payments": paymentRow()} {
		require.NotEmpty(t, Columns(table))
		for _, col := range Columns(table) {
			r := with(row, col, nil)
			var err error
			switch table {
			case "customers":
				_, err = DecodeCustomer(r)
			case "invoices":
				_, err = DecodeInvoice(r)
			case "payments":
				_, err = DecodePayment(r)
			}
			require.ErrorIs(t, err, ErrMissingColumn, "%s.%s", table, col)
		}
	}
}

func TestColumnsMatchCDCStartupCheck(t *testing.T) {
	t.Parallel()
	// cdc refuses to start unless these columns exist with their types; the two lists must agree.
	for _, table := range cdc.Tables {
		want := make([]string, 0, len(cdc.RequiredColumns[table]))
		for col := range cdc.RequiredColumns[table] {
			want = append(want, col)
		}
		require.ElementsMatch(t, want, Columns(table), table)
	}
	require.Nil(t, Columns("jobs"))
}
