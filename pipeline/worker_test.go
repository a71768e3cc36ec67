package pipeline

import (
	"context"
	"errors"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gessync/gessync/cdc"
	"github.com/gessync/gessync/state"
	"github.com/gessync/gessync/transform"
)

// invoiceMappings is a Store that knows only the id map's invoices (what route reads); any
// other call panics.
type invoiceMappings struct {
	Store
	invoices map[int64]state.Mapping
}

func (s invoiceMappings) Mapping(_ context.Context, table string, id int64) (state.Mapping, error) {
	if m, ok := s.invoices[id]; ok && table == "invoices" {
		return m, nil
	}
	return state.Mapping{}, state.ErrNotFound
}

func row(cols ...any) cdc.Row {
	r := cdc.Row{}
	for i := 0; i < len(cols); i += 2 {
		r[cols[i].(string)] = cdc.Value{Text: strconv.FormatInt(int64(cols[i+1].(int)), 10)}
	}
	return r
}

func streamed(table string, op cdc.Op, r cdc.Row) item {
	ch := cdc.Change{Table: table, Op: op, CommitLSN: 0x100}
	if op == cdc.Delete {
		ch.Key = r
	} else {
		ch.New = r
	}
	return item{ch: ch}
}

// routeTo routes it and returns its lane's index, -1 for a barrier.
func routeTo(t *testing.T, w *worker, it item) (int, item) {
	t.Helper()
	l := w.route(context.Background(), &it)
	if l == nil {
		return -1, it
	}
	return l.index, it
}

// twoCustomers returns two customer ids whose records go to different lanes of w.
func twoCustomers(t *testing.T, w *worker) (a, b int64) {
	a = 1
	for b = 2; b < 100; b++ {
		if w.laneFor(a) != w.laneFor(b) {
			return a, b
		}
	}
	t.Fatal("no two customers in different lanes")
	return
}

