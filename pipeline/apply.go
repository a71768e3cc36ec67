package pipeline

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/shopspring/decimal"

	"github.com/gessync/gessync/cdc"
	"github.com/gessync/gessync/sink/sage"
	"github.com/gessync/gessync/state"
	"github.com/gessync/gessync/transform"
)

// retryable marks a failure that must not count as handled: the change is tried again.
type retryable struct{ err error }

func (r *retryable) Error() string { return r.err.Error() }
func (r *retryable) Unwrap() error { return r.err }

// handle applies one change until it is handled; it returns an error only when state itself
// fails (or ctx ends), which stops the pipeline.
func (w *lane) handle(ctx context.Context, ch cdc.Change) error {
	wait := w.p.cfg.RetryMin
	lostNoted := false
	var refusedSince time.Time
	for attempt := 1; ; attempt++ {
		kick, _ := w.kicked() // a kick from now on cuts the wait short
		outcome, err := w.apply(ctx, ch)
		if err == nil {
			w.count(outcome)
			if w.p.cfg.Observe != nil {
				w.p.cfg.Observe(ch.Table, outcome)
			}
			return nil
		}
		var r *retryable
		if !errors.As(err, &r) {
			return fmt.Errorf("company %d %s at LSN %s: %w", w.company, ch.Table, ch.CommitLSN, err)
		}
		if refusedSince.IsZero() {
			refusedSince = time.Now()
		}
		if w.isParked() {
			return w.park(ctx, ch) // another lane parked the company meanwhile
		}
		if time.Since(refusedSince) >= w.p.cfg.ParkAfter {
			// This company's Sage has refused for too long: set its changes aside durably so
			// the slot moves on for every other company.
			w.setParked(true)
			w.log.Warn("company parked: its changes go to the backlog until Sage accepts them again", "refused_for", time.Since(refusedSince).Round(time.Second), "err", err)
			return w.park(ctx, ch)
		}
		var re *sage.RetryableError
		if errors.As(err, &re) && re.RetryAfter > wait {
			wait = re.RetryAfter
		}
		if errors.Is(err, sage.ErrConnectionLost) && !lostNoted {
			// Say so where people look: the company's state and its sync log.
			if err := w.connectionLost(ctx); err != nil {
				return err
			}
			lostNoted = true
		}
		w.log.Warn("will retry", "table", ch.Table, "lsn", ch.CommitLSN, "attempt", attempt, "wait", wait, "err", err)
		if err := w.flushCounts(ctx); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-w.p.stopping:
			return errStopped
		case <-kick:
			wait = w.p.cfg.RetryMin // reconnected: try again now
			continue
		case <-time.After(wait):
		}
		wait = min(wait*2, w.p.cfg.RetryMax)
	}
}

// park sets ch aside in the company's durable backlog (state.Park): the change counts as
// handled, and its record goes to Sage, in its latest state, when the backlog drains.
func (w *worker) park(ctx context.Context, ch cdc.Change) error {
	row := ch.New
	if row == nil {
		row = ch.Key
	}
	id, ok := row.ID()
	if !ok {
		return nil
	}
	return w.p.cfg.Store.Park(ctx, w.company, ch.Table, id, ch.Op == cdc.Delete)
}

// drain tries the company's backlog in order. It stops at the first retryable failure (the
// company stays parked) and unparks the company once the backlog is empty.
func (w *lane) drain(ctx context.Context) error {
	w.setParked(true) // the next probe is ProbeEvery from now
	for !w.p.stopped() {
		entries, err := w.p.cfg.Store.Backlog(ctx, w.company, 100)
		if err != nil {
			return err
		}
		if len(entries) == 0 {
			w.setParked(false)
			w.log.Info("backlog drained: company back to streaming")
			return nil
		}
		for _, e := range entries {
			outcome, err := w.applyParked(ctx, e)
			var rt *retryable
			if errors.As(err, &rt) {
				w.log.Info("backlog still refused; will try again", "backlog_head", fmt.Sprintf("%s/%d", e.Table, e.ID), "err", err)
				return nil
			}
			if err != nil {
				return err
			}
			if err := w.p.cfg.Store.Unpark(ctx, e); err != nil {
				return err
			}
			if err := w.p.cfg.Store.Count(ctx, w.company, outcome, 1); err != nil {
				return err
			}
			if w.p.stopped() {
				return nil // the rest stays in the backlog for the next start
			}
		}
	}
	return nil
}

// applyParked sends one backlog entry: its record's delete, or its current GES row, through
// apply as a resync (commit LSN 0: the row is read as it is now).
func (w *lane) applyParked(ctx context.Context, e state.BacklogEntry) (state.Outcome, error) {
	id := cdc.Row{"id": {Text: strconv.FormatInt(e.ID, 10)}}
	if e.Deleted {
		return w.apply(ctx, cdc.Change{Table: e.Table, Op: cdc.Delete, Key: id})
	}
	id["company_id"] = cdc.Value{Text: strconv.FormatInt(w.company, 10)}
	return w.apply(ctx, cdc.Change{Table: e.Table, Op: cdc.Update, New: id})
}

// connectionLost marks the company's connection lost: its changes wait, in order, until it is
// reconnected.
func (w *worker) connectionLost(ctx context.Context) error {
	return MarkConnectionLost(ctx, w.p.cfg.Store, w.company,
		"Sage no longer accepts this company's connection (consent expired or withdrawn, or the subscription lapsed).")
}

