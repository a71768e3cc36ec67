package transform

import (
	"bytes"
	"encoding/json"
	"errors"
	"regexp"
	"strings"
	"testing"

	"github.com/shopspring/decimal"
	"github.com/stretchr/testify/require"

	"github.com/gessync/gessync/sink/sage"
)

// normJSON decodes JSON text with exact numbers rewritten in canonical form, so that 85.00 and
// 85 compare equal while 85.01 does not.
func normJSON(t *testing.T, b []byte) any {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var v any
	require.NoError(t, dec.Decode(&v))
	var walk func(any) any
	walk = func(v any) any {
		switch v := v.(type) {
		case json.Number:
			return "num:" + canonical(decimal.RequireFromString(v.String()))
		case map[string]any:
			for k, e := range v {
				v[k] = walk(e)
			}
		case []any:
			for i, e := range v {
				v[i] = walk(e)
			}
		}
		return v
	}
	return walk(v)
}

// requireSameJSON asserts want and got marshal to the same JSON, numbers compared by value.
func requireSameJSON(t *testing.T, want, got any) {
	t.Helper()
	w, err := json.Marshal(want)
	require.NoError(t, err)
	g, err := json.Marshal(got)
	require.NoError(t, err)
	require.Equal(t, normJSON(t, w), normJSON(t, g), "got %s", g)
}

func wantInvoiceBody() sage.SalesInvoiceRequest {
	return sage.SalesInvoiceRequest{
		IdempotencyID:    IdempotencyID(testSettings().BusinessID, Record{Table: "invoices", ID: 1042}),
		ContactID:        "contact-17",
		Date:             "2026-11-29",
		DueDate:          "2026-12-29",
		InvoiceNumber:    "GES-1042",
		Reference:        "GES-1042",
		VATReverseCharge: ptr(false),
		NetAmount:        sdp("110.00"),
		TaxAmount:        sdp("22.00"),
		TotalAmount:      sdp("132.00"),
		InvoiceLines: []sage.InvoiceLineRequest{
			{
				Description: "Annual boiler service", LedgerAccountID: "ledger-4000",
				Quantity: sdp("1"), UnitPrice: sd("85.00"), NetAmount: sdp("85.00"),
				TaxRateID: "GB_STANDARD", TaxAmount: sdp("17.00"), TotalAmount: sdp("102.00"),
			},
			{
				Description: "Radiator valve", LedgerAccountID: "ledger-4000",
				Quantity: sdp("2"), UnitPrice: sd("12.50"), NetAmount: sdp("25.00"),
				TaxRateID: "GB_STANDARD", TaxAmount: sdp("5.00"), TotalAmount: sdp("30.00"),
			},
		},
	}
}

