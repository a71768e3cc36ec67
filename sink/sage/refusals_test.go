package sage_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/shopspring/decimal"
	"github.com/stretchr/testify/require"
	"golang.org/x/oauth2"

	"github.com/gessync/gessync/sink/sage"
	"github.com/gessync/gessync/sink/sagetest"
)

// memStore keeps rotated tokens in memory (sage.TokenStore).
type memStore struct{}

func (memStore) SaveToken(context.Context, int64, *oauth2.Token) error { return nil }

// world is a sandbox business and a real client session on it.
type world struct {
	sb   *sagetest.Server
	info sagetest.BusinessInfo
	c    *sage.Client
	s    *sage.Session
}

func newWorld(t *testing.T, tier string, opts sagetest.Options) *world {
	t.Helper()
	sb := sagetest.NewServer(opts)
	t.Cleanup(sb.Close)
	info := sb.CreateBusiness("Refusals Ltd", tier)
	access, refresh := sb.Mint(info.ID)
	c := sage.New(sage.Config{APIURL: sb.URL + "/v3.1", TokenURL: sb.URL + "/token", AuthURL: sb.URL + "/oauth2/auth/central",
		ClientID: "refusals", ClientSecret: "refusals", RedirectURL: "http://127.0.0.1:1/oauth/callback", RequestsPerMinute: 1 << 20},
		sage.WithBackoff(time.Millisecond, 5*time.Millisecond, time.Millisecond))
	s := c.Session(sage.Connection{CompanyID: 1, BusinessID: info.ID, Token: &oauth2.Token{AccessToken: access, RefreshToken: refresh, Expiry: time.Now().Add(4 * time.Minute)}}, memStore{})
	return &world{sb: sb, info: info, c: c, s: s}
}

func (w *world) contact(t *testing.T) string {
	t.Helper()
	c, err := w.s.CreateContact(context.Background(), sage.ContactRequest{Name: "Mrs Refusal", ContactTypeIDs: []string{"CUSTOMER"}})
	require.NoError(t, err)
	return c.ID
}

func (w *world) invoice(contact, number string, qty string) sage.SalesInvoiceRequest {
	return sage.SalesInvoiceRequest{ContactID: contact, Date: "2026-11-25", InvoiceNumber: number, Reference: number,
		InvoiceLines: []sage.InvoiceLineRequest{{Description: "Service", LedgerAccountID: w.info.SalesLedgerAccountID,
			Quantity: sage.DP(decimal.RequireFromString(qty)), UnitPrice: sage.D(decimal.RequireFromString("100.00")),
			TaxRateID: "GB_STANDARD", TaxAmount: sage.DP(decimal.RequireFromString(decimal.RequireFromString(qty).Mul(decimal.NewFromInt(20)).StringFixed(2)))}}}
}

func (w *world) receipt(contact, invoice, total, allocated string) sage.ContactPaymentRequest {
	return sage.ContactPaymentRequest{TransactionTypeID: "CUSTOMER_RECEIPT", ContactID: contact, BankAccountID: w.info.BankAccountID, Date: "2026-11-26",
		TotalAmount: sage.DP(decimal.RequireFromString(total)), AllocatedArtefacts: []sage.AllocatedArtefactRequest{{ArtefactID: invoice, Amount: sage.D(decimal.RequireFromString(allocated))}}}
}

// refused asserts err is a permanent refusal carrying Sage's words.
func refused(t *testing.T, err error, dataCode, message, source string) {
	t.Helper()
	var pe *sage.PermanentError
	require.True(t, errors.As(err, &pe), "want a *PermanentError, got %v", err)
	var api *sage.APIError
	require.True(t, errors.As(err, &api))
	require.True(t, sage.IsRefused(err), "a refusal: %v", err)
	require.Equal(t, dataCode, api.DataCode(), err.Error())
	if message != "" {
		require.True(t, api.HasMessage(message), "want %q in %v", message, err)
	}
	if source != "" {
		found := false
		for _, it := range api.Items {
			found = found || strings.Contains(it.Source, source)
		}
		require.True(t, found, "want $source %q in %v", source, err)
	}
}

