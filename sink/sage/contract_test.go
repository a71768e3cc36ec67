package sage_test

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"net/url"
	"os"
	"testing"
	"time"

	"github.com/shopspring/decimal"
	"github.com/stretchr/testify/require"
	"golang.org/x/oauth2"

	"github.com/gessync/gessync/sink/sage"
	"github.com/gessync/gessync/sink/sagetest"
)

// contractSession is a session on the real Sage Accounting when SAGE_CLIENT_ID,
// SAGE_CLIENT_SECRET, SAGE_REFRESH_TOKEN and SAGE_BUSINESS_ID are set (a trial business: the
// contract creates records in it), and on the sandbox otherwise.
func contractSession(t *testing.T) (*sage.Session, string) {
	t.Helper()
	id, secret, refresh, business := os.Getenv("SAGE_CLIENT_ID"), os.Getenv("SAGE_CLIENT_SECRET"), os.Getenv("SAGE_REFRESH_TOKEN"), os.Getenv("SAGE_BUSINESS_ID")
	if id != "" && secret != "" && refresh != "" && business != "" {
		c := sage.New(sage.Config{ClientID: id, ClientSecret: secret, APIURL: os.Getenv("SAGE_API_URL"), TokenURL: os.Getenv("SAGE_TOKEN_URL")})
		return c.Session(sage.Connection{CompanyID: 1, BusinessID: business, Token: &oauth2.Token{RefreshToken: refresh}}, printStore{t}), "real Sage"
	}
	sb := sagetest.NewServer(sagetest.Options{})
	t.Cleanup(sb.Close)
	info := sb.CreateBusiness("Contract Test Ltd", "standard")
	access, refreshTok := sb.Mint(info.ID)
	c := sage.New(sage.Config{APIURL: sb.URL + "/v3.1", TokenURL: sb.URL + "/token", ClientID: "contract", ClientSecret: "contract"})
	return c.Session(sage.Connection{CompanyID: 1, BusinessID: info.ID, Token: &oauth2.Token{AccessToken: access, RefreshToken: refreshTok, Expiry: time.Now().Add(4 * time.Minute)}}, printStore{t}), "sandbox"
}

// printStore keeps rotated tokens in the test's memory only: with real Sage, the rotated
// refresh token is needed for the next run, so the test says where to find it (never its value).
type printStore struct{ t *testing.T }

func (p printStore) SaveToken(context.Context, int64, *oauth2.Token) error {
	p.t.Log("token rotated: the previous SAGE_REFRESH_TOKEN is retired; take the new one from your app before the next run")
	return nil
}

// TestContract checks gessync's assumptions about Sage Accounting v3.1, one by one.
func TestContract(t *testing.T) {
	s, against := contractSession(t)
	t.Logf("contract against %s", against)
	ctx := context.Background()
	run := fmt.Sprintf("%d", time.Now().UnixNano()%1e9)

	rates, err := s.TaxRates(ctx)
	require.NoError(t, err)
	byID := map[string]sage.TaxRate{}
	for _, r := range rates {
		byID[r.ID] = r
	}
	require.Equal(t, "20", byID["GB_STANDARD"].Percentage.String(), "GB_STANDARD is 20 %")
	require.Equal(t, "5", byID["GB_LOWER"].Percentage.String(), "GB_LOWER is 5 %")
	require.Contains(t, byID, "GB_ZERO")
	ledgers, err := s.LedgerAccounts(ctx)
	require.NoError(t, err)
	var sales string
	for _, l := range ledgers {
		if l.Nominalcode == 4000 {
			sales = l.ID
		}
	}
	require.NotEmpty(t, sales, "a sales ledger account with nominal code 4000")
	banks, err := s.BankAccounts(ctx)
	require.NoError(t, err)
	require.NotEmpty(t, banks)

	// Idempotency: the same create twice gives one record.
	req := sage.ContactRequest{IdempotencyID: fmt.Sprintf("%x", sha256.Sum256([]byte("contract "+run)))[:32], Name: "Contract Customer " + run, ContactTypeIDs: []string{"CUSTOMER"}}
	c1, err := s.CreateContact(ctx, req)
	require.NoError(t, err)
	c2, err := s.CreateContact(ctx, req)
	require.NoError(t, err)
	require.Equal(t, c1.ID, c2.ID, "a repeated idempotency_id returns the first result")

	// A client-set invoice number is honoured; a second use of it is refused.
	net := decimal.RequireFromString("100.00")
	inv := sage.SalesInvoiceRequest{ContactID: c1.ID, Date: "2026-11-25", InvoiceNumber: "CT-" + run, Reference: "CT-" + run,
		InvoiceLines: []sage.InvoiceLineRequest{{Description: "Contract line", LedgerAccountID: sales, Quantity: sage.DP(decimal.NewFromInt(1)),
			UnitPrice: sage.D(net), TaxRateID: "GB_STANDARD", TaxAmount: sage.DP(decimal.RequireFromString("20.00"))}}}
	si, err := s.CreateSalesInvoice(ctx, inv)
	require.NoError(t, err)
	require.Equal(t, "CT-"+run, si.InvoiceNumber)
	require.Equal(t, "120.00", si.TotalAmount.StringFixed(2), "Sage keeps the tax_amount sent")
	_, err = s.CreateSalesInvoice(ctx, inv)
	var pe *sage.PermanentError
	require.True(t, errors.As(err, &pe), "a duplicate invoice number is permanent: %v", err)
	var api *sage.APIError
	require.True(t, errors.As(err, &api))
	require.Equal(t, "RecordInvalid", api.DataCode())

	// A receipt allocated to the invoice reduces what is outstanding.
	pay, err := s.CreateContactPayment(ctx, sage.ContactPaymentRequest{TransactionTypeID: "CUSTOMER_RECEIPT", ContactID: c1.ID, BankAccountID: banks[0].ID,
		Date: "2026-11-26", TotalAmount: sage.DP(decimal.RequireFromString("50.00")),
		AllocatedArtefacts: []sage.AllocatedArtefactRequest{{ArtefactID: si.ID, Amount: sage.D(decimal.RequireFromString("50.00"))}}})
	require.NoError(t, err)
	got, err := s.GetSalesInvoice(ctx, si.ID)
	require.NoError(t, err)
	require.Equal(t, "70.00", got.OutstandingAmount.StringFixed(2))

	// Editing an invoice with receipts allocated is refused until they are unallocated.
	_, err = s.UpdateSalesInvoice(ctx, si.ID, sage.SalesInvoiceRequest{Notes: "edited"})
	require.True(t, errors.As(err, &api) && api.HasMessage("unallocate"), "edit with allocations: %v", err)
	_, err = s.UpdateContactPayment(ctx, pay.ID, sage.ContactPaymentRequest{AllocatedArtefacts: []sage.AllocatedArtefactRequest{}})
	require.NoError(t, err, "clearing allocations with allocated_artefacts: []")
	voided, err := s.VoidSalesInvoice(ctx, si.ID, "Contract test")
	require.NoError(t, err)
	require.Equal(t, "VOID", voided.Status.ID)

	// Lists page through $next and filter.
	found, err := s.ListContacts(ctx, url.Values{"search": {"Contract Customer " + run}})
	require.NoError(t, err)
	require.Len(t, found, 1)
	require.NoError(t, s.DeleteContactPayment(ctx, pay.ID))
}