// LostMarker is what MarkConnectionLost writes through (state.Store).
type LostMarker interface {
	SetStatus(ctx context.Context, companyID int64, status, detail string) error
	OpenOf(ctx context.Context, companyID int64, code string) ([]state.Entry, error)
	Log(ctx context.Context, e state.Entry) error
}

// MarkConnectionLost sets company's connection status to "lost" with detail (why, in plain
// words) and writes one sync-log entry saying what to do, unless one is already open.
func MarkConnectionLost(ctx context.Context, s LostMarker, companyID int64, detail string) error {
	if err := s.SetStatus(ctx, companyID, "lost", detail); err != nil {
		return err
	}
	open, err := s.OpenOf(ctx, companyID, "connection.lost")
	if err != nil || len(open) > 0 {
		return err
	}
	return s.Log(ctx, state.Entry{CompanyID: companyID, Level: state.LevelError, Code: "connection.lost",
		Message: detail + " Changes wait and are sent, in order, once it is reconnected.",
		Action:  "Reconnect the company to Sage on the settings page (Connect to Sage)."})
}

// job is one record to bring into Sage, with what is known of it.
type job struct {
	rec  transform.Record
	row  cdc.Row // nil for a delete
	lsn  pglogrepl.LSN
	conn state.Connection
	sage Sage
	// depth counts how deep in parent and dependent syncs this job is.
	depth int
}

func (w *lane) apply(ctx context.Context, ch cdc.Change) (outcome state.Outcome, err error) {
	clear(w.attempts)
	defer func() {
		if ferr := w.forgetUnsentAttempts(ctx); ferr != nil && err == nil {
			outcome, err = "", ferr
		}
	}()
	sess, conn, err := w.p.cfg.Connections.Session(ctx, w.company)
	if errors.Is(err, ErrNotConnected) {
		return state.Skipped, nil
	}
	if err != nil {
		return "", &retryable{err}
	}
	if !wanted(conn.Settings, ch.Table) {
		return state.Skipped, nil
	}
	row := ch.New
	if row == nil {
		row = ch.Key
	}
	id, ok := row.ID()
	if !ok {
		return state.Skipped, nil
	}
	j := job{rec: transform.Record{Table: ch.Table, ID: id}, lsn: ch.CommitLSN, conn: conn, sage: sess}
	if ch.Op == cdc.Delete {
		return w.delete(ctx, j)
	}
	j.row = row
	if ch.CommitLSN == 0 {
		// A resync: read the row as it is now, so that a row read when the request was queued
		// never overwrites a newer change applied meanwhile.
		cur, err := w.p.cfg.Rows.Row(ctx, ch.Table, id)
		if errors.Is(err, cdc.ErrRowGone) {
			return state.Skipped, nil
		}
		if err != nil {
			return "", &retryable{err}
		}
		if c, ok := cur.Int("company_id"); !ok || c != w.company {
			return state.Skipped, nil
		}
		j.row, row = cur, cur
	}
	if row.HasUnchanged() {
		// An unchanged TOAST value is not in the message: read it, never blank it.
		cur, err := readRow(ctx, w.p.cfg.Rows, ch.CommitLSN, ch.Table, id)
		if errors.Is(err, cdc.ErrRowGone) {
			return state.Skipped, nil // deleted since; the delete follows in the stream
		}
		if err != nil {
			return "", &retryable{err}
		}
		filled := make(cdc.Row, len(row))
		for k, v := range row {
			if v.Unchanged {
				v = cur[k]
			}
			filled[k] = v
		}
		j.row = filled
	}
	return w.upsert(ctx, j, 0)
}

func isCreate(k transform.Kind) bool {
	return k == transform.CreateContact || k == transform.CreateSalesInvoice || k == transform.CreateContactPayment
}

// asUpdate turns a create into the update of the existing Sage record id.
func asUpdate(op transform.Op, id string) transform.Op {
	op.SageID = id
	switch op.Kind {
	case transform.CreateContact:
		op.Kind = transform.UpdateContact
		c := *op.Contact
		c.IdempotencyID = ""
		op.Contact = &c
	case transform.CreateSalesInvoice:
		op.Kind = transform.UpdateSalesInvoice
		inv := *op.SalesInvoice
		inv.IdempotencyID = ""
		op.SalesInvoice = &inv
	case transform.CreateContactPayment:
		op.Kind = transform.UpdateContactPayment
		p := *op.ContactPayment
		p.IdempotencyID = ""
		op.ContactPayment = &p
	}
	return op
}

// setIdempotencyID sets the idempotency_id of op's create body.
func setIdempotencyID(op transform.Op, id string) {
	switch {
	case op.Contact != nil:
		op.Contact.IdempotencyID = id
	case op.SalesInvoice != nil:
		op.SalesInvoice.IdempotencyID = id
	case op.ContactPayment != nil:
		op.ContactPayment.IdempotencyID = id
	}
}

func isArtefactClash(err error) bool {
	var api *sage.APIError
	return errors.As(err, &api) && api.HasMessage("Artefact number must be unique")
}

func wanted(s state.Settings, table string) bool {
	switch table {
	case "customers":
		return s.SyncCustomers
	case "invoices":
		return s.SyncInvoices && s.SyncCustomers
	case "payments":
		return s.SyncPayments && s.SyncInvoices && s.SyncCustomers
	}
	return false
}

