package bench

import (
	"context"
	"fmt"
	"strings"
	"time"
)

// CallsResult counts Sage calls per GES change.
type CallsResult struct {
	Companies int
	// The realistic edit mix.
	Changes, Visible, Calls int
	ByCall                  string
	// Updates that change nothing Sage sees, by kind: calls made for n updates.
	NoOp []NoOpResult
	// Repeated updates before the record was sent (daemon stopped): invoices, changes and calls.
	CoalesceInvoices, CoalesceChanges, CoalesceCalls int
	CoalesceByCall                                   string
	CoalescePUTs                                     int
}

// NoOpResult is one kind of update Sage does not see.
type NoOpResult struct {
	What           string
	Updates, Calls int
	ByCall         string
}

func (c CallsResult) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "calls per change, realistic edit mix over %d companies (per customer: insert, an updated_at-only edit; per invoice: draft, 2–3 draft edits, issue, 2–3 edits after issue of which one touches updated_at only, a part payment; every third invoice edited again after its payment):\n", c.Companies)
	fmt.Fprintf(&b, "  %d GES changes (%d that change what Sage sees) → %d Sage calls: %.2f calls per change, %.2f per visible change\n", c.Changes, c.Visible, c.Calls, float64(c.Calls)/float64(max(c.Changes, 1)), float64(c.Calls)/float64(max(c.Visible, 1)))
	fmt.Fprintf(&b, "  calls: %s\n", c.ByCall)
	for _, n := range c.NoOp {
		fmt.Fprintf(&b, "  %-52s %4d updates → %4d calls (%s)\n", n.What+":", n.Updates, n.Calls, n.ByCall)
	}
	fmt.Fprintf(&b, "  a customer and an issued invoice inserted, the invoice edited twice, all while the daemon was stopped (%d companies, %d changes) → %d calls (%s); the edits made %d PUTs, coalescing them into the create would make 0",
		c.CoalesceInvoices, c.CoalesceChanges, c.CoalesceCalls, c.CoalesceByCall, c.CoalescePUTs)
	return b.String()
}

