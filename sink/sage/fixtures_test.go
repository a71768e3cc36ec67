package sage

import (
	"bytes"
	"encoding/json"
	"io/fs"
	"net/http"
	"path/filepath"
	"reflect"
	"regexp"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// decodeStrict decodes b into v (a pointer) as the client decodes replies (decodeReply), and
// fails the test on error or when encoding/json decodes b into anything else.
func decodeStrict(t *testing.T, b []byte, v any) {
	t.Helper()
	require.NoError(t, decodeReply(b, v))
	v1 := reflect.New(reflect.TypeOf(v).Elem()).Interface()
	require.NoError(t, json.Unmarshal(b, v1))
	require.Equal(t, v1, v, "decodeReply and encoding/json disagree")
}

// assertDecimal checks d holds exactly want, scale included.
func assertDecimal(t *testing.T, want string, d Decimal) {
	t.Helper()
	b, err := json.Marshal(d)
	require.NoError(t, err)
	assert.Equal(t, want, string(b))
}

// normalize decodes JSON into generic values where numbers and numeric strings both become
// the decimal's canonical string, so a request written with "55.55" equals one with 55.55.
func normalize(t *testing.T, b []byte) any {
	t.Helper()
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	var v any
	require.NoError(t, d.Decode(&v))
	var walk func(any) any
	walk = func(v any) any {
		switch x := v.(type) {
		case map[string]any:
			for k, e := range x {
				x[k] = walk(e)
			}
		case []any:
			for i, e := range x {
				x[i] = walk(e)
			}
		case json.Number:
			var dec Decimal
			require.NoError(t, dec.UnmarshalJSON([]byte(x)))
			return "num:" + dec.Decimal.String()
		case string:
			if moneyString.MatchString(x) {
				var dec Decimal
				require.NoError(t, dec.UnmarshalJSON([]byte(`"`+x+`"`)))
				return "num:" + dec.Decimal.String()
			}
		}
		return v
	}
	return walk(v)
}

// moneyString matches the strings Sage's examples use for amounts ("55.55", "-5").
var moneyString = regexp.MustCompile(`^-?[0-9]+(\.[0-9]+)?$`)

// roundTrip decodes a documented request into v (a wrapper struct), writes it back and checks
// the result says the same, money compared as exact decimals. It returns what was written.
func roundTrip(t *testing.T, b []byte, v any) []byte {
	t.Helper()
	decodeStrict(t, b, v)
	out, err := json.Marshal(v)
	require.NoError(t, err)
	assert.Equal(t, normalize(t, b), normalize(t, out))
	return out
}

// TestFixtures decodes every file under testdata; a fixture without a case here fails the test.
func TestFixtures(t *testing.T) {
	t.Parallel()
	cases := map[string]func(t *testing.T, b []byte){
		"recorded/bank_accounts.list.json": func(t *testing.T, b []byte) {
			var p Page[BankAccount]
			decodeStrict(t, b, &p)
			assert.Nil(t, p.Next)
			assert.Equal(t, 50, p.PerPage())
			require.Len(t, p.Items, 5)
			assert.Equal(t, "CHECKING", p.Items[0].BankAccountType.ID)
			assertDecimal(t, "-1250.40", p.Items[0].Balance)
			assertDecimal(t, "0.0", p.Items[1].Balance)
			assert.Equal(t, "Example Heating current", p.Items[0].BankAccountDetails.AccountName)
		},
		"recorded/businesses.list.json": func(t *testing.T, b []byte) {
			var p Page[Business]
			decodeStrict(t, b, &p)
			assert.Nil(t, p.Next)
			assert.Equal(t, 2147483647, p.PerPage())
			require.Len(t, p.Items, 3)
			assert.Equal(t, "39b9e435c6d1c0dece9bdde5cb8df769", p.Items[0].ID)
			assert.Equal(t, "Example Heating Ltd", p.Items[0].DisplayedAs)
		},
		"sandbox/contact.json": func(t *testing.T, b []byte) {
			var c Contact
			decodeStrict(t, b, &c)
			assert.Equal(t, "BM1903", c.Reference)
			require.NotNil(t, c.MainAddress)
			assert.Equal(t, "LS1 4AB", c.MainAddress.PostalCode)
		},
		"sandbox/contact_payment.json": func(t *testing.T, b []byte) {
			var p ContactPayment
			decodeStrict(t, b, &p)
			assertDecimal(t, "50.00", p.TotalAmount)
			require.Len(t, p.AllocatedArtefacts, 1)
			assert.Equal(t, "019e564ceb07b5e66776209bc42d5601", p.AllocatedArtefacts[0].Artefact.ID)
			assertDecimal(t, "50.00", p.AllocatedArtefacts[0].Amount)
		},
		"sandbox/sales_invoice.json": func(t *testing.T, b []byte) {
			var inv SalesInvoice
			decodeStrict(t, b, &inv)
			assert.Equal(t, "BM-1016", inv.InvoiceNumber)
			assertDecimal(t, "120.00", inv.TotalAmount)
			assertDecimal(t, "120.00", inv.OutstandingAmount)
			require.Len(t, inv.InvoiceLines, 1)
			assertDecimal(t, "1.00", inv.InvoiceLines[0].Quantity)
			assert.Equal(t, "GB_STANDARD", inv.InvoiceLines[0].TaxRate.ID)
		},
		"recorded/financial_settings.json": func(t *testing.T, b []byte) {
			var fs struct {
				BaseCurrency   Link     `json:"base_currency"`
				DefaultIRPF    Decimal  `json:"default_irpf_rate"`
				FlatRate       *Decimal `json:"flat_rate_tax_percentage"`
				TaxScheme      Link     `json:"tax_scheme"`
				MultiCurrency  bool     `json:"multi_currency_enabled"`
				YearEndDate    string   `json:"year_end_date"`
				AccountingType string   `json:"accounting_type"`
			}
			decodeStrict(t, b, &fs)
			assert.Equal(t, "GBP", fs.BaseCurrency.ID)
			assertDecimal(t, "0.0", fs.DefaultIRPF)
			assert.Nil(t, fs.FlatRate)
			assert.Equal(t, "NOT_REGISTERED", fs.TaxScheme.ID)
		},
		"recorded/products.list.json": func(t *testing.T, b []byte) {
			type product struct {
				ID          string  `json:"id"`
				CostPrice   Decimal `json:"cost_price"`
				SalesPrices []struct {
					Price Decimal `json:"price"`
				} `json:"sales_prices"`
				SalesTaxRate Link `json:"sales_tax_rate"`
			}
			var p Page[product]
			decodeStrict(t, b, &p)
			require.NotNil(t, p.Next)
			assert.Equal(t, "/products?page=2&items_per_page=50&attributes=all", *p.Next)
			assert.Equal(t, 50, p.PerPage())
			assert.Equal(t, 56, p.Total)
			require.NotEmpty(t, p.Items)
			assertDecimal(t, "10.0", p.Items[0].CostPrice)
			assertDecimal(t, "30.0", p.Items[0].SalesPrices[0].Price)
			assert.Equal(t, "GB_STANDARD", p.Items[0].SalesTaxRate.ID)
		},
		"recorded/sales_invoices.list.attributes_date.json": func(t *testing.T, b []byte) {
			var p Page[SalesInvoice]
			decodeStrict(t, b, &p)
			require.NotNil(t, p.Next)
			assert.Equal(t, 1, p.PerPage())
			require.Len(t, p.Items, 1)
			assert.Equal(t, "SI-1", p.Items[0].DisplayedAs)
			assert.Equal(t, "2015-02-19", p.Items[0].Date)
			assert.True(t, p.Items[0].TotalAmount.IsZero())
		},
		"documented/businesses_list_multi_business.json": func(t *testing.T, b []byte) {
			var p Page[Business]
			decodeStrict(t, b, &p)
			assert.Nil(t, p.Next)
			assert.Nil(t, p.Back)
			assert.Equal(t, 2147483647, p.PerPage())
			assert.Len(t, p.Items, 3)
		},
		"documented/pagination_sales_quotes_page2.json": func(t *testing.T, b []byte) {
			var p Page[Link]
			decodeStrict(t, b, &p)
			require.NotNil(t, p.Next)
			require.NotNil(t, p.Back)
			assert.Equal(t, "/sales_quotes?page=3&items_per_page=25", *p.Next)
			assert.Equal(t, 25, p.PerPage())
			assert.Equal(t, 2, p.Page)
			assert.Equal(t, "SQ-2", p.Items[0].DisplayedAs)
		},
		"documented/error_401_authorization_failure_access_denied.json":    errorFixture(401, "AuthorizationFailure", "Access denied.", ""),
		"documented/error_401_authorization_failure_no_subscription.json":  errorFixture(401, "AuthorizationFailure", "No active subscription. (MSE)", ""),
		"documented/error_403_multi_user_access_denied.json":               errorFixture(403, "MultiUserAccessDenied", "The current user is not allowed to access that resource with that method.", ""),
		"documented/error_422_record_invalid_field_required.json":          errorFixture(422, "RecordInvalid", "This field is required.", "line_items.tax_rate_id"),
		"documented/error_500_unexpected_error.json":                       errorFixture(500, "UnexpectedError", "An unexpected error occurred.", ""),
		"documented/oauth_token_error_invalid_grant.json":                  errorFixture(400, "invalid_grant", "", ""),
		"documented/oauth_token_response.json":                             func(t *testing.T, b []byte) { tokenFixture(t, b) },
		"documented/request_contact_create_customer.json":                  contactRequestFixture,
		"documented/request_contact_payment_clear_allocations_put.json":    paymentRequestFixture(`"allocated_artefacts":[]`),
		"documented/request_contact_payment_customer_refund.json":          paymentRequestFixture(`"total_amount":100.00`),
		"documented/request_contact_payment_full_allocation.json":          paymentRequestFixture(`"amount":55.55`),
		"documented/request_contact_payment_partial_allocation.json":       paymentRequestFixture(`"total_amount":99.99`),
		"documented/request_contact_payment_unallocated.json":              paymentRequestFixture(`"total_amount":33.33`),
		"documented/request_sales_invoice_gb_zero_with_product.json":       salesInvoiceRequestFixture,
		"documented/request_idempotent_create_address.json":                idempotentAddressFixture,
		"documented/request_contact_allocation_payment_on_account.json":    allocationFixture,
		"documented/request_other_payment_receipt_refund_gb_standard.json": otherPaymentFixture,
	}

	var files []string
	require.NoError(t, filepath.WalkDir("testdata", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || filepath.Ext(p) != ".json" {
			return err
		}
		rel, err := filepath.Rel("testdata", p)
		files = append(files, filepath.ToSlash(rel))
		return err
	}))
	require.NotEmpty(t, files)
	for _, name := range files {
		t.Run("ok - "+name, func(t *testing.T) {
			t.Parallel()
			check, ok := cases[name]
			require.True(t, ok, "fixture %s has no decoding case", name)
			check(t, fixture(t, name))
		})
	}
}