// mapping returns the id map entry of rec in the connection's business, or a zero Mapping.
func (w *lane) mapping(ctx context.Context, j job, table string, id int64) (state.Mapping, error) {
	m, err := w.p.cfg.Store.Mapping(ctx, table, id)
	if errors.Is(err, state.ErrNotFound) {
		return state.Mapping{}, nil
	}
	if err != nil {
		return state.Mapping{}, &stateError{err}
	}
	return w.own(j, m), nil
}

// forgetUnsentAttempts deletes the create attempts recorded with a mapping read in this try
// (lane.mappingPair) that no create followed (lookupFor takes an attempt before its create is
// sent): a draft, an invalid row, a parent that did not sync. Left, they would make the
// record's real create search Sage first.
func (w *lane) forgetUnsentAttempts(ctx context.Context) error {
	for rec, a := range w.attempts {
		if !a.first {
			continue // recorded before this try: a create may have reached Sage
		}
		if err := w.p.cfg.Store.ForgetAttempt(ctx, rec.Table, rec.ID, a.business); err != nil {
			return &stateError{err}
		}
	}
	clear(w.attempts)
	return nil
}

// stateError is a failure of gessync's own state database while a change was being planned:
// never the record's fault, so it stops the change (the pipeline restarts and replays it)
// instead of landing in the sync log as a problem with the row.
type stateError struct{ err error }

func (e *stateError) Error() string { return "state database: " + e.err.Error() }
func (e *stateError) Unwrap() error { return e.err }

// mappingPair is mapping for j's record and its parent, read in one round trip. For an invoice
// or payment made since the connection (lookupFor), the same statement records the create
// attempt when the record has no mapping, and w.attempts keeps the answer for lookupFor.
func (w *lane) mappingPair(ctx context.Context, j job, parentTable string, parentID int64) (self, parent state.Mapping, err error) {
	if !w.newSinceConnection(j) {
		self, parent, err = w.p.cfg.Store.MappingPair(ctx, j.rec.Table, j.rec.ID, parentTable, parentID)
	} else {
		var first bool
		self, parent, first, err = w.p.cfg.Store.MappingPairAttempt(ctx, j.rec.Table, j.rec.ID, parentTable, parentID, j.conn.BusinessID, w.company)
		if err == nil && w.own(j, self).SageID == "" {
			if w.attempts == nil {
				w.attempts = map[transform.Record]attempt{}
			}
			// Planned again in the same change (after its parent synced), the record finds
			// its own attempt: no create of it was sent in between, so the first answer holds.
			if seen, ok := w.attempts[j.rec]; !ok || !seen.first {
				w.attempts[j.rec] = attempt{first: first, business: j.conn.BusinessID}
			}
		}
	}
	if err != nil {
		return state.Mapping{}, state.Mapping{}, &stateError{err}
	}
	return w.own(j, self), w.own(j, parent), nil
}

// own is m when it is this company's in j's Sage business, and no mapping otherwise.
func (w *lane) own(j job, m state.Mapping) state.Mapping {
	if m.BusinessID != j.conn.BusinessID || m.CompanyID != w.company {
		return state.Mapping{}
	}
	return m
}

func (w *lane) delete(ctx context.Context, j job) (state.Outcome, error) {
	m, err := w.mapping(ctx, j, j.rec.Table, j.rec.ID)
	if err != nil {
		return "", err
	}
	if m.SageID == "" {
		// Nothing of it in Sage to delete: what waited on it goes with it (a create attempt,
		// a replacement, the errors a person was asked to look at).
		if err := w.p.cfg.Store.ForgetAttempt(ctx, j.rec.Table, j.rec.ID, j.conn.BusinessID); err != nil {
			return "", err
		}
		w.p.replaced(j.rec.Table, j.rec.ID)
		if err := w.p.cfg.Store.Resolve(ctx, j.rec.Table, j.rec.ID); err != nil {
			return "", err
		}
		return state.Skipped, nil
	}
	if j.rec.Table == "invoices" && m.PayloadHash == "deleted" {
		return state.Skipped, nil // voided already
	}
	ops, err := transform.PlanDelete(j.rec, j.conn.Settings.Sage, transform.Known{Self: m.SageID})
	if err != nil {
		return w.failed(ctx, j, err)
	}
	for _, op := range ops {
		if _, err := w.call(ctx, j, op); err != nil {
			if sage.IsRefused(err) && sage.IsNotFound(err) {
				continue // already gone in Sage
			}
			var ae *sage.APIError
			if j.rec.Table == "customers" && errors.As(err, &ae) && ae.HasMessage("transactions") {
				// Sage keeps a contact with transactions; nothing for a person to do.
				if _, err := w.note(ctx, j, state.LevelInfo, "contact.kept",
					"The customer was deleted in GES; Sage keeps its contact because it has transactions there.", "", ""); err != nil {
					return "", err
				}
				continue
			}
			return w.failed(ctx, j, err)
		}
	}
	if j.rec.Table == "invoices" {
		// A voided invoice keeps its mapping: it still exists in Sage, as void.
		m.LSN = j.lsn
		m.PayloadHash = "deleted"
		if err := w.p.cfg.Store.SaveMapping(ctx, m); err != nil {
			return "", err
		}
	} else if err := w.p.cfg.Store.DeleteMapping(ctx, j.rec.Table, j.rec.ID); err != nil {
		return "", err
	}
	return w.synced(ctx, j, false, nil)
}