func TestPlanInvoice(t *testing.T) {
	t.Parallel()
	rec := Record{Table: "invoices", ID: 1042}
	tests := []struct {
		name      string
		inv       func(*Invoice)
		cust      func() Customer // default testCustomer
		settings  func(*Settings)
		known     Known // default invoiceKnown()
		noKnown   bool  // use Known{} instead of the default
		wantKind  Kind  // 0: no ops
		want      func(*sage.SalesInvoiceRequest)
		wantVoid  string
		wantNotes []string
		wantField string
		wantMsg   []string // substrings of Reason + Action
		wantErr   error
	}{
		{name: "ok - create an issued invoice", wantKind: CreateSalesInvoice},
		{
			name: "ok - update an issued invoice", known: Known{Self: "si-1042", Contact: "contact-17"},
			wantKind: UpdateSalesInvoice,
			want:     func(b *sage.SalesInvoiceRequest) { b.IdempotencyID = "" },
		},
		{name: "ok - draft gives no ops", inv: func(i *Invoice) { i.Status = StatusDraft; i.IssueDate = nil }},
		{name: "ok - draft already in Sage gives no ops", inv: func(i *Invoice) { i.Status = StatusDraft }, known: Known{Self: "si-1042", Contact: "contact-17"}},
		{name: "ok - draft of an unknown customer gives no ops", inv: func(i *Invoice) { i.Status = StatusDraft }, noKnown: true},
		{name: "ok - a voided draft never synced gives no ops", inv: func(i *Invoice) { i.Status = StatusVoid; i.IssueDate = nil }},
		{
			name: "ok - void with GES's reason", inv: func(i *Invoice) { i.Status = StatusVoid; i.VoidReason = " Raised twice\nby mistake " },
			known: Known{Self: "si-1042"}, wantKind: VoidSalesInvoice, wantVoid: "Raised twice by mistake",
		},
		{
			name: "ok - void without a reason", inv: func(i *Invoice) { i.Status = StatusVoid },
			known: Known{Self: "si-1042"}, wantKind: VoidSalesInvoice, wantVoid: "Voided in GES",
		},
		{
			name: "ok - void reason cut to 200 characters", inv: func(i *Invoice) { i.Status = StatusVoid; i.VoidReason = strings.Repeat("ü", 250) },
			known: Known{Self: "si-1042"}, wantKind: VoidSalesInvoice, wantVoid: strings.Repeat("ü", 200),
		},
		{
			name: "ok - no due date", inv: func(i *Invoice) { i.DueDate = nil }, wantKind: CreateSalesInvoice,
			want: func(b *sage.SalesInvoiceRequest) { b.DueDate = "" },
		},
		{
			name: "ok - notes with job reference and site address on their own lines",
			inv: func(i *Invoice) {
				i.Notes = "Boiler in loft.\nLadder needed."
				i.JobReference = " JOB-77 "
				i.SiteAddress = "4 Mill Lane,\n Leeds LS2 7AA"
			},
			wantKind: CreateSalesInvoice,
			want: func(b *sage.SalesInvoiceRequest) {
				b.Notes = "Boiler in loft.\nLadder needed.\nJob reference: JOB-77\nSite address: 4 Mill Lane, Leeds LS2 7AA"
			},
		},
		{
			name: "ok - job reference alone", inv: func(i *Invoice) { i.JobReference = "PO 7781" }, wantKind: CreateSalesInvoice,
			want: func(b *sage.SalesInvoiceRequest) { b.Notes = "Job reference: PO 7781" },
		},
		{
			name: "ok - discount is sent and folded into net",
			inv: func(i *Invoice) {
				i.Lines[1].Discount = d("5.00")
				i.Subtotal, i.VATTotal, i.Total = d("105.00"), d("21.00"), d("126.00")
			},
			wantKind: CreateSalesInvoice,
			want: func(b *sage.SalesInvoiceRequest) {
				l := &b.InvoiceLines[1]
				l.DiscountAmount, l.NetAmount, l.TaxAmount, l.TotalAmount = sdp("5.00"), sdp("20.00"), sdp("4.00"), sdp("24.00")
				b.NetAmount, b.TaxAmount, b.TotalAmount = sdp("105.00"), sdp("21.00"), sdp("126.00")
			},
		},
		{
			name: "ok - VAT rounded half up per line, fractional quantity",
			inv: func(i *Invoice) {
				i.Lines = []Line{{Description: "Labour", Quantity: d("1.5"), UnitPrice: d("33.35"), VATRate: dp("20.00"), Kind: LineLabour}}
				// 1.5 × 33.35 = 50.025 → 50.03; VAT 10.006 → 10.01
				i.Subtotal, i.VATTotal, i.Total = d("50.03"), d("10.01"), d("60.04")
			},
			wantKind: CreateSalesInvoice,
			want: func(b *sage.SalesInvoiceRequest) {
				b.InvoiceLines = []sage.InvoiceLineRequest{{
					Description: "Labour", LedgerAccountID: "ledger-4000", Quantity: sdp("1.5"), UnitPrice: sd("33.35"),
					NetAmount: sdp("50.03"), TaxRateID: "GB_STANDARD", TaxAmount: sdp("10.01"), TotalAmount: sdp("60.04"),
				}}
				b.NetAmount, b.TaxAmount, b.TotalAmount = sdp("50.03"), sdp("10.01"), sdp("60.04")
			},
		},
		{
			name: "ok - zero-rated and outside-scope lines carry tax_amount 0",
			inv: func(i *Invoice) {
				i.Lines[0].VATRate = dp("0")
				i.Lines[1].VATRate = nil
				i.VATTotal, i.Total = d("0"), d("110.00")
			},
			wantKind: CreateSalesInvoice,
			want: func(b *sage.SalesInvoiceRequest) {
				b.InvoiceLines[0].TaxRateID, b.InvoiceLines[0].TaxAmount, b.InvoiceLines[0].TotalAmount = "GB_ZERO", sdp("0"), sdp("85.00")
				b.InvoiceLines[1].TaxRateID, b.InvoiceLines[1].TaxAmount, b.InvoiceLines[1].TotalAmount = "GB_NO_TAX", sdp("0"), sdp("25.00")
				b.TaxAmount, b.TotalAmount = sdp("0"), sdp("110.00")
			},
		},
		{
			name: "ok - 5% rate",
			inv: func(i *Invoice) {
				i.Lines = i.Lines[1:]
				i.Lines[0].VATRate = dp("5.00")
				i.Subtotal, i.VATTotal, i.Total = d("25.00"), d("1.25"), d("26.25")
			},
			wantKind: CreateSalesInvoice,
			want: func(b *sage.SalesInvoiceRequest) {
				b.InvoiceLines = b.InvoiceLines[1:]
				b.InvoiceLines[0].TaxRateID, b.InvoiceLines[0].TaxAmount, b.InvoiceLines[0].TotalAmount = "GB_LOWER", sdp("1.25"), sdp("26.25")
				b.NetAmount, b.TaxAmount, b.TotalAmount = sdp("25.00"), sdp("1.25"), sdp("26.25")
			},
		},
		{
			name: "ok - reverse charge: no VAT, lines keep their rate",
			inv: func(i *Invoice) {
				i.VATReverseCharge = true
				i.VATTotal, i.Total = d("0"), d("110.00")
			},
			wantKind: CreateSalesInvoice,
			want: func(b *sage.SalesInvoiceRequest) {
				b.VATReverseCharge = ptr(true)
				b.InvoiceLines[0].TaxAmount, b.InvoiceLines[0].TotalAmount = sdp("0"), sdp("85.00")
				b.InvoiceLines[1].TaxAmount, b.InvoiceLines[1].TotalAmount = sdp("0"), sdp("25.00")
				b.TaxAmount, b.TotalAmount = sdp("0"), sdp("110.00")
			},
		},
		{
			name: "ok - CIS: labour and materials ledgers, deduction on labour",
			inv: func(i *Invoice) {
				i.Lines = append(i.Lines, Line{Description: "Skip hire", Quantity: d("1"), UnitPrice: d("10.00"), VATRate: dp("20"), Kind: LineOther})
				i.Subtotal, i.VATTotal, i.Total, i.CISDeduction = d("120.00"), d("24.00"), d("144.00"), d("17.00")
			},
			cust:     cisCustomer,
			wantKind: CreateSalesInvoice,
			want: func(b *sage.SalesInvoiceRequest) {
				b.InvoiceLines[0].LedgerAccountID = "ledger-cis-labour"
				b.InvoiceLines[1].LedgerAccountID = "ledger-cis-materials"
				b.InvoiceLines = append(b.InvoiceLines, sage.InvoiceLineRequest{
					Description: "Skip hire", LedgerAccountID: "ledger-4000", Quantity: sdp("1"), UnitPrice: sd("10"),
					NetAmount: sdp("10"), TaxRateID: "GB_STANDARD", TaxAmount: sdp("2"), TotalAmount: sdp("12"),
				})
				b.NetAmount, b.TaxAmount, b.TotalAmount = sdp("120"), sdp("24"), sdp("144")
				b.WithholdingTaxRate, b.WithholdingTaxAmount = sdp("20"), sdp("17.00")
				b.CISApplicableAmount, b.TotalAfterCISDeduction = sdp("85.00"), sdp("127.00")
			},
		},
		{
			name: "ok - CIS with reverse charge",
			inv: func(i *Invoice) {
				i.VATReverseCharge = true
				i.VATTotal, i.Total, i.CISDeduction = d("0"), d("110.00"), d("25.50")
			},
			cust:     func() Customer { c := cisCustomer(); c.CISRate = dp("30"); return c },
			wantKind: CreateSalesInvoice,
			want: func(b *sage.SalesInvoiceRequest) {
				b.VATReverseCharge = ptr(true)
				b.InvoiceLines[0].LedgerAccountID, b.InvoiceLines[0].TaxAmount, b.InvoiceLines[0].TotalAmount = "ledger-cis-labour", sdp("0"), sdp("85")
				b.InvoiceLines[1].LedgerAccountID, b.InvoiceLines[1].TaxAmount, b.InvoiceLines[1].TotalAmount = "ledger-cis-materials", sdp("0"), sdp("25")
				b.TaxAmount, b.TotalAmount = sdp("0"), sdp("110")
				b.WithholdingTaxRate, b.WithholdingTaxAmount = sdp("30"), sdp("25.50")
				b.CISApplicableAmount, b.TotalAfterCISDeduction = sdp("85"), sdp("84.50")
			},
		},
		{
			name: "ok - CIS stored deduction differs: Sage gets the computed one and a note",
			inv:  func(i *Invoice) { i.CISDeduction = d("17.01") },
			cust: cisCustomer, wantKind: CreateSalesInvoice,
			want: func(b *sage.SalesInvoiceRequest) {
				b.InvoiceLines[0].LedgerAccountID = "ledger-cis-labour"
				b.InvoiceLines[1].LedgerAccountID = "ledger-cis-materials"
				b.WithholdingTaxRate, b.WithholdingTaxAmount = sdp("20"), sdp("17.00")
				b.CISApplicableAmount, b.TotalAfterCISDeduction = sdp("85.00"), sdp("115.00")
			},
			wantNotes: []string{"CIS deduction is £17.01 but 20% of the labour lines' net £85.00 is £17.00"},
		},
		{
			name: "ok - CIS customer without labour lines: ordinary invoice",
			inv:  func(i *Invoice) { i.Lines[0].Kind = LineMaterials },
			cust: cisCustomer, wantKind: CreateSalesInvoice,
		},
		{
			name: "ok - CIS customer without a rate: ordinary invoice with a note",
			cust: func() Customer { c := cisCustomer(); c.CISRate = nil; return c }, wantKind: CreateSalesInvoice,
			wantNotes: []string{"no CIS rate"},
		},
		{
			name: "ok - CIS deduction stored for a customer that is not CIS registered",
			inv:  func(i *Invoice) { i.CISDeduction = d("17.00") }, wantKind: CreateSalesInvoice,
			wantNotes: []string{"GES's stored CIS deduction is £17.00 but no CIS applies"},
		},
		{
			name: "ok - CIS with only labour needs no materials ledger",
			inv: func(i *Invoice) {
				i.Lines = i.Lines[:1]
				i.Subtotal, i.VATTotal, i.Total, i.CISDeduction = d("85"), d("17"), d("102"), d("17")
			},
			cust:     cisCustomer,
			settings: func(s *Settings) { s.CISMaterialsLedgerAccountID = "" },
			wantKind: CreateSalesInvoice,
			want: func(b *sage.SalesInvoiceRequest) {
				b.InvoiceLines = b.InvoiceLines[:1]
				b.InvoiceLines[0].LedgerAccountID = "ledger-cis-labour"
				b.NetAmount, b.TaxAmount, b.TotalAmount = sdp("85"), sdp("17"), sdp("102")
				b.WithholdingTaxRate, b.WithholdingTaxAmount = sdp("20"), sdp("17")
				b.CISApplicableAmount, b.TotalAfterCISDeduction = sdp("85"), sdp("85")
			},
		},
		{
			name: "ok - Start: quantity 1 at the line's net, quantity in the description, discount folded in",
			inv: func(i *Invoice) {
				i.Lines[1].Discount = d("1.00")
				i.Lines = append(i.Lines, Line{Description: "Flue pipe", Quantity: d("0.750"), UnitPrice: d("20"), VATRate: dp("20"), Kind: LineMaterials})
				i.Subtotal, i.VATTotal, i.Total = d("124.00"), d("24.80"), d("148.80")
			},
			settings: func(s *Settings) { s.Tier = TierStart },
			wantKind: CreateSalesInvoice,
			want: func(b *sage.SalesInvoiceRequest) {
				b.InvoiceLines[1] = sage.InvoiceLineRequest{
					Description: "2 x Radiator valve @ 12.50", LedgerAccountID: "ledger-4000",
					Quantity: sdp("1"), UnitPrice: sd("24.00"), NetAmount: sdp("24.00"),
					TaxRateID: "GB_STANDARD", TaxAmount: sdp("4.80"), TotalAmount: sdp("28.80"),
				}
				b.InvoiceLines = append(b.InvoiceLines, sage.InvoiceLineRequest{
					Description: "0.75 x Flue pipe @ 20.00", LedgerAccountID: "ledger-4000",
					Quantity: sdp("1"), UnitPrice: sd("15.00"), NetAmount: sdp("15.00"),
					TaxRateID: "GB_STANDARD", TaxAmount: sdp("3.00"), TotalAmount: sdp("18.00"),
				})
				b.NetAmount, b.TaxAmount, b.TotalAmount = sdp("124.00"), sdp("24.80"), sdp("148.80")
			},
		},
		{
			name:     "ok - Start keeps the description of a single item",
			inv:      func(i *Invoice) { i.Lines = i.Lines[:1]; i.Subtotal, i.VATTotal, i.Total = d("85"), d("17"), d("102") },
			settings: func(s *Settings) { s.Tier = TierStart },
			wantKind: CreateSalesInvoice,
			want: func(b *sage.SalesInvoiceRequest) {
				b.InvoiceLines = b.InvoiceLines[:1]
				b.NetAmount, b.TaxAmount, b.TotalAmount = sdp("85"), sdp("17"), sdp("102")
			},
		},
		{
			name: "ok - stored totals that disagree are reported, lines win",
			inv: func(i *Invoice) {
				i.Subtotal, i.VATTotal, i.Total = d("110.00"), d("21.99"), d("131.99")
			},
			wantKind:  CreateSalesInvoice,
			wantNotes: []string{"stored VAT total is £21.99 but the invoice lines add up to £22.00", "stored total is £131.99 but the invoice lines add up to £132.00"},
		},
		{name: "error - issued invoice of a customer not in Sage", noKnown: true, wantErr: &MissingParentError{Record: rec, Parent: Record{Table: "customers", ID: 17}}},
		{name: "error - unknown status", inv: func(i *Invoice) { i.Status = "paid" }, wantField: "status"},
		{name: "error - issued without issue date", inv: func(i *Invoice) { i.IssueDate = nil }, wantField: "issue_date"},
		{name: "error - due before issue", inv: func(i *Invoice) { i.DueDate = day("2026-11-28") }, wantField: "due_date"},
		{
			name: "error - invoice number over 25 characters", inv: func(i *Invoice) { i.InvoiceNumber = "GES-2026-NORTH-LEEDS-000001" },
			wantField: "invoice_number", wantMsg: []string{"25"},
		},
		{name: "error - no lines", inv: func(i *Invoice) { i.Lines = nil }, wantField: "line_items"},
		{
			name: "error - line without description", inv: func(i *Invoice) { i.Lines[1].Description = "  " },
			wantField: "line_items", wantMsg: []string{"Line 2 has no description"},
		},
		{
			name: "error - zero quantity", inv: func(i *Invoice) { i.Lines[0].Quantity = d("0") },
			wantField: "line_items", wantMsg: []string{"Line 1 has quantity 0"},
		},
		{
			name: "error - VAT rate the business lacks", inv: func(i *Invoice) { i.Lines[1].VATRate = dp("17.50") },
			wantField: "line_items", wantMsg: []string{"Line 2 has VAT at 17.5%", "no 17.5% tax rate", "Ask your accountant"},
		},
		{
			name: "error - outside the scope with no such Sage rate", inv: func(i *Invoice) { i.Lines[0].VATRate = nil },
			settings:  func(s *Settings) { delete(s.TaxRates, "") },
			wantField: "line_items", wantMsg: []string{"outside the scope of VAT"},
		},
		{
			name: "error - CIS without a labour ledger", cust: cisCustomer,
			settings:  func(s *Settings) { s.CISLabourLedgerAccountID = "" },
			wantField: "cis_labour_ledger_account", wantMsg: []string{"enable CIS"},
		},
		{
			name: "error - CIS without a materials ledger", cust: cisCustomer,
			settings:  func(s *Settings) { s.CISMaterialsLedgerAccountID = "" },
			wantField: "cis_materials_ledger_account", wantMsg: []string{"enable CIS"},
		},
		{
			name: "error - CIS line of unknown kind", cust: cisCustomer, inv: func(i *Invoice) { i.Lines[1].Kind = "parts" },
			wantField: "line_items", wantMsg: []string{"Line 2 has kind \"parts\""},
		},
		{
			name: "error - no sales ledger chosen", settings: func(s *Settings) { s.SalesLedgerAccountID = "" },
			wantField: "sales_ledger_account",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			inv := testInvoice()
			if tc.inv != nil {
				tc.inv(&inv)
			}
			cust := testCustomer()
			if tc.cust != nil {
				cust = tc.cust()
			}
			s := testSettings()
			if tc.settings != nil {
				tc.settings(&s)
			}
			k := tc.known
			if k == (Known{}) && !tc.noKnown {
				k = invoiceKnown()
			}
			ops, err := PlanInvoice(inv, cust, s, k)
			switch {
			case tc.wantErr != nil:
				require.Equal(t, tc.wantErr, err)
				var mp *MissingParentError
				require.True(t, errors.As(err, &mp))
				return
			case tc.wantField != "":
				ie := requireInvalid(t, err, tc.wantField)
				require.Equal(t, rec, ie.Record)
				for _, m := range tc.wantMsg {
					require.Contains(t, ie.Reason+" "+ie.Action, m)
				}
				require.Nil(t, ops)
				return
			}
			require.NoError(t, err)
			if tc.wantKind == 0 {
				require.Empty(t, ops)
				return
			}
			require.Len(t, ops, 1)
			op := ops[0]
			require.Equal(t, tc.wantKind, op.Kind)
			require.Equal(t, rec, op.Record)
			require.NotEmpty(t, op.Hash)
			require.Len(t, op.Notes, len(tc.wantNotes), "notes: %q", op.Notes)
			for i, n := range tc.wantNotes {
				require.Contains(t, op.Notes[i], n)
			}
			if tc.wantKind == VoidSalesInvoice {
				require.Equal(t, k.Self, op.SageID)
				require.Equal(t, tc.wantVoid, op.VoidReason)
				require.Nil(t, op.SalesInvoice)
				return
			}
			require.Equal(t, k.Self, op.SageID)
			require.NotNil(t, op.SalesInvoice)
			want := wantInvoiceBody()
			if tc.want != nil {
				tc.want(&want)
			}
			requireSameJSON(t, want, *op.SalesInvoice)
		})
	}
}

