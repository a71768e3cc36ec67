package sage

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// FuzzDecodeReply checks that decodeReply, which decodes every 2xx reply, agrees with
// encoding/json on any input, for the reply types the client reads: both refuse it, or both
// decode it into equal values. Seeds are the sandbox's and Sage's recorded replies; the corpus
// runs with the tests, and `go test ./sink/sage -fuzz FuzzDecodeReply` searches further.
func FuzzDecodeReply(f *testing.F) {
	for _, dir := range []string{"sandbox", "recorded", "documented"} {
		files, err := filepath.Glob(filepath.Join("testdata", dir, "*.json"))
		require.NoError(f, err)
		for _, name := range files {
			b, err := os.ReadFile(name)
			require.NoError(f, err)
			f.Add(b)
		}
	}
	f.Add([]byte(`{"ID":"mixed case","TOTAL_AMOUNT":"1.50","total_amount":"2.50"}`))
	f.Add([]byte("{\"id\":\"\xff\xfe\",\"net_amount\":12}"))
	f.Add([]byte(`{"net_amount":"1\u00302.5","invoice_lines":[{"quantity":null}]}`))
	types := []func() any{
		func() any { return new(SalesInvoice) },
		func() any { return new(Contact) },
		func() any { return new(ContactPayment) },
		func() any { return new(Page[Contact]) },
		func() any { return new(Page[SalesInvoice]) },
		func() any { return new(Page[BankAccount]) },
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, newV := range types {
			got, want := newV(), newV()
			gotErr, wantErr := decodeReply(data, got), json.Unmarshal(data, want)
			if (gotErr == nil) != (wantErr == nil) {
				t.Fatalf("%T: decodeReply error %v, encoding/json error %v, for %q", got, gotErr, wantErr, data)
			}
			if gotErr == nil {
				require.Equal(t, want, got, "%T from %q", got, data)
			}
		}
	})
}