// upsert plans and applies an insert or update of j.row. depth counts parent syncs.
func (w *lane) upsert(ctx context.Context, j job, depth int) (state.Outcome, error) {
	j.depth = depth
	w.invoice = nil
	searched := w.searched.Load() // creates after a search so far (see below)
	ops, m, err := w.plan(ctx, j)
	var missing *transform.MissingParentError
	if errors.As(err, &missing) && depth < 2 {
		outcome, perr := w.syncParent(ctx, j, missing.Parent, depth+1)
		var invalid *transform.InvalidError
		if errors.As(perr, &invalid) {
			return w.failed(ctx, j, perr)
		}
		if perr != nil {
			return outcome, perr
		}
		if outcome != state.Synced {
			return w.note(ctx, j, state.LevelError, waitingCode(missing.Parent), fmt.Sprintf("This %s could not reach Sage because its %s (%s) did not sync.", singular(j.rec.Table), singular(missing.Parent.Table), missing.Parent),
				"", fmt.Sprintf("Fix the %s shown in the sync log; then press Retry here.", singular(missing.Parent.Table)))
		}
		ops, m, err = w.plan(ctx, j)
	}
	if err != nil {
		return w.failed(ctx, j, err)
	}
	if len(ops) == 0 {
		return state.Skipped, nil
	}
	changed := false
	// The last op's mapping is saved with the record's errors resolved in the same round trip,
	// unless an invoice's re-allocation is still to come (it may fail after: reallocate).
	resolved := false
	var waiting []state.Entry
	wk, _ := w.waker(j)
	// A create that searches Sage first holds its match keys until its mapping is saved.
	var matching []string
	replacing := false // a create replacing a Sage record that is gone (Pipeline.Replacing)
	release := func() {
		if matching != nil {
			w.unlockMatch(matching)
			matching = nil
		}
	}
	defer release()
	for i, op := range ops {
		if op.SageID == "" && !isCreate(op.Kind) {
			op.SageID = m.SageID // the record created by the previous op (create, then void)
		}
		if !isCreate(op.Kind) && op.Hash != "" && op.Hash == m.PayloadHash && !m.Unacknowledged {
			continue // Sage already has exactly this
		}
		attempted := false // this op recorded an update attempt
		if !isCreate(op.Kind) && m.SageID != "" && !m.Unacknowledged {
			// Before the update is sent: were its reply lost, Sage might hold it while the
			// mapping says otherwise (state.AttemptUpdate).
			if err := w.p.cfg.Store.AttemptUpdate(ctx, j.rec.Table, j.rec.ID, j.conn.BusinessID); err != nil {
				return "", fmt.Errorf("%s at LSN %s: %w", j.rec, j.lsn, err)
			}
			m.Unacknowledged, attempted = true, true
		}
		changed = true
		var res callResult
		var err error
		same := false
		if isCreate(op.Kind) {
			look, moved, err := w.lookupFor(ctx, j, m.ParentID)
			if err != nil {
				return "", err
			}
			if replaces := w.p.replaces(j.rec.Table, j.rec.ID, j.conn.BusinessID); replaces != "" {
				setIdempotencyID(op, transform.IdempotencyIDReplacing(j.conn.BusinessID, j.rec, replaces))
				replacing = true
			}
			movedFrom, err := w.movedFrom(ctx, j, moved)
			if err != nil {
				return "", err
			}
			switch look {
			case lookOnInvoice:
				// The receipts on an invoice are searched by its payments, in its customer's
				// lane, and by one moved away from it (below), in another's.
				matching = []string{"receipts of invoice " + w.known.SalesInvoice}
				w.lockMatch(matching)
			case lookEverywhere:
				matching = matchKeys(j.rec, op)
				if j.rec.Table == "payments" {
					for _, invoice := range movedFrom {
						matching = append(matching, "receipts of invoice "+invoice)
					}
				}
				w.lockMatch(matching)
				// Another lane may have created it since plan read its mapping (a parent
				// synced from its child): then it is updated, not searched for.
				if w.searched.Load() != searched {
					cur, err := w.mapping(ctx, j, j.rec.Table, j.rec.ID)
					if err != nil {
						return "", err
					}
					if cur.SageID != "" {
						m, op, look = cur, asUpdate(op, cur.SageID), lookNowhere
					}
				}
			}
			var id, key string
			switch look {
			case lookEverywhere:
				id, key, same, err = w.match(ctx, j, op, movedFrom)
			case lookOnInvoice:
				id, key, err = w.matchAllocated(ctx, j, w.invoice, op.ContactPayment)
			}
			if err != nil {
				return w.failed(ctx, j, err)
			}
			if id != "" {
				op = asUpdate(op, id)
				if op.ContactPayment != nil {
					if op, err = w.replanLinked(j, op); err != nil {
						return w.failed(ctx, j, err)
					}
				}
				if err := w.logMatch(ctx, j, key, id); err != nil {
					return "", err
				}
				res.id = id
				if op.SalesInvoice != nil {
					res.contactID = op.SalesInvoice.ContactID
				} else if op.ContactPayment != nil {
					res.contactID = op.ContactPayment.ContactID
				}
			}
		}
		if !same {
			res, err = w.call(ctx, j, op)
			w.log.Debug("sage write", "op", op.Kind.String(), "record", j.rec.String(), "sage_id", op.SageID, "lsn", j.lsn, "err", err)
		}
		if err != nil && op.Kind == transform.CreateSalesInvoice && isArtefactClash(err) {
			id, lerr := w.linkExisting(ctx, j, op.SalesInvoice)
			if lerr != nil {
				return w.failed(ctx, j, lerr)
			}
			if id != "" {
				op = asUpdate(op, id)
				if err := w.logMatch(ctx, j, "invoice number, contact and total", id); err != nil {
					return "", err
				}
				res, err = w.call(ctx, j, op)
			}
		}
		if err != nil && needsUnallocation(err) && (op.Kind == transform.UpdateSalesInvoice || op.Kind == transform.VoidSalesInvoice) {
			res, err = w.unallocateAndRetry(ctx, j, op)
		}
		if err != nil && attempted && sage.IsRefused(err) {
			// Sage answered that it did not apply the update (a submitted VAT return, say): it
			// holds what the mapping says, so a later change back to that needs no call. Kept,
			// the attempt would send that change, and Sage would refuse it again.
			if ferr := w.p.cfg.Store.ForgetAttempt(ctx, j.rec.Table, j.rec.ID, j.conn.BusinessID); ferr != nil {
				return "", fmt.Errorf("%s at LSN %s: %w", j.rec, j.lsn, ferr)
			}
		}
		if err != nil {
			return w.failed(ctx, j, err)
		}
		m.Table, m.GESID, m.CompanyID, m.BusinessID, m.LSN, m.PayloadHash = j.rec.Table, j.rec.ID, w.company, j.conn.BusinessID, j.lsn, op.Hash
		m.Unacknowledged = false // SaveMapping forgets the attempt
		if res.id != "" {
			m.SageID = res.id
		}
		if res.contactID != "" {
			m.ContactID = res.contactID
		}
		if i == len(ops)-1 && (j.rec.Table != "invoices" || !w.isSetAside(j.rec.ID)) {
			// The notes below are warnings, which resolving errors leaves alone.
			if waiting, err = w.p.cfg.Store.SaveMappingAndResolve(ctx, m, wk); err != nil {
				return "", err
			}
			resolved = true
		} else if err := w.p.cfg.Store.SaveMapping(ctx, m); err != nil {
			return "", err
		}
		release()
		if replacing {
			w.p.replaced(j.rec.Table, j.rec.ID) // SaveMapping forgot its attempt
			replacing = false
		}
		for _, note := range op.Notes {
			if _, err := w.note(ctx, j, state.LevelWarning, "note", note, "", "Nothing to do if this is expected; otherwise correct the record in GES and it syncs again."); err != nil {
				return "", err
			}
		}
		if res.mismatch != "" {
			if _, err := w.note(ctx, j, state.LevelWarning, "totals.mismatch", res.mismatch, "", "Compare the invoice in GES and Sage; tell the GES team if GES's own totals are wrong."); err != nil {
				return "", err
			}
		}
	}
	if j.rec.Table == "invoices" {
		// Payments unallocated to let this invoice change are allocated again now, after every
		// handling of the invoice, even when its update was already done: the three steps
		// (unallocate, update, allocate again) resume after a crash or a failure.
		if outcome, err := w.reallocate(ctx, j); err != nil || outcome == state.Failed {
			return outcome, err
		}
	}
	if !changed {
		return state.Skipped, w.p.cfg.Store.Resolve(ctx, j.rec.Table, j.rec.ID)
	}
	return w.synced(ctx, j, resolved, waiting)
}

