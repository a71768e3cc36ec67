package sagetest

import (
	"fmt"
	"net/http"
	"slices"
	"time"

	"github.com/shopspring/decimal"
)

// artefactIn is one element of allocated_artefacts in a request.
type artefactIn struct {
	ArtefactID *string  `json:"artefact_id"`
	Amount     *Decimal `json:"amount"`
	Discount   *Decimal `json:"discount"`
}

// paymentIn is contact_payment in the body of POST /contact_payments and
// PUT /contact_payments/{key}.
type paymentIn struct {
	TransactionTypeID  *string       `json:"transaction_type_id"`
	ContactID          *string       `json:"contact_id"`
	BankAccountID      *string       `json:"bank_account_id"`
	PaymentMethodID    *string       `json:"payment_method_id"`
	Date               *string       `json:"date"`
	Reference          *string       `json:"reference"`
	CurrencyID         *string       `json:"currency_id"`
	TotalAmount        *Decimal      `json:"total_amount"`
	TaxAmount          *Decimal      `json:"tax_amount"`
	AllocatedArtefacts *[]artefactIn `json:"allocated_artefacts"`
	PaymentOnAccount   *struct {
		ContactID   *string  `json:"contact_id"`
		TotalAmount *Decimal `json:"total_amount"`
	} `json:"payment_on_account"`
}

const (
	msgOnlyUnpaid      = "You can only pay unpaid or part-paid invoices."
	msgOverOutstanding = "The allocated amount cannot be greater than the outstanding amount"
	msgStartOnAccount  = "Accounting Start does not support unallocated or partly allocated payments (payments on account)."
)

// plannedApp is an allocation validated but not yet applied.
type plannedApp struct {
	invoice *invoice
	amount  decimal.Decimal
}

