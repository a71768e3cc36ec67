package transform

import (
	"fmt"
	"time"
	"unicode/utf8"

	"github.com/shopspring/decimal"

	"github.com/gessync/gessync/sink/sage"
)

// maxPaymentReference is Sage's limit on contact_payment.reference.
const maxPaymentReference = 25

// PaymentMethodID maps a GES payments.method to a Sage payment_method_id (GET
// /payment_methods): cash → CASH, card → CREDIT_DEBIT, bank_transfer → BANK_TRANSFER,
// cheque → CHECK, other → ALTERNATIVE_PAYMENT. ok is false for any other method (PlanPayment
// then sends ALTERNATIVE_PAYMENT with a note).
func PaymentMethodID(method string) (id string, ok bool) {
	id, ok = paymentMethods[method]
	return id, ok
}

var paymentMethods = map[string]string{
	"cash":          "CASH",
	"card":          "CREDIT_DEBIT",
	"bank_transfer": "BANK_TRANSFER",
	"cheque":        "CHECK",
	"other":         "ALTERNATIVE_PAYMENT",
}

// TransactionCustomerReceipt is the Sage transaction_type_id of every payment gessync sends.
const TransactionCustomerReceipt = "CUSTOMER_RECEIPT"

// PlanPayment maps a GES payment to POST /contact_payments (CreateContactPayment, when k.Self is
// "") or PUT /contact_payments/{k.Self} (UpdateContactPayment): a CUSTOMER_RECEIPT from k.Contact
// into s.BankAccountID on paid_on, allocated to the invoice's Sage sales invoice
// (allocated_artefacts [{artefact_id: k.SalesInvoice, amount}]). The invoice must be in Sage
// (k.SalesInvoice and k.Contact), else *MissingParentError with Parent invoices/InvoiceID. The
// reference is cut to Sage's 25 characters with a note.
//
// Overpayment, when k.Outstanding is known and the amount exceeds it: only the outstanding part
// (nothing when it is 0 or less) is allocated. On Standard and Plus total_amount stays the whole
// amount and Sage keeps the excess as a payment on account (noted). Start has no payments on
// account: total_amount is the allocated part and a note says the excess must be recorded by hand
// in Sage; when nothing at all can be allocated on Start the payment is an *InvalidError
// {Field: "amount"} so that a person records it. No bank account chosen, or an amount ≤ 0, is an
// *InvalidError too.
func PlanPayment(p Payment, s Settings, k Known) ([]Op, error) {
	rec := Record{Table: "payments", ID: p.ID}
	if p.Amount.Sign() <= 0 {
		return nil, &InvalidError{
			Record: rec, Field: "amount",
			Reason: fmt.Sprintf("The payment amount is %s; it must be more than £0.00", Money(p.Amount)),
			Action: "Correct the payment amount in GES",
		}
	}
	if p.PaidOn.IsZero() {
		return nil, &InvalidError{
			Record: rec, Field: "paid_on", Reason: "The payment has no date",
			Action: "Set the date the payment was received in GES",
		}
	}
	if s.BankAccountID == "" {
		return nil, &InvalidError{
			Record: rec, Field: "bank_account",
			Reason: "No Sage bank account is chosen to receive GES payments",
			Action: "Choose a bank account for GES payments in gessync's settings for this company",
		}
	}
	if k.SalesInvoice == "" || k.Contact == "" {
		return nil, &MissingParentError{Record: rec, Parent: Record{Table: "invoices", ID: p.InvoiceID}}
	}

	var notes []string
	method, ok := PaymentMethodID(p.Method)
	if !ok {
		method = paymentMethods["other"]
		notes = append(notes, fmt.Sprintf("GES payment method %q is not one gessync knows; it was sent to Sage as an alternative payment", clip(p.Method)))
	}
	body := sage.ContactPaymentRequest{
		TransactionTypeID: TransactionCustomerReceipt,
		ContactID:         k.Contact,
		BankAccountID:     s.BankAccountID,
		PaymentMethodID:   method,
		Date:              p.PaidOn.Format(time.DateOnly),
	}
	if ref := squash(p.Reference); utf8.RuneCountInString(ref) > maxPaymentReference {
		body.Reference = truncate(ref, maxPaymentReference)
		notes = append(notes, fmt.Sprintf(
			"The payment reference %q is longer than the %d characters Sage allows; it was sent as %q",
			clip(ref), maxPaymentReference, body.Reference))
	} else {
		body.Reference = ref
	}

	// The hash leaves out what depends on the invoice's outstanding amount (see Op.Hash).
	nominal := body
	nominal.TotalAmount = sage.DP(p.Amount)
	nominal.AllocatedArtefacts = []sage.AllocatedArtefactRequest{{ArtefactID: k.SalesInvoice, Amount: sage.D(p.Amount)}}
	hash := hashContactPayment(nominal)
	capped := false

	total, allocate := p.Amount, p.Amount
	if k.Outstanding != nil && p.Amount.GreaterThan(*k.Outstanding) {
		capped = true
		allocate = decimal.Max(*k.Outstanding, decimal.Zero)
		excess := p.Amount.Sub(allocate)
		if s.Tier == TierStart {
			if allocate.IsZero() {
				return nil, &InvalidError{
					Record: rec, Field: "amount",
					Reason: fmt.Sprintf("The invoice is already paid in full in Sage, and Sage Accounting Start cannot keep a payment of %s that is not against an invoice", Money(p.Amount)),
					Action: fmt.Sprintf("Record this payment of %s by hand in Sage, or correct it in GES if it was entered by mistake", Money(p.Amount)),
				}
			}
			total = allocate
			notes = append(notes, fmt.Sprintf(
				"This payment of %s is %s more than was left to pay on the invoice. Sage Accounting Start cannot keep money on account, so only %s was sent; the excess of %s must be recorded by hand in Sage",
				Money(p.Amount), Money(excess), Money(allocate), Money(excess)))
		} else {
			notes = append(notes, fmt.Sprintf(
				"This payment of %s is %s more than was left to pay on the invoice (%s); Sage keeps the excess of %s as a payment on account for the customer",
				Money(p.Amount), Money(excess), Money(allocate), Money(excess)))
		}
	}
	body.TotalAmount = sage.DP(total)
	// Nothing to allocate is sent as "allocated_artefacts": [] (not left out), so that an update
	// also clears an allocation made earlier.
	body.AllocatedArtefacts = []sage.AllocatedArtefactRequest{}
	if allocate.Sign() > 0 {
		body.AllocatedArtefacts = []sage.AllocatedArtefactRequest{{ArtefactID: k.SalesInvoice, Amount: sage.D(allocate)}}
	}

	if capped {
		// Only part allocated: what is outstanding may grow (another payment deleted), so the
		// next plan must read it again rather than find this payment unchanged.
		hash = hashContactPayment(body) + "-capped"
	}
	op := Op{Record: rec, Hash: hash, Notes: notes}
	if k.Self == "" {
		op.Kind = CreateContactPayment
		body.IdempotencyID = IdempotencyID(s.BusinessID, rec)
	} else {
		op.Kind = UpdateContactPayment
		op.SageID = k.Self
	}
	op.ContactPayment = &body
	return []Op{op}, nil
}

// PlanDelete maps a row deleted from GES (a pgoutput Delete carries only the key) to its Sage
// operation: nothing when the record never reached Sage (k.Self is ""); customers →
// DELETE /contacts/{id} (DeleteContact; Sage refuses contacts with transactions); invoices →
// void with DeletedVoidReason (VoidSalesInvoice; Sage keeps invoices); payments →
// DELETE /contact_payments/{id} (DeleteContactPayment). Another table is an error.
func PlanDelete(rec Record, s Settings, k Known) ([]Op, error) {
	if k.Self == "" {
		return nil, nil
	}
	switch rec.Table {
	case "customers":
		return []Op{{Kind: DeleteContact, Record: rec, SageID: k.Self, Hash: hashRemoval(DeleteContact, k.Self, "")}}, nil
	case "invoices":
		return []Op{voidOp(rec, k.Self, DeletedVoidReason)}, nil
	case "payments":
		return []Op{{Kind: DeleteContactPayment, Record: rec, SageID: k.Self, Hash: hashRemoval(DeleteContactPayment, k.Self, "")}}, nil
	}
	return nil, fmt.Errorf("transform: delete of %s: unknown table %q", rec, rec.Table)
}