func TestPlanInvoiceHash(t *testing.T) {
	t.Parallel()
	create, err := PlanInvoice(testInvoice(), testCustomer(), testSettings(), invoiceKnown())
	require.NoError(t, err)
	update, err := PlanInvoice(testInvoice(), testCustomer(), testSettings(), Known{Self: "si-1042", Contact: "contact-17"})
	require.NoError(t, err)
	require.Equal(t, create[0].Hash, update[0].Hash)

	inv := testInvoice()
	inv.Lines[1].UnitPrice = d("12.51")
	changed, err := PlanInvoice(inv, testCustomer(), testSettings(), Known{Self: "si-1042", Contact: "contact-17"})
	require.NoError(t, err)
	require.NotEqual(t, update[0].Hash, changed[0].Hash)

	inv = testInvoice()
	inv.Status, inv.VoidReason = StatusVoid, "a"
	va, err := PlanInvoice(inv, testCustomer(), testSettings(), Known{Self: "si-1042"})
	require.NoError(t, err)
	inv.VoidReason = "b"
	vb, err := PlanInvoice(inv, testCustomer(), testSettings(), Known{Self: "si-1042"})
	require.NoError(t, err)
	require.NotEqual(t, va[0].Hash, vb[0].Hash, "the void reason is part of a void's hash")
}