// calls runs the realistic edit mix, then updates Sage cannot see, then repeated updates queued
// while the daemon is stopped, counting Sage calls for each.
func (r *runner) calls(ctx context.Context, w *world) (*CallsResult, error) {
	n := min(r.opts.MixCompanies, len(w.companies))
	res := &CallsResult{Companies: n}
	if err := w.caughtUp(ctx, 10*time.Minute); err != nil {
		return nil, err
	}
	// phase runs changes (in order per company) and returns the calls they caused.
	phase := func(changes []change) (map[string]int, int, error) {
		before, _ := w.rec.snapshot()
		e, err := w.newExecer(ctx, 4)
		if err != nil {
			return nil, 0, err
		}
		for _, ch := range changes {
			e.send(ch)
		}
		err = e.wait()
		e.close(ctx)
		if err != nil {
			return nil, 0, err
		}
		if err := w.caughtUp(ctx, 30*time.Minute); err != nil {
			return nil, 0, err
		}
		after, _ := w.rec.snapshot()
		m, total := diffCalls(before, after)
		return m, total, nil
	}
	upd := func(company int64, table string, id int64, set string, args ...any) change {
		return change{company: company, sql: fmt.Sprintf(`UPDATE %s SET %s WHERE id = $1`, table, set), args: append([]any{id}, args...)}
	}
	const twoLines = `[{"description":"Annual boiler service","quantity":1,"unit_price":100.00,"vat_rate":20,"kind":"labour"},{"description":"Magnetic filter","quantity":1,"unit_price":50.00,"vat_rate":20,"kind":"materials"}]`
	var mix []change
	type rec struct {
		company           int64
		cust, inv, paymnt int64
	}
	var issued []rec
	visible := 0
	for ci := 0; ci < n; ci++ {
		co := w.companies[ci].CompanyID
		ch, cust := w.newCustomer(co, w.marker('c'))
		mix = append(mix, ch, upd(co, "customers", cust, "updated_at = now()"))
		visible++
		for j := 0; j < 3; j++ {
			ch, inv := w.newInvoice(co, cust, "draft", "")
			mix = append(mix, ch)
			for e := 0; e < 2+j%2; e++ {
				mix = append(mix, upd(co, "invoices", inv, "line_items = $2, notes = $3, updated_at = now()", invoiceLines, fmt.Sprintf("Draft %d", e)))
			}
			mix = append(mix, upd(co, "invoices", inv, "status = 'issued', notes = $2, updated_at = now()", "Issued "+w.marker('i')))
			visible++
			after := []change{
				upd(co, "invoices", inv, "notes = $2, updated_at = now()", "Edited "+w.marker('i')),
				upd(co, "invoices", inv, "updated_at = now()"),
				upd(co, "invoices", inv, "line_items = $2, subtotal = 150.00, vat_total = 30.00, total = 180.00, updated_at = now()", twoLines),
			}
			mix = append(mix, after[:2+(j+1)%2]...)
			visible += 1 + (j+1)%2
			pid := w.nextID.Load() + 1
			mix = append(mix, w.newPayment(co, inv, w.marker('p')))
			visible++
			if j == 2 {
				mix = append(mix, upd(co, "invoices", inv, "notes = $2, updated_at = now()", "Corrected after payment "+w.marker('i')))
				visible++
			}
			issued = append(issued, rec{company: co, cust: cust, inv: inv, paymnt: pid})
		}
	}
	r.logf("calls: realistic mix, %d changes over %d companies", len(mix), n)
	m, total, err := phase(mix)
	if err != nil {
		return nil, err
	}
	res.Changes, res.Visible, res.Calls, res.ByCall = len(mix), visible, total, formatCalls(m)

	for _, k := range []struct {
		what string
		mk   func(x rec) change
	}{
		{"customer updated_at only", func(x rec) change { return upd(x.company, "customers", x.cust, "updated_at = now()") }},
		{"issued invoice updated_at only", func(x rec) change { return upd(x.company, "invoices", x.inv, "updated_at = now()") }},
		{"issued invoice created_at (a column Sage never gets)", func(x rec) change {
			return upd(x.company, "invoices", x.inv, "created_at = created_at - interval '1 day'")
		}},
		{"payment updated_at only", func(x rec) change { return upd(x.company, "payments", x.paymnt, "updated_at = now()") }},
	} {
		var chs []change
		seen := map[int64]bool{}
		for _, x := range issued {
			if k.what[:8] == "customer" && seen[x.cust] {
				continue
			}
			seen[x.cust] = true
			chs = append(chs, k.mk(x))
		}
		m, total, err := phase(chs)
		if err != nil {
			return nil, err
		}
		res.NoOp = append(res.NoOp, NoOpResult{What: k.what, Updates: len(chs), Calls: total, ByCall: formatCalls(m)})
	}

	// Repeated updates that arrive before the record was sent.
	w.stop()
	var chs []change
	for ci := 0; ci < n; ci++ {
		co := w.companies[ci].CompanyID
		ch, cust := w.newCustomer(co, w.marker('c'))
		chs = append(chs, ch)
		ch, inv := w.newInvoice(co, cust, "issued", w.marker('i'))
		chs = append(chs, ch,
			upd(co, "invoices", inv, "notes = $2, updated_at = now()", "Edit 1 "+w.marker('i')),
			upd(co, "invoices", inv, "notes = $2, updated_at = now()", "Edit 2 "+w.marker('i')))
	}
	before, _ := w.rec.snapshot()
	e, err := w.newExecer(ctx, 4)
	if err != nil {
		return nil, err
	}
	for _, ch := range chs {
		e.send(ch)
	}
	err = e.wait()
	e.close(ctx)
	if err != nil {
		return nil, err
	}
	if err := w.start(ctx, false, ""); err != nil {
		return nil, err
	}
	if err := w.caughtUp(ctx, 30*time.Minute); err != nil {
		return nil, err
	}
	after, _ := w.rec.snapshot()
	cm, total := diffCalls(before, after)
	res.CoalesceInvoices, res.CoalesceChanges, res.CoalesceCalls, res.CoalesceByCall = n, len(chs), total, formatCalls(cm)
	res.CoalescePUTs = cm["PUT /sales_invoices/{id}"]
	return res, nil
}