// plan decodes j.row and asks transform for the ops, with the Sage ids known for it and its
// parents. It returns the record's current mapping too.
func (w *lane) plan(ctx context.Context, j job) ([]transform.Op, state.Mapping, error) {
	s := j.conn.Settings.Sage
	switch j.rec.Table {
	case "customers":
		self, err := w.mapping(ctx, j, j.rec.Table, j.rec.ID)
		if err != nil {
			return nil, self, err
		}
		c, err := transform.DecodeCustomer(j.row)
		if err != nil {
			return nil, self, err
		}
		ops, err := transform.PlanCustomer(c, s, transform.Known{Self: self.SageID})
		return ops, self, err
	case "invoices":
		inv, err := transform.DecodeInvoice(j.row)
		if err != nil {
			return nil, state.Mapping{}, err
		}
		// The customer's GES row (CIS) and the id map are read at once: two databases, one wait.
		type read struct {
			row cdc.Row
			err error
		}
		customer := make(chan read, 1)
		go func() {
			row, err := readRow(ctx, w.p.cfg.Rows, j.lsn, "customers", inv.CustomerID)
			customer <- read{row, err}
		}()
		self, cm, err := w.mappingPair(ctx, j, "customers", inv.CustomerID)
		cr := <-customer
		if err != nil {
			return nil, self, err
		}
		self.ParentID = inv.CustomerID
		k := transform.Known{Self: self.SageID, Contact: cm.SageID}
		var cust transform.Customer
		if crow, err := cr.row, cr.err; err == nil {
			if cust, err = transform.DecodeCustomer(crow); err != nil {
				return nil, self, err
			}
			if cust.CompanyID != inv.CompanyID {
				return nil, self, &transform.InvalidError{Record: j.rec, Field: "customer_id",
					Reason: fmt.Sprintf("the invoice points at customer %d, who belongs to another company", inv.CustomerID),
					Action: "Choose one of this company's customers on the invoice in GES."}
			}
		} else if !errors.Is(err, cdc.ErrRowGone) {
			return nil, self, &retryable{err}
		}
		ops, err := transform.PlanInvoice(inv, cust, s, k)
		return ops, self, err
	case "payments":
		p, err := transform.DecodePayment(j.row)
		if err != nil {
			return nil, state.Mapping{}, err
		}
		self, im, err := w.mappingPair(ctx, j, "invoices", p.InvoiceID)
		if err != nil {
			return nil, self, err
		}
		self.ParentID = p.InvoiceID
		k := transform.Known{Self: self.SageID, SalesInvoice: im.SageID, Contact: im.ContactID}
		defer func() { w.known = k }()
		if self.SageID != "" && im.SageID != "" {
			// A payment whose own fields and invoice are what Sage already has needs no update,
			// and so no read of what is outstanding (its Hash does not depend on it).
			if ops, err := transform.PlanPayment(p, s, k); err == nil && len(ops) == 1 && ops[0].Hash == self.PayloadHash && !self.Unacknowledged {
				return ops, self, nil
			}
		}
		if im.SageID != "" {
			out, err := w.outstanding(ctx, j, im.SageID, self.SageID)
			if err != nil {
				return nil, self, err
			}
			k.Outstanding = out
		}
		ops, err := transform.PlanPayment(p, s, k)
		return ops, self, err
	}
	return nil, state.Mapping{}, fmt.Errorf("unknown table %s", j.rec.Table)
}