func TestPlanInvoiceLongNotes(t *testing.T) {
	t.Parallel()
	inv := testInvoice()
	inv.Notes = strings.Repeat("n", 2500)
	inv.JobReference = "JOB-77"
	ops, err := PlanInvoice(inv, testCustomer(), testSettings(), invoiceKnown())
	require.NoError(t, err)
	notes := ops[0].SalesInvoice.Notes
	require.Equal(t, maxInvoiceNotes, len([]rune(notes)))
	require.True(t, strings.HasSuffix(notes, "\nJob reference: JOB-77"), "job reference survives the cut")
	require.Len(t, ops[0].Notes, 1)
	require.Contains(t, ops[0].Notes[0], "2000")
}

func TestStartDescription(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ qty, price, want string }{
		{"2", "12.50", "2 x Valve @ 12.50"},
		{"2.000", "12.5", "2 x Valve @ 12.50"},
		{"1.250", "8", "1.25 x Valve @ 8.00"},
		{"3", "0.125", "3 x Valve @ 0.125"},
		{"0.5", "-10.00", "0.5 x Valve @ -10.00"},
	} {
		require.Equal(t, tc.want, StartDescription("Valve", d(tc.qty), d(tc.price)))
	}
}

// jsonNumbers returns the raw JSON tokens of every value of key in js.
func jsonNumbers(js, key string) []string {
	re := regexp.MustCompile(`"` + regexp.QuoteMeta(key) + `":([^,}\]]+)`)
	var out []string
	for _, m := range re.FindAllStringSubmatch(js, -1) {
		out = append(out, m[1])
	}
	return out
}