// applyPayment validates in against p (a fresh payment on create) and, when there are no
// problems, applies it: the payment's own allocations are replaced when allocated_artefacts is
// given, and the invoices' outstanding amounts follow.
func (c *call) applyPayment(in *paymentIn, p *payment, creating bool) problems {
	var pr problems
	b := c.b
	np := *p // attributes are set on a copy and committed at the end

	if creating || in.TransactionTypeID != nil {
		switch t := deref(in.TransactionTypeID); {
		case creating && t != "CUSTOMER_RECEIPT":
			pr.add("transaction_type_id", "The sandbox supports CUSTOMER_RECEIPT contact payments only.")
		case !creating && t != p.txType:
			pr.add("transaction_type_id", "cannot be changed")
		}
		np.txType = "CUSTOMER_RECEIPT"
	}
	if creating || in.ContactID != nil {
		ct, ok := b.contacts.get(deref(in.ContactID))
		switch {
		case !ok:
			pr.add("contact_id", "The contact could not be found.")
		case !ct.isCustomer():
			pr.add("contact_id", "The contact is not a customer.")
		default:
			np.contactID = ct.id
		}
		if !creating && np.contactID != p.contactID && len(p.poaUsed) > 0 {
			pr.add("contact_id", "cannot be changed while the payment on account is allocated")
		}
	}
	if creating || in.BankAccountID != nil {
		a, ok := b.bankAccts.get(deref(in.BankAccountID))
		if !ok {
			pr.add("bank_account_id", "The bank account could not be found.")
		} else {
			np.bankID = a.id
			if creating && in.PaymentMethodID == nil {
				np.methodID = a.method
			}
		}
	}
	if in.PaymentMethodID != nil {
		if _, ok := paymentMethodLink(*in.PaymentMethodID); !ok {
			pr.add("payment_method_id", "is not a payment method (CASH, CHECK, CREDIT_DEBIT, BANK_TRANSFER, ALTERNATIVE_PAYMENT)")
		}
		np.methodID = *in.PaymentMethodID
	}
	set(&np.date, in.Date)
	if _, err := time.Parse(time.DateOnly, np.date); err != nil {
		pr.add("date", "is not a valid date")
	}
	set(&np.reference, in.Reference)
	if in.CurrencyID != nil && *in.CurrencyID != "GBP" {
		pr.add("currency_id", "Multi-currency is not enabled for this business.")
	}
	if in.TaxAmount != nil && !in.TaxAmount.IsZero() {
		pr.add("tax_amount", "is not supported by the sandbox on a customer receipt.")
	}
	pr.checkMoney("total_amount", in.TotalAmount)
	pr.checkPositive("total_amount", in.TotalAmount)
	np.total = decimalOr(in.TotalAmount, p.total)

	// The allocations the payment will have.
	planned := make([]plannedApp, 0)
	if in.AllocatedArtefacts == nil {
		for _, a := range p.apps {
			planned = append(planned, plannedApp{a.invoice, a.amount})
		}
	} else {
		seen := map[string]bool{}
		for i, ai := range *in.AllocatedArtefacts {
			src := func(f string) string { return fmt.Sprintf("allocated_artefacts[%d].%s", i, f) }
			if ai.Amount == nil {
				pr.add(src("amount"), msgRequired)
				continue
			}
			pr.checkMoney(src("amount"), ai.Amount)
			pr.checkPositive(src("amount"), ai.Amount)
			if ai.Discount != nil && !ai.Discount.IsZero() {
				pr.add(src("discount"), "is not supported by the sandbox.")
			}
			iv, ok := b.invoices.get(deref(ai.ArtefactID))
			switch {
			case ai.ArtefactID == nil:
				pr.add(src("artefact_id"), msgRequired)
				continue
			case !ok:
				pr.add(src("artefact_id"), "The artefact could not be found.")
				continue
			case seen[iv.id]:
				pr.add(src("artefact_id"), "The artefact is allocated twice in this payment.")
				continue
			case iv.contactID != np.contactID:
				pr.add(src("artefact_id"), "The artefact belongs to another contact.")
				continue
			}
			seen[iv.id] = true
			// What is outstanding before this payment's own earlier allocation.
			outstanding := iv.outstanding()
			for _, a := range p.apps {
				if a.invoice == iv {
					outstanding = outstanding.Add(a.amount)
				}
			}
			switch {
			case iv.draft || iv.void || outstanding.Sign() <= 0:
				pr.add(src("artefact_id"), msgOnlyUnpaid)
			case ai.Amount.GreaterThan(outstanding):
				pr.add(src("amount"), msgOverOutstanding)
			}
			planned = append(planned, plannedApp{iv, ai.Amount.Decimal})
		}
	}
	allocated := decimal.Zero
	for _, pa := range planned {
		allocated = allocated.Add(pa.amount)
		if pa.invoice.contactID != np.contactID && in.AllocatedArtefacts == nil {
			pr.add("contact_id", "The payment is allocated to another contact's invoice.")
		}
	}
	excess := np.total.Sub(allocated)
	switch {
	case excess.Sign() < 0:
		pr.add("total_amount", "The total amount cannot be less than the allocated artefact amount.")
	case excess.LessThan(sumApps(p.poaUsed)):
		pr.add("total_amount", "cannot be less than what its payment on account has been allocated.")
	}
	if b.tier == TierStart {
		if excess.Sign() > 0 {
			pr.add("total_amount", msgStartOnAccount)
		}
		if in.PaymentOnAccount != nil {
			pr.add("payment_on_account", msgStartOnAccount)
		}
	}
	if poa := in.PaymentOnAccount; poa != nil {
		if poa.TotalAmount != nil && !poa.TotalAmount.Equal(excess) {
			pr.add("payment_on_account.total_amount", fmt.Sprintf("must equal total_amount less the allocated amounts (%s)", excess.StringFixed(2)))
		}
		if poa.ContactID != nil && *poa.ContactID != np.contactID {
			pr.add("payment_on_account.contact_id", "must be the payment's contact")
		}
	}
	if len(pr) > 0 {
		return pr
	}

	// Commit.
	if in.AllocatedArtefacts != nil {
		for _, a := range p.apps {
			a.invoice.apps = slices.DeleteFunc(a.invoice.apps, func(x *application) bool { return x == a })
		}
		np.apps = nil
		for _, pa := range planned {
			a := &application{id: newID(), invoice: pa.invoice, payment: p, amount: pa.amount}
			pa.invoice.apps = append(pa.invoice.apps, a)
			np.apps = append(np.apps, a)
		}
	}
	switch {
	case excess.Sign() > 0 && np.poaID == "":
		np.poaID = newID()
	case excess.Sign() == 0 && len(np.poaUsed) == 0:
		np.poaID = ""
	}
	*p = np
	return nil
}