func TestOneCustomersRecordsShareALaneAndOthersDoNot(t *testing.T) {
	const company = 7
	p := New(Config{Lanes: 4})
	w := newWorker(p, company, false, nil)
	a, b := twoCustomers(t, w)
	p.cfg.Store = invoiceMappings{invoices: map[int64]state.Mapping{
		// Invoice 20 reached Sage for customer a; 21 belongs to another company.
		20: {Table: "invoices", GESID: 20, CompanyID: company, ParentID: a},
		21: {Table: "invoices", GESID: 21, CompanyID: company + 1, ParentID: a},
	}}

	ca, _ := routeTo(t, w, streamed("customers", cdc.Insert, row("id", int(a), "company_id", company)))
	cb, _ := routeTo(t, w, streamed("customers", cdc.Insert, row("id", int(b), "company_id", company)))
	if ca < 0 || cb < 0 || ca == cb {
		t.Fatalf("customers %d and %d went to lanes %d and %d; want two different lanes", a, b, ca, cb)
	}
	inv, invItem := routeTo(t, w, streamed("invoices", cdc.Insert, row("id", 10, "company_id", company, "customer_id", int(a))))
	if inv != ca {
		t.Fatalf("customer %d's new invoice went to lane %d; want its customer's lane %d", a, inv, ca)
	}
	// A payment of that invoice follows it, though the invoice is not in the id map yet.
	pay, payItem := routeTo(t, w, streamed("payments", cdc.Insert, row("id", 30, "company_id", company, "invoice_id", 10)))
	if pay != ca {
		t.Fatalf("the payment of an invoice in lane %d went to lane %d", ca, pay)
	}
	// A payment of an invoice not in a lane goes to the lane of the invoice's customer in the
	// id map.
	if got, _ := routeTo(t, w, streamed("payments", cdc.Insert, row("id", 31, "company_id", company, "invoice_id", 20))); got != ca {
		t.Fatalf("the payment of invoice 20 (customer %d in the id map) went to lane %d; want %d", a, got, ca)
	}

	// The invoice moves to customer b while its change and its payment's are still in lane ca:
	// the move waits for them (a barrier), else it could reach Sage before them.
	if got, _ := routeTo(t, w, streamed("invoices", cdc.Update, row("id", 10, "company_id", company, "customer_id", int(b)))); got != -1 {
		t.Fatalf("an invoice moving to another customer while its change is in lane %d went to lane %d; want a barrier", ca, got)
	}
	// So does a payment moving to an invoice of customer b.
	routeTo(t, w, streamed("invoices", cdc.Insert, row("id", 11, "company_id", company, "customer_id", int(b))))
	if got, _ := routeTo(t, w, streamed("payments", cdc.Update, row("id", 30, "company_id", company, "invoice_id", 11))); got != -1 {
		t.Fatalf("a payment moving to another customer's invoice while its change is in lane %d went to lane %d; want a barrier", ca, got)
	}
	// Once they are handled, the invoice is free to go to its new customer's lane.
	w.unclaim(invItem.claimed)
	w.unclaim(payItem.claimed)
	w.unclaim([]transform.Record{{Table: "payments", ID: 31}, {Table: "invoices", ID: 20}})
	got, moved := routeTo(t, w, streamed("invoices", cdc.Update, row("id", 10, "company_id", company, "customer_id", int(b))))
	if got != cb {
		t.Fatalf("invoice 10, moved to customer %d with nothing of it in a lane, went to lane %d; want %d", b, got, cb)
	}
	w.unclaim(moved.claimed)
	// With nothing of it in a lane and nothing in the id map, invoice 10's next payment still
	// finds its customer's lane: the router remembers the invoices it routed.
	if got, _ := routeTo(t, w, streamed("payments", cdc.Insert, row("id", 34, "company_id", company, "invoice_id", 10))); got != cb {
		t.Fatalf("a payment of invoice 10 (last routed for customer %d) went to lane %d; want %d", b, got, cb)
	}

	// A dependent a lane syncs is held: another lane's change of it waits.
	release, ok := w.lanes[ca].hold(transform.Record{Table: "invoices", ID: 12}, row("id", 12, "customer_id", int(a)))
	if !ok {
		t.Fatal("lane could not hold a free invoice")
	}
	if got, _ := routeTo(t, w, streamed("invoices", cdc.Update, row("id", 12, "company_id", company, "customer_id", int(b)))); got != -1 {
		t.Fatalf("an invoice lane %d is syncing as a dependent went to lane %d; want a barrier", ca, got)
	}
	if _, ok := w.lanes[cb].hold(transform.Record{Table: "invoices", ID: 12}, nil); ok {
		t.Fatal("two lanes held one invoice")
	}
	release()

	for _, c := range []struct {
		what string
		it   item
	}{
		{"a delete (only the key)", streamed("customers", cdc.Delete, row("id", int(a)))},
		{"a resync (read as GES holds it now)", item{ch: cdc.Change{Table: "customers", Op: cdc.Update, New: row("id", int(a), "company_id", company)}}},
		{"a payment whose invoice is in no lane and not in the id map", streamed("payments", cdc.Insert, row("id", 32, "company_id", company, "invoice_id", 99))},
		{"a payment whose invoice the id map gives another company", streamed("payments", cdc.Insert, row("id", 33, "company_id", company, "invoice_id", 21))},
		{"an invoice without a customer", streamed("invoices", cdc.Insert, row("id", 13, "company_id", company))},
	} {
		if got, _ := routeTo(t, w, c.it); got != -1 {
			t.Errorf("%s went to lane %d; want a barrier", c.what, got)
		}
	}
	w.setParked(true)
	if got, _ := routeTo(t, w, streamed("customers", cdc.Update, row("id", int(b), "company_id", company))); got != -1 {
		t.Errorf("a change of a parked company went to lane %d; want a barrier (the backlog keeps commit order)", got)
	}
}

// parkStore is a Store for a company whose Sage is down: it counts parked changes and signals
// each read of the backlog (a probe).
type parkStore struct {
	Store
	parked atomic.Int32
	probed chan struct{}
}

