package transform

import (
	"encoding/json"
	"errors"
	"testing"

	"github.com/shopspring/decimal"

	"github.com/gessync/gessync/cdc"
	"github.com/gessync/gessync/sink/sage"
)

// fuzzSeeds are realistic line_items values, plus some broken ones.
var fuzzSeeds = []string{
	testLineItems,
	`[]`,
	`[{"description":"Annual boiler service","quantity":1,"unit_price":85.00,"discount":0.00,"vat_rate":20,"kind":"labour"}]`,
	`[{"description":"Labour (hours)","quantity":2.5,"unit_price":45.00,"vat_rate":20,"kind":"labour"},{"description":"15mm copper pipe (m)","quantity":3.125,"unit_price":4.99,"discount":1.50,"vat_rate":20,"kind":"materials"},{"description":"Gas Safe certificate","quantity":1,"unit_price":60,"vat_rate":null,"kind":"other"}]`,
	`[{"description":"Heat pump install","quantity":1,"unit_price":7500.00,"vat_rate":0,"kind":"labour"},{"description":"Insulation","quantity":1,"unit_price":300.00,"vat_rate":5,"kind":"materials"}]`,
	`[{"description":"Credit: call-out waived","quantity":1,"unit_price":-65.00,"vat_rate":20}]`,
	`[{"description":"x","quantity":"1","unit_price":"12.50"}]`,
	`[{"description":"x","quantity":1e3,"unit_price":1E-2}]`,
	`[{"description":"","quantity":0,"unit_price":1}]`,
	`[{"description":"x","quantity":1,"unit_price":1,"vat_rate":17.5,"kind":"parts"}]`,
	`{"description":"x"}`,
	`null`,
	`[null]`,
	`[{"quantity":[1]}]`,
	`[{"description":"x","quantity":1,"unit_price":99999999999999999999}]`,
}

// FuzzDecodeInvoice feeds arbitrary column texts to DecodeInvoice: it must never panic, and any
// error is a *ColumnError or an *InvalidError.
func FuzzDecodeInvoice(f *testing.F) {
	for _, s := range fuzzSeeds {
		f.Add(s, "issued", "2026-11-29", "110.00", "f", "2026-11-29 14:00:00+00", false)
	}
	f.Add(testLineItems, "draft", "", "0", "t", "2026-11-29 14:00:00.5-03:30", true)
	f.Add(`[{"description":"x","quantity":1,"unit_price":1}]`, "void", "2026-02-30", "NaN", "true", "infinity", false)
	f.Add(`[`, "issued", "0000-00-00", "1e999999", "x", "2026-11-29T14:00:00Z", false)
	f.Fuzz(func(t *testing.T, lineItems, status, issueDate, subtotal, rc, updatedAt string, nullIssue bool) {
		row := with(invoiceRow(), "line_items", lineItems, "status", status, "issue_date", issueDate,
			"subtotal", subtotal, "vat_reverse_charge", rc, "updated_at", updatedAt)
		if nullIssue {
			row["issue_date"] = cdc.Value{Null: true}
		}
		inv, err := DecodeInvoice(row)
		if err != nil {
			var ce *ColumnError
			var ie *InvalidError
			if !errors.As(err, &ce) && !errors.As(err, &ie) {
				t.Fatalf("untyped error %T: %v", err, err)
			}
			if ie != nil && (ie.Field == "" || ie.Reason == "") {
				t.Fatalf("InvalidError without field or reason: %#v", ie)
			}
			return
		}
		if inv.ID != 1042 || inv.Status != status {
			t.Fatalf("decoded %d %q", inv.ID, inv.Status)
		}
		if !inv.UpdatedAt.IsZero() && inv.UpdatedAt.Location().String() != "UTC" {
			t.Fatalf("updated_at not UTC: %s", inv.UpdatedAt)
		}
		for i, l := range inv.Lines {
			if l.Kind == "" {
				t.Fatalf("line %d has no kind", i+1)
			}
		}
	})
}