// replanLinked plans again the update of a payment just linked to a receipt already in Sage
// (op, from match or matchAllocated), when that receipt is allocated to the payment's invoice as
// read for its outstanding amount (lane.invoice): the amount it already covers there is
// outstanding again for it, as for any payment's update. Otherwise the update would allocate
// only what is left beside itself and put the rest on account.
func (w *lane) replanLinked(j job, op transform.Op) (transform.Op, error) {
	k := w.known
	if w.invoice == nil || k.Outstanding == nil {
		return op, nil
	}
	out := *k.Outstanding
	own := false
	for _, a := range w.invoice.PaymentsAllocations {
		if a.ContactPayment != nil && a.ContactPayment.ID == op.SageID {
			out, own = out.Add(a.Amount.Decimal), true
		}
	}
	if !own {
		return op, nil
	}
	p, err := transform.DecodePayment(j.row)
	if err != nil {
		return op, err
	}
	k.Self, k.Outstanding = op.SageID, &out
	ops, err := transform.PlanPayment(p, j.conn.Settings.Sage, k)
	if err != nil || len(ops) != 1 {
		return op, err
	}
	return ops[0], nil
}

// outstanding is what Sage says is unpaid on the invoice, plus what this payment allocated
// to it before (so an edit of a payment can allocate up to the same amount again).
func (w *lane) outstanding(ctx context.Context, j job, invoiceID, paymentID string) (*decimal.Decimal, error) {
	inv, err := j.sage.GetSalesInvoice(ctx, invoiceID)
	if err != nil {
		if sage.IsRetryable(err) {
			return nil, &retryable{err}
		}
		return nil, nil // unknown: allocate the whole payment and let Sage judge
	}
	w.invoice = &inv // for matchAllocated, in the same upsert
	out := inv.OutstandingAmount.Decimal
	if paymentID != "" {
		for _, a := range inv.PaymentsAllocations {
			if a.ContactPayment != nil && a.ContactPayment.ID == paymentID {
				out = out.Add(a.Amount.Decimal)
			}
		}
	}
	return &out, nil
}

func (w *lane) syncParent(ctx context.Context, j job, parent transform.Record, depth int) (state.Outcome, error) {
	row, err := readRow(ctx, w.p.cfg.Rows, j.lsn, parent.Table, parent.ID)
	if errors.Is(err, cdc.ErrRowGone) {
		return state.Failed, nil
	}
	if err != nil {
		return "", &retryable{err}
	}
	if c, ok := row.Int("company_id"); !ok || c != w.company {
		// Never write another company's records into this company's books.
		return "", &transform.InvalidError{Record: j.rec, Field: "other_company",
			Reason: fmt.Sprintf("This %s points at %s %d, which belongs to another GES company, so nothing was sent to Sage.", singular(j.rec.Table), singular(parent.Table), parent.ID),
			Action: fmt.Sprintf("Correct the %s on this %s in GES.", singular(parent.Table), singular(j.rec.Table))}
	}
	pj := job{rec: parent, row: row, lsn: j.lsn, conn: j.conn, sage: j.sage}
	if !wanted(j.conn.Settings, parent.Table) {
		return state.Skipped, nil
	}
	return w.upsert(ctx, pj, depth)
}

type callResult struct {
	id, contactID string
	mismatch      string
}

