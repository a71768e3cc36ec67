package transform

import (
	"crypto/sha256"
	"encoding/hex"
	"regexp"
	"testing"
	"time"

	"github.com/shopspring/decimal"
	"github.com/stretchr/testify/require"

	"github.com/gessync/gessync/sink/sage"
)

func wantPaymentBody() sage.ContactPaymentRequest {
	return sage.ContactPaymentRequest{
		IdempotencyID:      IdempotencyID(testSettings().BusinessID, Record{Table: "payments", ID: 501}),
		TransactionTypeID:  "CUSTOMER_RECEIPT",
		ContactID:          "contact-17",
		BankAccountID:      "bank-current",
		PaymentMethodID:    "CREDIT_DEBIT",
		Date:               "2026-12-01",
		TotalAmount:        sdp("132.00"),
		Reference:          "AUTH 884213",
		AllocatedArtefacts: []sage.AllocatedArtefactRequest{{ArtefactID: "si-1042", Amount: sd("132.00")}},
	}
}

func TestPlanPayment(t *testing.T) {
	t.Parallel()
	rec := Record{Table: "payments", ID: 501}
	outstanding := func(s string) *decimal.Decimal { return dp(s) }
	tests := []struct {
		name      string
		pay       func(*Payment)
		settings  func(*Settings)
		known     func(*Known)
		wantKind  Kind
		want      func(*sage.ContactPaymentRequest)
		wantNotes []string
		wantField string
		wantMsg   []string
		wantErr   error
	}{
		{name: "ok - create a card receipt allocated to its invoice", wantKind: CreateContactPayment},
		{
			name: "ok - update", known: func(k *Known) { k.Self = "cp-501" }, wantKind: UpdateContactPayment,
			want: func(b *sage.ContactPaymentRequest) { b.IdempotencyID = "" },
		},
		{name: "ok - cash", pay: func(p *Payment) { p.Method = "cash" }, wantKind: CreateContactPayment, want: func(b *sage.ContactPaymentRequest) { b.PaymentMethodID = "CASH" }},
		{name: "ok - bank transfer", pay: func(p *Payment) { p.Method = "bank_transfer" }, wantKind: CreateContactPayment, want: func(b *sage.ContactPaymentRequest) { b.PaymentMethodID = "BANK_TRANSFER" }},
		{name: "ok - cheque", pay: func(p *Payment) { p.Method = "cheque" }, wantKind: CreateContactPayment, want: func(b *sage.ContactPaymentRequest) { b.PaymentMethodID = "CHECK" }},
		{name: "ok - other", pay: func(p *Payment) { p.Method = "other" }, wantKind: CreateContactPayment, want: func(b *sage.ContactPaymentRequest) { b.PaymentMethodID = "ALTERNATIVE_PAYMENT" }},
		{
			name: "ok - unknown method is an alternative payment with a note", pay: func(p *Payment) { p.Method = "crypto" },
			wantKind: CreateContactPayment, want: func(b *sage.ContactPaymentRequest) { b.PaymentMethodID = "ALTERNATIVE_PAYMENT" },
			wantNotes: []string{`"crypto"`},
		},
		{
			name: "ok - no reference", pay: func(p *Payment) { p.Reference = "" }, wantKind: CreateContactPayment,
			want: func(b *sage.ContactPaymentRequest) { b.Reference = "" },
		},
		{
			name: "ok - reference cut to 25 characters with a note", pay: func(p *Payment) { p.Reference = "BACS SMITH J INV GES-1042 BOILER" },
			wantKind: CreateContactPayment, want: func(b *sage.ContactPaymentRequest) { b.Reference = "BACS SMITH J INV GES-1042" },
			wantNotes: []string{"25 characters"},
		},
		{
			name: "ok - part payment is allocated in full", pay: func(p *Payment) { p.Amount = d("50.00") },
			known: func(k *Known) { k.Outstanding = outstanding("132.00") }, wantKind: CreateContactPayment,
			want: func(b *sage.ContactPaymentRequest) {
				b.TotalAmount = sdp("50.00")
				b.AllocatedArtefacts[0].Amount = sd("50.00")
			},
		},
		{
			name: "ok - exact payment of what is outstanding", known: func(k *Known) { k.Outstanding = outstanding("132.00") },
			wantKind: CreateContactPayment,
		},
		{
			name: "ok - overpayment on Standard: excess stays on account", pay: func(p *Payment) { p.Amount = d("150.00") },
			known: func(k *Known) { k.Outstanding = outstanding("132.00") }, wantKind: CreateContactPayment,
			want: func(b *sage.ContactPaymentRequest) {
				b.TotalAmount = sdp("150.00")
				b.AllocatedArtefacts[0].Amount = sd("132.00")
			},
			wantNotes: []string{"£18.00 more than was left to pay on the invoice (£132.00); Sage keeps the excess of £18.00 as a payment on account"},
		},
		{
			name: "ok - overpayment on Plus of an invoice already paid: all on account", pay: func(p *Payment) { p.Amount = d("20.00") },
			settings: func(s *Settings) { s.Tier = TierPlus },
			known:    func(k *Known) { k.Outstanding = outstanding("0.00") }, wantKind: CreateContactPayment,
			want: func(b *sage.ContactPaymentRequest) {
				b.TotalAmount = sdp("20.00")
				b.AllocatedArtefacts = []sage.AllocatedArtefactRequest{}
			},
			wantNotes: []string{"payment on account"},
		},
		{
			name: "ok - update of an overpayment clears an allocation that no longer fits", pay: func(p *Payment) { p.Amount = d("20.00") },
			known:    func(k *Known) { k.Self = "cp-501"; k.Outstanding = outstanding("-5.00") },
			wantKind: UpdateContactPayment,
			want: func(b *sage.ContactPaymentRequest) {
				b.IdempotencyID = ""
				b.TotalAmount = sdp("20.00")
				b.AllocatedArtefacts = []sage.AllocatedArtefactRequest{}
			},
			wantNotes: []string{"payment on account"},
		},
		{
			name: "ok - overpayment on Start: only what is outstanding is sent", pay: func(p *Payment) { p.Amount = d("150.00") },
			settings: func(s *Settings) { s.Tier = TierStart },
			known:    func(k *Known) { k.Outstanding = outstanding("132.00") }, wantKind: CreateContactPayment,
			want: func(b *sage.ContactPaymentRequest) {
				b.TotalAmount = sdp("132.00")
				b.AllocatedArtefacts[0].Amount = sd("132.00")
			},
			wantNotes: []string{"the excess of £18.00 must be recorded by hand in Sage"},
		},
		{
			name: "ok - unknown outstanding allocates everything", pay: func(p *Payment) { p.Amount = d("150.00") },
			settings: func(s *Settings) { s.Tier = TierStart }, wantKind: CreateContactPayment,
			want: func(b *sage.ContactPaymentRequest) {
				b.TotalAmount = sdp("150.00")
				b.AllocatedArtefacts[0].Amount = sd("150.00")
			},
		},
		{
			name: "error - Start payment of an invoice already paid", settings: func(s *Settings) { s.Tier = TierStart },
			known: func(k *Known) { k.Outstanding = outstanding("0") }, wantField: "amount", wantMsg: []string{"by hand", "£132.00"},
		},
		{name: "error - invoice not in Sage", known: func(k *Known) { k.SalesInvoice = "" }, wantErr: &MissingParentError{Record: rec, Parent: Record{Table: "invoices", ID: 1042}}},
		{name: "error - contact not known", known: func(k *Known) { k.Contact = "" }, wantErr: &MissingParentError{Record: rec, Parent: Record{Table: "invoices", ID: 1042}}},
		{name: "error - no bank account chosen", settings: func(s *Settings) { s.BankAccountID = "" }, wantField: "bank_account", wantMsg: []string{"Choose a bank account"}},
		{name: "error - zero amount", pay: func(p *Payment) { p.Amount = d("0") }, wantField: "amount"},
		{name: "error - no date", pay: func(p *Payment) { p.PaidOn = time.Time{} }, wantField: "paid_on"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			p := testPayment()
			if tc.pay != nil {
				tc.pay(&p)
			}
			s := testSettings()
			if tc.settings != nil {
				tc.settings(&s)
			}
			k := paymentKnown()
			if tc.known != nil {
				tc.known(&k)
			}
			ops, err := PlanPayment(p, s, k)
			switch {
			case tc.wantErr != nil:
				require.Equal(t, tc.wantErr, err)
				return
			case tc.wantField != "":
				ie := requireInvalid(t, err, tc.wantField)
				require.Equal(t, rec, ie.Record)
				for _, m := range tc.wantMsg {
					require.Contains(t, ie.Reason+" "+ie.Action, m)
				}
				return
			}
			require.NoError(t, err)
			require.Len(t, ops, 1)
			op := ops[0]
			require.Equal(t, tc.wantKind, op.Kind)
			require.Equal(t, rec, op.Record)
			require.Equal(t, k.Self, op.SageID)
			require.NotEmpty(t, op.Hash)
			require.Len(t, op.Notes, len(tc.wantNotes), "notes: %q", op.Notes)
			for i, n := range tc.wantNotes {
				require.Contains(t, op.Notes[i], n)
			}
			want := wantPaymentBody()
			if tc.want != nil {
				tc.want(&want)
			}
			requireSameJSON(t, want, *op.ContactPayment)
			// Sage refuses a total below what is allocated.
			alloc := decimal.Zero
			for _, a := range op.ContactPayment.AllocatedArtefacts {
				alloc = alloc.Add(a.Amount.Decimal)
			}
			require.True(t, op.ContactPayment.TotalAmount.GreaterThanOrEqual(alloc))
			if s.Tier == TierStart {
				require.True(t, op.ContactPayment.TotalAmount.Equal(alloc), "Start has no payments on account")
			}
		})
	}
}