// createPayment serves POST /contact_payments: {"contact_payment": {transaction_type_id
// "CUSTOMER_RECEIPT", contact_id, bank_account_id, date, total_amount, allocated_artefacts
// [{artefact_id, amount}], …}} → 201 ContactPayment. Any excess over the allocations is a
// payment on account (refused on Start).
func createPayment(c *call) response {
	return c.idempotent(func() response {
		in, e := decode[paymentIn](c)
		if e != nil {
			return *e
		}
		p := &payment{id: newID(), created: c.now, updated: c.now}
		if pr := c.applyPayment(&in, p, true); len(pr) > 0 {
			return invalid(pr...)
		}
		c.b.payments.add(p.id, p)
		return ok(http.StatusCreated, c.b.renderPayment(p))
	})
}

// updatePayment serves PUT /contact_payments/{key}: the attributes present change;
// allocated_artefacts, when given, replaces the payment's allocations ([] clears them and leaves
// the whole payment on account).
func updatePayment(c *call) response {
	p, found := c.b.payments.get(c.id)
	if !found {
		return notFound()
	}
	in, e := decode[paymentIn](c)
	if e != nil {
		return *e
	}
	if pr := c.applyPayment(&in, p, false); len(pr) > 0 {
		return invalid(pr...)
	}
	p.updated = c.now
	return ok(http.StatusOK, c.b.renderPayment(p))
}

// deletePayment serves DELETE /contact_payments/{key} → 204: its allocations, and those made
// from its payment on account, are removed and the invoices' outstanding amounts restored.
func deletePayment(c *call) response {
	p, found := c.b.payments.get(c.id)
	if !found {
		return notFound()
	}
	for _, a := range slices.Concat(p.apps, p.poaUsed) {
		a.invoice.apps = slices.DeleteFunc(a.invoice.apps, func(x *application) bool { return x == a })
		if al := a.allocation; al != nil {
			al.apps = slices.DeleteFunc(al.apps, func(x *application) bool { return x == a })
			al.poa = slices.DeleteFunc(al.poa, func(d poaDraw) bool { return d.pay == p })
			if len(al.apps) == 0 {
				c.b.allocations.remove(al.id)
				c.b.tombstone("contact_allocations", al.id, txTypeNames[al.txType], c.now)
			}
		}
	}
	c.b.payments.remove(p.id)
	c.b.tombstone("contact_payments", p.id, p.displayedAs(), c.now)
	return response{status: http.StatusNoContent}
}

// getPayment serves GET /contact_payments/{key}.
func getPayment(c *call) response {
	p, found := c.b.payments.get(c.id)
	if !found {
		return notFound()
	}
	return ok(http.StatusOK, c.b.renderPayment(p))
}