// call sends one op to Sage.
func (w *lane) call(ctx context.Context, j job, op transform.Op) (callResult, error) {
	var r callResult
	switch op.Kind {
	case transform.CreateContact:
		c, err := j.sage.CreateContact(ctx, *op.Contact)
		r.id = c.ID
		return r, err
	case transform.UpdateContact:
		c, err := j.sage.UpdateContact(ctx, op.SageID, *op.Contact)
		r.id = c.ID
		return r, err
	case transform.DeleteContact:
		return r, j.sage.DeleteContact(ctx, op.SageID)
	case transform.CreateSalesInvoice, transform.UpdateSalesInvoice:
		var inv sage.SalesInvoice
		var err error
		if op.Kind == transform.CreateSalesInvoice {
			inv, err = j.sage.CreateSalesInvoice(ctx, *op.SalesInvoice)
		} else {
			inv, err = j.sage.UpdateSalesInvoice(ctx, op.SageID, *op.SalesInvoice)
		}
		if err != nil {
			return r, err
		}
		r.id, r.contactID = inv.ID, op.SalesInvoice.ContactID
		if want := op.SalesInvoice.TotalAmount; want != nil && !inv.TotalAmount.Decimal.Equal(want.Decimal) {
			r.mismatch = fmt.Sprintf("Sage's total for this invoice is £%s but GES's is £%s.", inv.TotalAmount.StringFixed(2), want.StringFixed(2))
		}
		return r, nil
	case transform.VoidSalesInvoice:
		inv, err := j.sage.VoidSalesInvoice(ctx, op.SageID, op.VoidReason)
		var api *sage.APIError
		if errors.As(err, &api) && api.HasMessage("already been voided") {
			return callResult{id: op.SageID}, nil // a replay: Sage already holds it void
		}
		r.id = inv.ID
		return r, err
	case transform.CreateContactPayment:
		p, err := j.sage.CreateContactPayment(ctx, *op.ContactPayment)
		r.id, r.contactID = p.ID, op.ContactPayment.ContactID
		return r, err
	case transform.UpdateContactPayment:
		p, err := j.sage.UpdateContactPayment(ctx, op.SageID, *op.ContactPayment)
		r.id, r.contactID = p.ID, op.ContactPayment.ContactID
		return r, err
	case transform.DeleteContactPayment:
		return r, j.sage.DeleteContactPayment(ctx, op.SageID)
	}
	return r, fmt.Errorf("unknown op %s", op.Kind)
}

// waker names the open errors that j's record reaching Sage may unblock (state.Waker), and
// whether they are to be woken: not for a delete, nor deep in parent and dependent syncs.
func (w *lane) waker(j job) (state.Waker, bool) {
	var wk state.Waker
	if j.row == nil || j.depth >= 2 {
		return wk, false
	}
	wk.Code = waitingCode(j.rec)
	if j.rec.Table == "payments" {
		if inv, ok := j.row.Int("invoice_id"); ok {
			wk.Table, wk.ID, wk.OfCode = "invoices", inv, handAllocatedCode
		}
	}
	return wk, true
}

// synced finishes a change that reached Sage: its record's open errors are resolved (already,
// with the waiting ones read, when resolved is true: SaveMappingAndResolve), and the records
// waiting for it are synced again.
func (w *lane) synced(ctx context.Context, j job, resolved bool, waiting []state.Entry) (state.Outcome, error) {
	wk, wake := w.waker(j)
	if !resolved {
		var err error
		if waiting, err = w.p.cfg.Store.ResolveAndWaiting(ctx, w.company, j.rec.Table, j.rec.ID, wk); err != nil {
			return "", err
		}
	}
	if wake && len(waiting) > 0 {
		if err := w.wakeDependents(ctx, j, waiting); err != nil {
			return "", err
		}
	}
	return state.Synced, nil
}

// handAllocatedCode is the sync-log code of an invoice Sage would not change because of
// allocations made in Sage by hand.
const handAllocatedCode = "sage.allocated_by_hand"

// superseded reports whether GES has moved on from j's change: the row is gone, or a later
// change of it is already queued behind this one (and will decide what Sage holds).
func (w *lane) superseded(ctx context.Context, j job) bool {
	if w.p.supersededInQueue(cdc.Change{Table: j.rec.Table, New: j.row}) {
		return true
	}
	_, err := readRow(ctx, w.p.cfg.Rows, j.lsn, j.rec.Table, j.rec.ID)
	return errors.Is(err, cdc.ErrRowGone)
}

// waitingCode is the sync-log code of a record waiting for parent to reach Sage.
func waitingCode(parent transform.Record) string { return "waiting:" + parent.String() }

// wakeDependents syncs again, now that j's record is in Sage, the records whose open errors
// (from ResolveAndWaiting) were waiting for it: children whose parent had not synced, and for a
// receipt just linked, its invoice if Sage refused to change it for a receipt that was not yet
// ours.
func (w *lane) wakeDependents(ctx context.Context, j job, waiting []state.Entry) error {
	var again []transform.Record
	seen := map[transform.Record]bool{}
	for _, e := range waiting {
		rec := transform.Record{Table: e.Table, ID: e.GESID}
		if !seen[rec] {
			seen[rec] = true
			again = append(again, rec)
		}
	}
	for _, rec := range again {
		row, err := readRow(ctx, w.p.cfg.Rows, j.lsn, rec.Table, rec.ID)
		if errors.Is(err, cdc.ErrRowGone) {
			if err := w.p.cfg.Store.Resolve(ctx, rec.Table, rec.ID); err != nil {
				return err
			}
			continue
		}
		if err != nil {
			return &retryable{err}
		}
		unhold, ok := w.hold(rec, row)
		if !ok {
			continue // a change of it is in another lane, and syncs it
		}
		_, err = w.upsert(ctx, job{rec: rec, row: row, lsn: j.lsn, conn: j.conn, sage: j.sage}, j.depth+1)
		unhold()
		if err != nil {
			return err
		}
	}
	return nil
}