func TestPlanPaymentClearsAllocationInJSON(t *testing.T) {
	t.Parallel()
	p := testPayment()
	ops, err := PlanPayment(p, testSettings(), Known{Self: "cp-501", Contact: "contact-17", SalesInvoice: "si-1042", Outstanding: dp("0")})
	require.NoError(t, err)
	require.Contains(t, mustJSON(t, ops[0].ContactPayment), `"allocated_artefacts":[]`)
}

func TestPlanDelete(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		rec      Record
		known    Known
		wantKind Kind
		wantVoid string
		wantErr  bool
	}{
		{name: "ok - customer never synced", rec: Record{Table: "customers", ID: 17}},
		{name: "ok - draft invoice never synced", rec: Record{Table: "invoices", ID: 1042}},
		{name: "ok - payment never synced", rec: Record{Table: "payments", ID: 501}},
		{name: "ok - customer deletes the contact", rec: Record{Table: "customers", ID: 17}, known: Known{Self: "contact-17"}, wantKind: DeleteContact},
		{name: "ok - invoice is voided, not deleted", rec: Record{Table: "invoices", ID: 1042}, known: Known{Self: "si-1042"}, wantKind: VoidSalesInvoice, wantVoid: "Deleted in GES"},
		{name: "ok - payment deletes the contact payment", rec: Record{Table: "payments", ID: 501}, known: Known{Self: "cp-501"}, wantKind: DeleteContactPayment},
		{name: "error - unknown table", rec: Record{Table: "jobs", ID: 1}, known: Known{Self: "x"}, wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ops, err := PlanDelete(tc.rec, testSettings(), tc.known)
			if tc.wantErr {
				require.Error(t, err)
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
			require.Equal(t, tc.rec, op.Record)
			require.Equal(t, tc.known.Self, op.SageID)
			require.Equal(t, tc.wantVoid, op.VoidReason)
			require.Nil(t, op.Contact)
			require.Nil(t, op.SalesInvoice)
			require.Nil(t, op.ContactPayment)
			require.NotEmpty(t, op.Hash)
		})
	}
}