func TestRefusalsThroughTheClient(t *testing.T) {
	ctx := context.Background()
	t.Run("error - an invoice number already used", func(t *testing.T) {
		w := newWorld(t, "standard", sagetest.Options{})
		c := w.contact(t)
		_, err := w.s.CreateSalesInvoice(ctx, w.invoice(c, "GES-1", "1"))
		require.NoError(t, err)
		_, err = w.s.CreateSalesInvoice(ctx, w.invoice(c, "GES-1", "1"))
		refused(t, err, "RecordInvalid", "Artefact number must be unique", "invoice_number")
	})
	t.Run("error - required fields", func(t *testing.T) {
		w := newWorld(t, "standard", sagetest.Options{})
		_, err := w.s.CreateContact(ctx, sage.ContactRequest{ContactTypeIDs: []string{"CUSTOMER"}})
		refused(t, err, "RecordInvalid", "This field is required.", "name")
		inv := w.invoice(w.contact(t), "GES-2", "1")
		inv.InvoiceLines[0].TaxAmount = nil
		_, err = w.s.CreateSalesInvoice(ctx, inv)
		refused(t, err, "RecordInvalid", "This field is required.", "tax_amount")
		inv = w.invoice(w.contact(t), "GES-3", "1")
		inv.InvoiceLines[0].Description = ""
		_, err = w.s.CreateSalesInvoice(ctx, inv)
		refused(t, err, "RecordInvalid", "", "description")
	})
	t.Run("error - references over Sage's lengths", func(t *testing.T) {
		w := newWorld(t, "standard", sagetest.Options{})
		_, err := w.s.CreateContact(ctx, sage.ContactRequest{Name: "Long Ref", ContactTypeIDs: []string{"CUSTOMER"}, Reference: "ELEVENCHARS"})
		refused(t, err, "RecordInvalid", "", "reference")
		inv := w.invoice(w.contact(t), "GES-4", "1")
		inv.Reference = strings.Repeat("R", 26)
		_, err = w.s.CreateSalesInvoice(ctx, inv)
		refused(t, err, "RecordInvalid", "", "reference")
	})
	t.Run("error - editing or voiding an invoice with receipts allocated", func(t *testing.T) {
		w := newWorld(t, "standard", sagetest.Options{})
		c := w.contact(t)
		inv, err := w.s.CreateSalesInvoice(ctx, w.invoice(c, "GES-5", "1"))
		require.NoError(t, err)
		_, err = w.s.CreateContactPayment(ctx, w.receipt(c, inv.ID, "50.00", "50.00"))
		require.NoError(t, err)
		_, err = w.s.UpdateSalesInvoice(ctx, inv.ID, sage.SalesInvoiceRequest{Notes: "changed"})
		refused(t, err, "RecordInvalid", "You must unallocate credit notes or receipts before editing this invoice", "")
		_, err = w.s.VoidSalesInvoice(ctx, inv.ID, "cancelled")
		refused(t, err, "RecordInvalid", "unallocate", "")
	})
	t.Run("error - allocating more than is outstanding", func(t *testing.T) {
		w := newWorld(t, "standard", sagetest.Options{})
		c := w.contact(t)
		inv, err := w.s.CreateSalesInvoice(ctx, w.invoice(c, "GES-6", "1"))
		require.NoError(t, err)
		_, err = w.s.CreateContactPayment(ctx, w.receipt(c, inv.ID, "200.00", "200.00"))
		refused(t, err, "RecordInvalid", "outstanding", "")
	})
	t.Run("error - Accounting Start: quantities and payments on account", func(t *testing.T) {
		w := newWorld(t, "start", sagetest.Options{})
		c := w.contact(t)
		_, err := w.s.CreateSalesInvoice(ctx, w.invoice(c, "GES-7", "2"))
		refused(t, err, "RecordInvalid", "", "quantity")
		inv, err := w.s.CreateSalesInvoice(ctx, w.invoice(c, "GES-8", "1"))
		require.NoError(t, err)
		_, err = w.s.CreateContactPayment(ctx, w.receipt(c, inv.ID, "130.00", "120.00"))
		refused(t, err, "RecordInvalid", "", "")
	})
	t.Run("error - a lapsed subscription loses the connection; a read-only user is forbidden", func(t *testing.T) {
		w := newWorld(t, "standard", sagetest.Options{})
		w.sb.SetFaults(sagetest.Faults{Businesses: map[string]sagetest.BusinessFaults{w.info.ID: {ReadOnly: true}}})
		_, err := w.s.CreateContact(ctx, sage.ContactRequest{Name: "X", ContactTypeIDs: []string{"CUSTOMER"}})
		refused(t, err, "MultiUserAccessDenied", "", "")
		w.sb.SetFaults(sagetest.Faults{Businesses: map[string]sagetest.BusinessFaults{w.info.ID: {SubscriptionLapsed: true}}})
		_, err = w.s.TaxRates(ctx)
		require.True(t, sage.IsRetryable(err), "the company's changes wait: %v", err)
		require.False(t, sage.IsRefused(err), "retryable: not a refusal")
		require.ErrorIs(t, err, sage.ErrConnectionLost)
	})
	t.Run("error - an unknown id is not found", func(t *testing.T) {
		w := newWorld(t, "standard", sagetest.Options{})
		_, err := w.s.GetSalesInvoice(ctx, strings.Repeat("0", 32))
		require.True(t, sage.IsNotFound(err), "%v", err)
	})
	t.Run("error - 500s are retryable", func(t *testing.T) {
		w := newWorld(t, "standard", sagetest.Options{})
		w.sb.SetFaults(sagetest.Faults{FaultSet: sagetest.FaultSet{FailAll: true}})
		_, err := w.s.TaxRates(ctx)
		require.True(t, sage.IsRetryable(err), "%v", err)
		var api *sage.APIError
		require.True(t, errors.As(err, &api))
		require.Equal(t, "UnexpectedError", api.DataCode())
	})
	t.Run("error - 429 past the rate limit, with Retry-After", func(t *testing.T) {
		w := newWorld(t, "standard", sagetest.Options{RateLimit: 3})
		var err error
		for i := 0; i < 5 && err == nil; i++ {
			_, err = w.s.TaxRates(ctx)
		}
		var re *sage.RetryableError
		require.True(t, errors.As(err, &re), "%v", err)
		require.Greater(t, re.RetryAfter, time.Duration(0), "Retry-After honoured")
	})
	t.Run("error - OAuth codes are single use and refresh tokens rotate", func(t *testing.T) {
		w := newWorld(t, "standard", sagetest.Options{})
		hc := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
		resp, err := hc.Get(w.c.AuthCodeURL("st4te") + "&business_id=" + w.info.ID)
		require.NoError(t, err)
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		loc, err := url.Parse(resp.Header.Get("Location"))
		require.NoError(t, err)
		code := loc.Query().Get("code")
		require.NotEmpty(t, code)
		tok, err := w.c.Exchange(ctx, code)
		require.NoError(t, err)
		_, err = w.c.Exchange(ctx, code)
		require.Error(t, err, "a code is single use")
		s := w.c.Session(sage.Connection{CompanyID: 2, BusinessID: w.info.ID, Token: tok}, memStore{})
		require.NoError(t, s.RefreshIfDue(ctx, 32*24*time.Hour), "refresh")
		old := w.c.Session(sage.Connection{CompanyID: 3, BusinessID: w.info.ID, Token: &oauth2.Token{RefreshToken: tok.RefreshToken}}, memStore{})
		_, err = old.TaxRates(ctx)
		require.ErrorIs(t, err, sage.ErrConnectionLost, "the rotated-out refresh token answers invalid_grant")
	})
	t.Run("ok - a repeated idempotency_id returns the first result", func(t *testing.T) {
		w := newWorld(t, "standard", sagetest.Options{})
		req := sage.ContactRequest{IdempotencyID: fmt.Sprintf("%032d", 7), Name: "Once", ContactTypeIDs: []string{"CUSTOMER"}}
		a, err := w.s.CreateContact(ctx, req)
		require.NoError(t, err)
		b, err := w.s.CreateContact(ctx, req)
		require.NoError(t, err)
		require.Equal(t, a.ID, b.ID)
		require.Len(t, w.sb.Dump().Business(w.info.ID).Contacts, 1)
	})
}
