package transform

import "testing"

// The per-change CPU cost of turning a decoded GES row into Sage operations: decoding the row
// (numeric, dates, line_items JSON) and planning the request body and its hash. The pipeline
// runs these once per change (twice for an invoice: its customer row too).

func BenchmarkDecodeCustomer(b *testing.B) {
	row := customerRow()
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		if _, err := DecodeCustomer(row); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkPlanCustomer(b *testing.B) {
	c, s := testCustomer(), testSettings()
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		if _, err := PlanCustomer(c, s, Known{Self: "contact-17"}); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecodeInvoice(b *testing.B) {
	row := invoiceRow()
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		if _, err := DecodeInvoice(row); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkPlanInvoice(b *testing.B) {
	inv, c, s := testInvoice(), testCustomer(), testSettings()
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		if _, err := PlanInvoice(inv, c, s, invoiceKnown()); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkPlanPayment(b *testing.B) {
	p, s := testPayment(), testSettings()
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		if _, err := PlanPayment(p, s, paymentKnown()); err != nil {
			b.Fatal(err)
		}
	}
}