func TestIdempotencyID(t *testing.T) {
	t.Parallel()
	rec := Record{Table: "invoices", ID: 1042}
	id := IdempotencyID("biz", rec)
	sum := sha256.Sum256([]byte("gessync/v1/biz/invoices/1042"))
	require.Equal(t, hex.EncodeToString(sum[:16]), id)
	require.Regexp(t, regexp.MustCompile(`^[0-9a-f]{32}$`), id)
	require.Equal(t, id, IdempotencyID("biz", rec), "deterministic")
	require.NotEqual(t, id, IdempotencyID("biz2", rec))
	require.NotEqual(t, id, IdempotencyID("biz", Record{Table: "payments", ID: 1042}))
	require.NotEqual(t, id, IdempotencyID("biz", Record{Table: "invoices", ID: 1043}))

	// Every create carries it; updates do not.
	s := testSettings()
	c, err := PlanCustomer(testCustomer(), s, Known{})
	require.NoError(t, err)
	require.Equal(t, IdempotencyID(s.BusinessID, Record{Table: "customers", ID: 17}), c[0].Contact.IdempotencyID)
	i, err := PlanInvoice(testInvoice(), testCustomer(), s, invoiceKnown())
	require.NoError(t, err)
	require.Equal(t, IdempotencyID(s.BusinessID, rec), i[0].SalesInvoice.IdempotencyID)
	p, err := PlanPayment(testPayment(), s, paymentKnown())
	require.NoError(t, err)
	require.Equal(t, IdempotencyID(s.BusinessID, Record{Table: "payments", ID: 501}), p[0].ContactPayment.IdempotencyID)
}