// failed turns err into a sync-log entry (the change is handled: it needs a person), or into a
// retryable error (the change will be tried again).
func (w *lane) failed(ctx context.Context, j job, err error) (state.Outcome, error) {
	var se *stateError
	if errors.As(err, &se) {
		return "", err
	}
	var r *retryable
	if errors.As(err, &r) || sage.IsRetryable(err) {
		if !errors.As(err, &r) {
			err = &retryable{err}
		}
		return "", err
	}
	if j.lsn != 0 && j.row != nil && w.superseded(ctx, j) {
		// GES has moved on since this change (the row changed again or is gone): the later
		// change, which follows in the stream, decides what Sage must hold.
		w.log.Info("refusal of a superseded change ignored", "table", j.rec.Table, "id", j.rec.ID, "err", err)
		return state.Skipped, nil
	}
	var amb *ambiguousError
	if errors.As(err, &amb) {
		return w.note(ctx, j, state.LevelError, "match.ambiguous",
			"gessync created nothing: "+amb.Error()+".", "",
			"Decide which Sage record this is (merge or rename the others in Sage, or correct GES), then press Retry.")
	}
	var hand *handAllocatedError
	if errors.As(err, &hand) {
		return w.note(ctx, j, state.LevelError, handAllocatedCode,
			"Sage will not change this invoice while payments are allocated to it, and some were allocated in Sage by hand ("+strings.Join(hand.refs, "; ")+"), so gessync changed nothing.",
			"", "In Sage, remove those allocations from the invoice, then press Retry here; gessync re-allocates its own receipts.")
	}
	var inv *transform.InvalidError
	if errors.As(err, &inv) {
		return w.note(ctx, j, state.LevelError, "invalid."+inv.Field, inv.Reason, "", inv.Action)
	}
	var api *sage.APIError
	if errors.As(err, &api) {
		msg, action := Explain(api, j.rec.Table)
		var sageWords []string
		for _, it := range api.Items {
			sageWords = append(sageWords, strings.TrimSpace(it.Source+" "+it.Message))
		}
		return w.note(ctx, j, state.LevelError, "sage."+api.DataCode(), msg, strings.Join(sageWords, "; "), action)
	}
	var pe *sage.PermanentError
	if errors.As(err, &pe) {
		return w.note(ctx, j, state.LevelError, "sage.refused", "Sage refused this record.", pe.Error(), "Check the record in GES and press Retry.")
	}
	// Decoding and other errors from transform are about the row itself.
	return w.note(ctx, j, state.LevelError, "invalid.row", err.Error(), "", "Check this record in GES.")
}

func (w *lane) note(ctx context.Context, j job, level state.Level, code, msg, sageMsg, action string) (state.Outcome, error) {
	e := state.Entry{CompanyID: w.company, Table: j.rec.Table, GESID: j.rec.ID, LSN: j.lsn, Level: level, Code: code, Message: msg, SageMessage: sageMsg, Action: action}
	if err := w.p.cfg.Store.Log(ctx, e); err != nil {
		return "", err
	}
	if level == state.LevelError {
		w.log.Info("record needs a person", "table", j.rec.Table, "id", j.rec.ID, "code", code)
		return state.Failed, nil
	}
	return state.Synced, nil
}

func singular(table string) string {
	switch table {
	case "customers":
		return "customer"
	case "invoices":
		return "invoice"
	case "payments":
		return "payment"
	}
	return table
}

// Explain turns a Sage refusal into plain English and what to do, for the sync log.
func Explain(e *sage.APIError, table string) (message, action string) {
	what := singular(table)
	switch {
	case e.HasMessage("Artefact number must be unique"):
		return "Sage already has an invoice with this number.",
			"If it is the same invoice, link it with Resync; otherwise give the invoice a different number in GES."
	case e.HasMessage("VAT reconciled"):
		return "Sage will not change this invoice: it is on a submitted VAT return.",
			"Raise a credit note in Sage for the difference, or correct the invoice in GES back to what was filed."
	case e.HasMessage("unallocate"):
		return "Sage will not change this invoice while payments are allocated to it.",
			"In Sage, remove the payment allocation from the invoice, then press Retry."
	case e.HasMessage("This field is required"):
		field := ""
		for _, it := range e.Items {
			if it.Source != "" {
				field = it.Source
				break
			}
		}
		return fmt.Sprintf("Sage needs a value for %q on this %s.", field, what), fmt.Sprintf("Fill it in on the %s in GES; it syncs again by itself.", what)
	case table == "payments" && (e.HasMessage("outstanding") || e.HasMessage("greater than")):
		return "This payment is more than is left to pay on the invoice.", "Check the payment amount in GES; the excess can be recorded as a payment on account in Sage."
	case e.DataCode() == "AuthorizationFailure":
		return "Sage no longer accepts this company's connection (expired consent or subscription).", "Reconnect the company to Sage on the settings page."
	case e.DataCode() == "MultiUserAccessDenied":
		return "The Sage user who connected this company may not change this kind of record.", "Reconnect with a Sage user who has full access."
	case e.StatusCode == 404:
		return fmt.Sprintf("This %s no longer exists in Sage.", what), "Press Resync to create it again."
	case e.DataCode() == "RecordInvalid":
		return fmt.Sprintf("Sage refused this %s as invalid.", what), fmt.Sprintf("Correct the %s in GES using Sage's words below.", what)
	}
	return fmt.Sprintf("Sage refused this %s.", what), "Check the record in GES and press Retry."
}