// errorFixture checks that an error body decodes into the expected item, as newAPIError sees it.
func errorFixture(status int, code, msg, source string) func(t *testing.T, b []byte) {
	return func(t *testing.T, b []byte) {
		e := newAPIError(http.MethodPost, "/contacts", &http.Response{StatusCode: status, Header: http.Header{}}, b, t0, nil)
		require.Len(t, e.Items, 1)
		assert.Equal(t, code, e.DataCode())
		assert.Equal(t, msg, e.Items[0].Message)
		assert.Equal(t, source, e.Items[0].Source)
		assert.Empty(t, e.Body)
		assert.Contains(t, e.Error(), code)
	}
}

func tokenFixture(t *testing.T, b []byte) {
	var tr tokenResponse
	require.NoError(t, json.Unmarshal(b, &tr)) // as token.go reads it: decodeReply has no json.Number
	assert.Equal(t, "bearer", tr.TokenType)
	n, err := tr.ExpiresIn.Int64()
	require.NoError(t, err)
	assert.Equal(t, int64(300), n)
	n, err = tr.RefreshTokenExpiresIn.Int64()
	require.NoError(t, err)
	assert.Equal(t, int64(2678400), n)
	assert.Equal(t, int64(31*24*time.Hour/time.Second), n)
}

func contactRequestFixture(t *testing.T, b []byte) {
	var v struct {
		Contact ContactRequest `json:"contact"`
	}
	roundTrip(t, b, &v)
	assert.Equal(t, []string{"CUSTOMER"}, v.Contact.ContactTypeIDs)
	assert.Equal(t, "US", v.Contact.MainAddress.CountryGroupID)
}