// FuzzPlanInvoice plans invoices built from arbitrary line_items, flags and figures: it must
// never panic, errors are typed, and a planned invoice's figures add up by schema.sql's formula.
func FuzzPlanInvoice(f *testing.F) {
	for i, s := range fuzzSeeds {
		f.Add(s, uint8(i), "20", "110.00", "GES-1042", "Boiler in loft", "PO 7781")
	}
	f.Add(testLineItems, uint8(0xff), "30.00", "0", "GES-2026-NORTH-LEEDS-000001", "", "")
	f.Add(testLineItems, uint8(0), "", "-1", "", "\n\n", "Unit 4,\nMill Lane")
	f.Fuzz(func(t *testing.T, lineItems string, flags uint8, cisRate, stored, number, notes, job string) {
		lines, err := DecodeLineItems(lineItems)
		if err != nil {
			return
		}
		inv := testInvoice()
		inv.Lines = lines
		inv.InvoiceNumber, inv.Notes, inv.JobReference = number, notes, job
		inv.Status = []string{StatusIssued, StatusIssued, StatusDraft, StatusVoid}[flags&3]
		inv.VATReverseCharge = flags&4 != 0
		if v, err := decimal.NewFromString(stored); err == nil && v.Exponent() > -20 && v.Exponent() < 20 {
			inv.Subtotal, inv.CISDeduction = v, v
		}
		cust := testCustomer()
		if flags&8 != 0 {
			cust.CISRegistered = true
			if v, err := parseDecimal(cisRate); err == nil {
				cust.CISRate = &v
			}
		}
		s := testSettings()
		s.Tier = []Tier{TierStandard, TierStart, TierPlus, ""}[(flags>>4)&3]
		k := invoiceKnown()
		if flags&64 != 0 {
			k.Self = "si-1042"
		}
		if flags&128 != 0 {
			k.Contact = ""
		}

		ops, err := PlanInvoice(inv, cust, s, k)
		if err != nil {
			var ie *InvalidError
			var mp *MissingParentError
			if !errors.As(err, &ie) && !errors.As(err, &mp) {
				t.Fatalf("untyped error %T: %v", err, err)
			}
			if ie != nil && (ie.Reason == "" || ie.Action == "") {
				t.Fatalf("InvalidError without reason or action: %#v", ie)
			}
			return
		}
		for _, op := range ops {
			if op.Hash == "" {
				t.Fatal("op without hash")
			}
			if op.Kind == VoidSalesInvoice {
				if op.VoidReason == "" || len([]rune(op.VoidReason)) > maxVoidReason {
					t.Fatalf("void reason %q", op.VoidReason)
				}
				continue
			}
			body := op.SalesInvoice
			if body == nil {
				t.Fatalf("%s without body", op.Kind)
			}
			if _, err := json.Marshal(body); err != nil {
				t.Fatal(err)
			}
			if len([]rune(body.Notes)) > maxInvoiceNotes || len([]rune(body.Reference)) > maxInvoiceReference {
				t.Fatalf("notes or reference over Sage's limits")
			}
			net, vat, total := Totals(inv)
			sum := func(get func(sage.InvoiceLineRequest) *sage.Decimal) decimal.Decimal {
				acc := decimal.Zero
				for _, l := range body.InvoiceLines {
					acc = acc.Add(get(l).Decimal)
				}
				return acc
			}
			if !sum(func(l sage.InvoiceLineRequest) *sage.Decimal { return l.NetAmount }).Equal(net) || !body.NetAmount.Equal(net) {
				t.Fatalf("net %s, want %s", body.NetAmount, net)
			}
			if !sum(func(l sage.InvoiceLineRequest) *sage.Decimal { return l.TaxAmount }).Equal(vat) || !body.TaxAmount.Equal(vat) {
				t.Fatalf("VAT %s, want %s", body.TaxAmount, vat)
			}
			if !sum(func(l sage.InvoiceLineRequest) *sage.Decimal { return l.TotalAmount }).Equal(total) || !body.TotalAmount.Equal(total) {
				t.Fatalf("total %s, want %s", body.TotalAmount, total)
			}
			if inv.VATReverseCharge && !vat.IsZero() {
				t.Fatal("VAT under the reverse charge")
			}
		}
	})
}
