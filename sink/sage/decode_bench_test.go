package sage

import (
	"os"
	"path/filepath"
	"testing"
)

// BenchmarkDecodeReply measures decoding the replies the daemon reads most, as the sandbox
// sends them (testdata/sandbox: a sales invoice, a created contact, a created contact payment),
// into the types the client decodes them into, as the client does (decodeReply).
func BenchmarkDecodeReply(b *testing.B) {
	for _, c := range []struct {
		file string
		into func() any
	}{
		{"sales_invoice.json", func() any { return new(SalesInvoice) }},
		{"contact.json", func() any { return new(Contact) }},
		{"contact_payment.json", func() any { return new(ContactPayment) }},
	} {
		data, err := os.ReadFile(filepath.Join("testdata", "sandbox", c.file))
		if err != nil {
			b.Fatal(err)
		}
		b.Run(c.file, func(b *testing.B) {
			b.SetBytes(int64(len(data)))
			b.ReportAllocs()
			for b.Loop() {
				if err := decodeReply(data, c.into()); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