func (s *parkStore) ParentsWithHash(context.Context, string, string) (map[int64][]int64, error) {
	return nil, nil
}
func (s *parkStore) BacklogSizes(context.Context) (map[int64]int, error)       { return nil, nil }
func (s *parkStore) Replacements(context.Context) ([]state.Replacement, error) { return nil, nil }
func (s *parkStore) Count(context.Context, int64, state.Outcome, int) error    { return nil }
func (s *parkStore) Park(context.Context, int64, string, int64, bool) error {
	s.parked.Add(1)
	return nil
}
func (s *parkStore) Backlog(context.Context, int64, int) ([]state.BacklogEntry, error) {
	select {
	case s.probed <- struct{}{}:
	default:
	}
	return []state.BacklogEntry{{CompanyID: 7, Table: "customers", ID: 1}}, nil // still there
}

// sageDown answers every session request with a retryable failure.
type sageDown struct{}

func (sageDown) Session(context.Context, int64) (Sage, state.Connection, error) {
	return nil, state.Connection{}, errors.New("sage down")
}

// A lane that parks its company (Sage refused for ParkAfter) gets the backlog probed, though
// no other change arrives to wake the router.
func TestACompanyParkedByALaneIsProbed(t *testing.T) {
	st := &parkStore{probed: make(chan struct{}, 1)}
	p := New(Config{Store: st, Connections: sageDown{}, Tracker: NewTracker(0), Lanes: 2,
		RetryMin: time.Millisecond, RetryMax: 2 * time.Millisecond, ParkAfter: 20 * time.Millisecond, ProbeEvery: 50 * time.Millisecond})
	in := make(chan cdc.Event, 2)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx, in) }()
	in <- cdc.Event{Kind: cdc.EventChange, Change: cdc.Change{Table: "customers", Op: cdc.Insert, CommitLSN: 0x10, New: row("id", 1, "company_id", 7)}}
	in <- cdc.Event{Kind: cdc.EventCommit, CommitLSN: 0x10, EndLSN: 0x20}
	select {
	case <-st.probed:
	case <-time.After(20 * time.Second):
		t.Fatalf("a company parked by a lane (%d changes parked) was never probed", st.parked.Load())
	}
	if st.parked.Load() != 1 {
		t.Fatalf("parked %d changes; want 1", st.parked.Load())
	}
	cancel()
	<-done
}

func customerRow(id int64, ref string) cdc.Row {
	r := row("id", int(id), "company_id", 7)
	r["account_ref"] = cdc.Value{Text: ref}
	r["notes"] = cdc.Value{Text: "gate code " + ref}
	return r
}

// A change that may move a customer's match keys (reference, email, name, postcode) holds
// them: another lane's customer change waits for it, and it is never coalesced.
func TestAChangeOfMatchKeysHoldsThemFromOtherLanes(t *testing.T) {
	p := New(Config{Lanes: 4})
	w := newWorker(p, 7, false, nil)
	a, b := twoCustomers(t, w)
	la := w.laneFor(a)

	_, ins := routeTo(t, w, streamed("customers", cdc.Insert, customerRow(a, "BENN01")))
	if ins.rekeys {
		t.Fatal("an insert takes keys; it frees none")
	}
	notes := customerRow(a, "BENN01")
	notes["notes"] = cdc.Value{Text: "new gate code"}
	if _, it := routeTo(t, w, streamed("customers", cdc.Update, notes)); it.rekeys {
		t.Fatal("an update of the notes alone was taken to move the customer's match keys")
	}
	got, rename := routeTo(t, w, streamed("customers", cdc.Update, customerRow(a, "BENN02")))
	if got != la || !rename.rekeys {
		t.Fatalf("a new reference went to lane %d (rekeys %v); want lane %d, rekeys", got, rename.rekeys, la)
	}
	if got, _ := routeTo(t, w, streamed("customers", cdc.Insert, customerRow(b, "BENN01"))); got != -1 {
		t.Fatalf("a new customer in another lane went to lane %d while a reference change is in lane %d; want a barrier", got, la)
	}
	w.unclaim(rename.claimed)
	if got, _ := routeTo(t, w, streamed("customers", cdc.Insert, customerRow(b, "BENN01"))); got == -1 {
		t.Fatal("a new customer is still a barrier after the reference change was handled")
	}
	// A record the router has not seen may move its keys.
	if _, it := routeTo(t, w, streamed("invoices", cdc.Update, row("id", 77, "company_id", 7, "customer_id", int(a)))); !it.rekeys {
		t.Fatal("an update of an invoice the router never saw was not taken to move its number")
	}
}
