package pipeline

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/gessync/gessync/cdc"
	"github.com/gessync/gessync/sink/sage"
	"github.com/gessync/gessync/state"
	"github.com/gessync/gessync/transform"
)

// resyncHash marks a payment whose allocation gessync removed so that its invoice could change:
// the next successful update of the invoice allocates it again.
const resyncHash = "unallocated-for-invoice-edit"

func needsUnallocation(err error) bool {
	var api *sage.APIError
	return errors.As(err, &api) && api.HasMessage("unallocate")
}

// handAllocatedError says the invoice carries allocations gessync did not make (a receipt or
// credit note allocated by hand in Sage): gessync changes nothing and asks a person.
type handAllocatedError struct{ refs []string }

func (e *handAllocatedError) Error() string {
	return "allocated by hand in Sage: " + strings.Join(e.refs, ", ")
}

// unallocateAndRetry handles Sage's refusal to edit or void an invoice with allocations: when
// every allocation on it is a receipt gessync posted, it clears them (PUT contact_payments/{id}
// with allocated_artefacts []), marks those payments for re-allocation, and sends op again.
// Otherwise it changes nothing.
func (w *lane) unallocateAndRetry(ctx context.Context, j job, op transform.Op) (callResult, error) {
	if j.conn.Settings.Sage.Tier == transform.TierStart {
		// Start refuses unallocated payments, so the receipts cannot be set aside.
		return callResult{}, &transform.InvalidError{Record: j.rec, Field: "payments",
			Reason: "This invoice has payments in Sage, and Sage Accounting Start cannot hold a payment unallocated while the invoice changes.",
			Action: "In Sage, delete the payment on this invoice; gessync then updates the invoice and posts the payment again."}
	}
	ours, err := w.paymentsOf(ctx, j)
	if err != nil {
		return callResult{}, err
	}
	// A payment of the invoice may be moving to another invoice in another lane: it must not
	// be unallocated meanwhile. This one tries again once that lane is done with it.
	recs := make([]transform.Record, len(ours))
	for i, m := range ours {
		recs[i] = transform.Record{Table: "payments", ID: m.GESID}
	}
	unhold, ok := w.holdAll(recs)
	if !ok {
		return callResult{}, &retryable{fmt.Errorf("invoice %d: a payment of it is being synced in another lane", j.rec.ID)}
	}
	defer unhold()
	inv, err := j.sage.GetSalesInvoice(ctx, op.SageID)
	if err != nil {
		return callResult{}, err
	}
	bySage := map[string]state.Mapping{}
	for _, m := range ours {
		bySage[m.SageID] = m
	}
	var foreign []string
	for _, a := range inv.PaymentsAllocations {
		if a.ContactPayment == nil {
			foreign = append(foreign, fmt.Sprintf("%s %s %s", a.Type, a.Reference, a.Amount.StringFixed(2)))
			continue
		}
		if _, ok := bySage[a.ContactPayment.ID]; !ok {
			foreign = append(foreign, fmt.Sprintf("receipt %s %s", a.Reference, a.Amount.StringFixed(2)))
		}
	}
	if len(foreign) > 0 {
		return callResult{}, &handAllocatedError{refs: foreign}
	}
	for _, a := range inv.PaymentsAllocations {
		m := bySage[a.ContactPayment.ID]
		if m.PayloadHash == resyncHash {
			continue
		}
		w.markSetAside(j.rec.ID, true) // before the first is set aside: never fewer than are
		if _, err := j.sage.UpdateContactPayment(ctx, m.SageID, sage.ContactPaymentRequest{AllocatedArtefacts: []sage.AllocatedArtefactRequest{}}); err != nil {
			return callResult{}, fmt.Errorf("unallocating payment %d from invoice %d: %w", m.GESID, j.rec.ID, err)
		}
		m.PayloadHash = resyncHash
		if err := w.p.cfg.Store.SaveMapping(ctx, m); err != nil {
			return callResult{}, err
		}
	}
	return w.call(ctx, j, op)
}

// paymentsOf returns the id map entries of the invoice's payments in this business.
func (w *lane) paymentsOf(ctx context.Context, j job) ([]state.Mapping, error) {
	all, err := w.p.cfg.Store.Children(ctx, w.company, "payments", j.rec.ID)
	if err != nil {
		return nil, err
	}
	var out []state.Mapping
	for _, m := range all {
		if m.BusinessID == j.conn.BusinessID {
			out = append(out, m)
		}
	}
	return out, nil
}

// reallocate posts again every payment of the invoice that unallocateAndRetry set aside.
func (w *lane) reallocate(ctx context.Context, j job) (state.Outcome, error) {
	if !w.isSetAside(j.rec.ID) {
		return state.Synced, nil // none set aside: no read of its payments
	}
	ours, err := w.paymentsOf(ctx, j)
	if err != nil {
		return "", err
	}
	kept := false // a payment still set aside in state after this
	for _, m := range ours {
		if m.PayloadHash != resyncHash {
			continue
		}
		row, err := readRow(ctx, w.p.cfg.Rows, j.lsn, "payments", m.GESID)
		if errors.Is(err, cdc.ErrRowGone) {
			kept = true
			continue // deleted in GES; its delete follows in the stream
		}
		if err != nil {
			return "", &retryable{err}
		}
		pj := job{rec: transform.Record{Table: "payments", ID: m.GESID}, row: row, lsn: j.lsn, conn: j.conn, sage: j.sage}
		unhold, ok := w.hold(pj.rec, row)
		if !ok {
			kept = true
			continue // moved to an invoice another lane holds: its change there posts it
		}
		outcome, err := w.upsert(ctx, pj, 1)
		unhold()
		if err != nil {
			return "", err
		}
		if outcome != state.Synced {
			kept = true // skipped (superseded, another business): still set aside in state
		}
		if outcome == state.Failed {
			return w.note(ctx, j, state.LevelError, "reallocate.failed",
				fmt.Sprintf("The invoice was updated, but payment %d could not be allocated to it again.", m.GESID), "",
				"See the payment's own entry in the sync log; once fixed, press Retry on it.")
		}
	}
	if !kept {
		w.markSetAside(j.rec.ID, false) // every one allocated again
	}
	return state.Synced, nil
}