func paymentRequestFixture(want string) func(t *testing.T, b []byte) {
	return func(t *testing.T, b []byte) {
		var v struct {
			ContactPayment ContactPaymentRequest `json:"contact_payment"`
		}
		out := roundTrip(t, b, &v)
		assert.Contains(t, string(out), want)
		var sum Decimal
		for _, a := range v.ContactPayment.AllocatedArtefacts {
			sum = D(sum.Add(a.Amount.Decimal))
		}
		if v.ContactPayment.TotalAmount != nil {
			assert.True(t, v.ContactPayment.TotalAmount.GreaterThanOrEqual(sum.Decimal), "total below allocations")
		}
	}
}

func salesInvoiceRequestFixture(t *testing.T, b []byte) {
	var v struct {
		SalesInvoice SalesInvoiceRequest `json:"sales_invoice"`
	}
	decodeStrict(t, b, &v)
	si := v.SalesInvoice
	assert.Equal(t, "99d52ca7060341a698a664d1737663c5", si.ContactID)
	assert.Equal(t, "2021-07-15", si.Date)
	require.Len(t, si.InvoiceLines, 1)
	l := si.InvoiceLines[0]
	assert.Equal(t, "GB_ZERO", l.TaxRateID)
	assertDecimal(t, "10", l.UnitPrice)
	assertDecimal(t, "1", *l.Quantity)
	assertDecimal(t, "0", *l.TaxAmount)
	out, err := json.Marshal(v)
	require.NoError(t, err)
	assert.Contains(t, string(out), `"unit_price":10`)
	assert.Contains(t, string(out), `"tax_amount":0`)
}