// A payment's Hash is what its own fields and invoice say, whatever Sage says is outstanding
// (unless only part of it could be allocated): the pipeline compares it with the stored one
// before reading the invoice, so an unchanged payment costs no call. Its body still follows
// what is outstanding.
func TestPlanPaymentHashDoesNotDependOnOutstanding(t *testing.T) {
	t.Parallel()
	p := testPayment()
	k := Known{Self: "cp-501", Contact: "contact-17", SalesInvoice: "si-1042"}
	plan := func(out *decimal.Decimal, tier Tier, p Payment) Op {
		k := k
		k.Outstanding = out
		s := testSettings()
		s.Tier = tier
		ops, err := PlanPayment(p, s, k)
		require.NoError(t, err)
		require.Len(t, ops, 1)
		return ops[0]
	}
	unknown := plan(nil, TierStandard, p)
	enough := plan(dp("500.00"), TierStandard, p)
	require.Equal(t, unknown.Hash, enough.Hash)
	// An overpayment, only part allocated: never taken for unchanged before what is
	// outstanding is read again (it may have grown).
	capped := plan(dp("100.00"), TierStandard, p)
	start := plan(dp("100.00"), TierStart, p)
	require.NotEqual(t, unknown.Hash, capped.Hash)
	require.NotEqual(t, unknown.Hash, start.Hash)
	require.NotEqual(t, capped.Hash, plan(dp("120.00"), TierStandard, p).Hash)
	require.Equal(t, "100.00", capped.ContactPayment.AllocatedArtefacts[0].Amount.StringFixed(2))
	require.Equal(t, "100.00", start.ContactPayment.TotalAmount.StringFixed(2))

	edited := p
	edited.Amount = p.Amount.Add(decimal.NewFromInt(1))
	require.NotEqual(t, unknown.Hash, plan(nil, TierStandard, edited).Hash, "a new amount")
	edited = p
	edited.Reference = "another"
	require.NotEqual(t, unknown.Hash, plan(nil, TierStandard, edited).Hash, "a new reference")
	k.SalesInvoice = "si-2000"
	require.NotEqual(t, unknown.Hash, plan(nil, TierStandard, p).Hash, "another invoice")
}