// listPayments serves GET /contact_payments with contact_id, bank_account_id,
// transaction_type_id, from_date/to_date, updated_or_created_since, deleted_since and sort
// (created_at|updated_at|date[:asc|desc]).
func listPayments(c *call) response {
	if resp, ok := c.deletedSince("contact_payments"); ok {
		return resp
	}
	q := c.query
	var ps []*payment
	for _, p := range c.b.payments.all() {
		switch {
		case q.Get("contact_id") != "" && p.contactID != q.Get("contact_id"):
		case q.Get("bank_account_id") != "" && p.bankID != q.Get("bank_account_id"):
		case q.Get("transaction_type_id") != "" && p.txType != q.Get("transaction_type_id"):
		case !c.dateRange(p.date), !c.updatedSince(p.updated):
		default:
			ps = append(ps, p)
		}
	}
	if e := sortBy(c, ps, map[string]func(*payment) string{
		"created_at": func(p *payment) string { return p.created.UTC().Format(sortableTime) },
		"updated_at": func(p *payment) string { return p.updated.UTC().Format(sortableTime) },
		"date":       func(p *payment) string { return p.date },
	}); e != nil {
		return *e
	}
	return pageOf(c, ps, c.b.renderPayment)
}

// allocationIn is contact_allocation in the body of POST /contact_allocations.
type allocationIn struct {
	TransactionTypeID  *string       `json:"transaction_type_id"`
	ContactID          *string       `json:"contact_id"`
	Date               *string       `json:"date"`
	AllocatedArtefacts *[]artefactIn `json:"allocated_artefacts"`
}

// createAllocation serves POST /contact_allocations: {"contact_allocation":
// {transaction_type_id "CUSTOMER_ALLOCATION", contact_id, allocated_artefacts: [{artefact_id
// <sales invoice>, amount 5}, {artefact_id <payment on account>, amount -5}]}} → 201. The amounts
// must balance; not available on Start.
func createAllocation(c *call) response {
	return c.idempotent(func() response {
		in, e := decode[allocationIn](c)
		if e != nil {
			return *e
		}
		b := c.b
		if b.tier == TierStart {
			return invalid(problem("", "Contact allocations are not available in Accounting Start."))
		}
		var pr problems
		if deref(in.TransactionTypeID) != "CUSTOMER_ALLOCATION" {
			pr.add("transaction_type_id", "The sandbox supports CUSTOMER_ALLOCATION contact allocations only.")
		}
		ct, ctOK := b.contacts.get(deref(in.ContactID))
		if !ctOK {
			pr.add("contact_id", "The contact could not be found.")
		}
		date := c.now.Format(time.DateOnly)
		set(&date, in.Date)

		var invoices []plannedApp
		type draw struct {
			pay    *payment
			amount decimal.Decimal
		}
		var draws []draw
		invSum, poaSum := decimal.Zero, decimal.Zero
		for i, ai := range derefSlice(in.AllocatedArtefacts) {
			src := func(f string) string { return fmt.Sprintf("allocated_artefacts[%d].%s", i, f) }
			if ai.Amount == nil || ai.ArtefactID == nil {
				pr.add(src("amount"), msgRequired)
				continue
			}
			pr.checkMoney(src("amount"), ai.Amount)
			if iv, ok := b.invoices.get(*ai.ArtefactID); ok {
				switch {
				case ctOK && iv.contactID != ct.id:
					pr.add(src("artefact_id"), "The artefact belongs to another contact.")
				case iv.draft || iv.void || iv.outstanding().Sign() <= 0:
					pr.add(src("artefact_id"), msgOnlyUnpaid)
				case ai.Amount.Sign() <= 0:
					pr.add(src("amount"), "must be greater than 0 for an invoice")
				case ai.Amount.GreaterThan(iv.outstanding()):
					pr.add(src("amount"), msgOverOutstanding)
				}
				invoices = append(invoices, plannedApp{iv, ai.Amount.Decimal})
				invSum = invSum.Add(ai.Amount.Decimal)
				continue
			}
			var pay *payment
			for _, p := range b.payments.all() {
				if p.poaID != "" && p.poaID == *ai.ArtefactID {
					pay = p
				}
			}
			switch {
			case pay == nil:
				pr.add(src("artefact_id"), "The artefact could not be found.")
				continue
			case ctOK && pay.contactID != ct.id:
				pr.add(src("artefact_id"), "The artefact belongs to another contact.")
			case pay.onAccountOutstanding().Sign() <= 0:
				pr.add(src("artefact_id"), msgOnlyUnpaid)
			case ai.Amount.Sign() >= 0:
				pr.add(src("amount"), "must be negative for a payment on account")
			case ai.Amount.Neg().GreaterThan(pay.onAccountOutstanding()):
				pr.add(src("amount"), msgOverOutstanding)
			}
			draws = append(draws, draw{pay, ai.Amount.Neg()})
			poaSum = poaSum.Add(ai.Amount.Neg())
		}
		switch {
		case len(invoices) == 0 || len(draws) == 0:
			pr.add("allocated_artefacts", "An allocation needs at least one invoice and one payment on account.")
		case invSum.GreaterThan(poaSum):
			pr.add("allocated_artefacts", "The sales invoice allocation amount cannot be greater than the amount set for the payment on account")
		case invSum.LessThan(poaSum):
			pr.add("allocated_artefacts", "The allocated amounts must add up to zero.")
		}
		if len(pr) > 0 {
			return invalid(pr...)
		}

		al := &allocation{id: newID(), contactID: ct.id, date: date, txType: "CUSTOMER_ALLOCATION", created: c.now, updated: c.now}
		for _, d := range draws {
			al.poa = append(al.poa, poaDraw{id: newID(), pay: d.pay, amount: d.amount})
		}
		di := 0
		for _, pa := range invoices {
			left := pa.amount
			for left.Sign() > 0 {
				d := &draws[di]
				x := decimal.Min(left, d.amount)
				a := &application{id: newID(), invoice: pa.invoice, payment: d.pay, allocation: al, amount: x}
				pa.invoice.apps = append(pa.invoice.apps, a)
				d.pay.poaUsed = append(d.pay.poaUsed, a)
				al.apps = append(al.apps, a)
				left, d.amount = left.Sub(x), d.amount.Sub(x)
				if d.amount.Sign() == 0 {
					di++
				}
			}
		}
		b.allocations.add(al.id, al)
		return ok(http.StatusCreated, b.renderAllocation(al))
	})
}