func idempotentAddressFixture(t *testing.T, b []byte) {
	var v struct {
		Address struct {
			IdempotencyID string `json:"idempotency_id"`
		} `json:"address"`
	}
	decodeStrict(t, b, &v)
	assert.Len(t, v.Address.IdempotencyID, 32)
}

func allocationFixture(t *testing.T, b []byte) {
	var v struct {
		ContactAllocation struct {
			AllocatedArtefacts []AllocatedArtefactRequest `json:"allocated_artefacts"`
		} `json:"contact_allocation"`
	}
	roundTrip(t, b, &v)
	a := v.ContactAllocation.AllocatedArtefacts
	require.Len(t, a, 2)
	assert.True(t, a[0].Amount.Add(a[1].Amount.Decimal).IsZero(), "signed allocation amounts cancel")
}

func otherPaymentFixture(t *testing.T, b []byte) {
	var v struct {
		OtherPayment struct {
			TotalAmount  Decimal `json:"total_amount"`
			PaymentLines []struct {
				TaxRateID   string  `json:"tax_rate_id"`
				NetAmount   Decimal `json:"net_amount"`
				TaxAmount   Decimal `json:"tax_amount"`
				TotalAmount Decimal `json:"total_amount"`
			} `json:"payment_lines"`
		} `json:"other_payment"`
	}
	decodeStrict(t, b, &v)
	l := v.OtherPayment.PaymentLines[0]
	assert.Equal(t, "GB_STANDARD", l.TaxRateID)
	assert.True(t, l.NetAmount.Add(l.TaxAmount.Decimal).Equal(l.TotalAmount.Decimal), "net + VAT = total to the penny")
	assertDecimal(t, "100.00", v.OtherPayment.TotalAmount)
}