// requireExactNumbers asserts that key's values in js are bare JSON numbers in plain notation
// equal to want, in order.
func requireExactNumbers(t *testing.T, js, key string, want ...string) {
	t.Helper()
	got := jsonNumbers(js, key)
	require.Len(t, got, len(want), "%s in %s", key, js)
	plain := regexp.MustCompile(`^-?[0-9]+(\.[0-9]+)?$`)
	for i, g := range got {
		require.Regexp(t, plain, g, "%s is not a plain JSON number", key)
		require.True(t, d(want[i]).Equal(d(g)), "%s: got %s, want %s", key, g, want[i])
	}
}

// TestRequestJSONHasExactNumbers checks that money, quantities and rates reach Sage's JSON as
// bare numbers with every digit, never through float64 and never as strings.
func TestRequestJSONHasExactNumbers(t *testing.T) {
	t.Parallel()
	inv := testInvoice()
	inv.Lines = []Line{
		{Description: "Pipe", Quantity: d("1.125"), UnitPrice: d("0.10"), VATRate: dp("20"), Kind: LineMaterials},
		{Description: "Big job", Quantity: d("1"), UnitPrice: d("9999999999.99"), VATRate: dp("20"), Kind: LineLabour},
	}
	ops, err := PlanInvoice(inv, cisCustomer(), testSettings(), invoiceKnown())
	require.NoError(t, err)
	js := mustJSON(t, map[string]any{"sales_invoice": ops[0].SalesInvoice})
	requireExactNumbers(t, js, "quantity", "1.125", "1")
	requireExactNumbers(t, js, "unit_price", "0.10", "9999999999.99")
	// 1.125 × 0.10 = 0.1125 → 0.11; VAT 0.022 → 0.02; 9999999999.99 × 20 % = 1999999999.998 → 2000000000.00
	// The invoice's totals come first in the JSON, then each line's.
	requireExactNumbers(t, js, "net_amount", "10000000000.10", "0.11", "9999999999.99")
	requireExactNumbers(t, js, "tax_amount", "2000000000.02", "0.02", "2000000000.00")
	requireExactNumbers(t, js, "total_amount", "12000000000.12", "0.13", "11999999999.99")
	requireExactNumbers(t, js, "withholding_tax_rate", "20")
	requireExactNumbers(t, js, "withholding_tax_amount", "2000000000.00")
	requireExactNumbers(t, js, "cis_applicable_amount", "9999999999.99")
	requireExactNumbers(t, js, "total_after_cis_deduction", "10000000000.12")

	ops, err = PlanPayment(Payment{ID: 1, InvoiceID: 1042, Amount: d("12345678901.23"), Method: "cash", PaidOn: *day("2026-12-01")},
		testSettings(), paymentKnown())
	require.NoError(t, err)
	js = mustJSON(t, map[string]any{"contact_payment": ops[0].ContactPayment})
	requireExactNumbers(t, js, "total_amount", "12345678901.23")
	requireExactNumbers(t, js, "amount", "12345678901.23")
}

func TestPlanInvoiceIssuedThenVoidedBeforeReachingSageIsCreatedThenVoided(t *testing.T) {
	inv := testInvoice()
	inv.Status, inv.VoidReason = StatusVoid, "Cancelled"
	ops, err := PlanInvoice(inv, testCustomer(), testSettings(), Known{Contact: "contact-17"})
	require.NoError(t, err)
	require.Len(t, ops, 2)
	require.Equal(t, CreateSalesInvoice, ops[0].Kind)
	require.NotEmpty(t, ops[0].SalesInvoice.IdempotencyID)
	require.Equal(t, VoidSalesInvoice, ops[1].Kind)
	require.Empty(t, ops[1].SageID, "filled from the create by the caller")
	require.Equal(t, "Cancelled", ops[1].VoidReason)
}