func derefSlice[T any](p *[]T) []T {
	if p == nil {
		return nil
	}
	return *p
}

// deleteAllocation serves DELETE /contact_allocations/{key} → 204, undoing the allocation.
func deleteAllocation(c *call) response {
	al, found := c.b.allocations.get(c.id)
	if !found {
		return notFound()
	}
	for _, a := range al.apps {
		a.invoice.apps = slices.DeleteFunc(a.invoice.apps, func(x *application) bool { return x == a })
		a.payment.poaUsed = slices.DeleteFunc(a.payment.poaUsed, func(x *application) bool { return x == a })
	}
	c.b.allocations.remove(al.id)
	c.b.tombstone("contact_allocations", al.id, txTypeNames[al.txType], c.now)
	return response{status: http.StatusNoContent}
}

// getAllocation serves GET /contact_allocations/{key}.
func getAllocation(c *call) response {
	al, found := c.b.allocations.get(c.id)
	if !found {
		return notFound()
	}
	return ok(http.StatusOK, c.b.renderAllocation(al))
}

// listAllocations serves GET /contact_allocations with contact_id, transaction_type_id,
// updated_or_created_since and deleted_since.
func listAllocations(c *call) response {
	if resp, ok := c.deletedSince("contact_allocations"); ok {
		return resp
	}
	var out []ContactAllocation
	for _, al := range c.b.allocations.all() {
		switch q := c.query; {
		case q.Get("contact_id") != "" && al.contactID != q.Get("contact_id"):
		case q.Get("transaction_type_id") != "" && al.txType != q.Get("transaction_type_id"):
		case !c.updatedSince(al.updated):
		default:
			out = append(out, c.b.renderAllocation(al))
		}
	}
	return page(c, out)
}
