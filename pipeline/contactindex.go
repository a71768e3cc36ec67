package pipeline

import (
	"context"
	"fmt"
	"hash/maphash"
	"log/slog"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/gessync/gessync/sink/sage"
)

// contactLister is the part of a *sage.Session a contact index reads Sage with.
type contactLister interface {
	ListContactsAt(ctx context.Context, query url.Values, limit int, each func([]sage.ContactKeys)) (sage.ContactList, error)
}

// contactIndexOverlap is how far before the last read (by Sage's clock) the next read of a
// contact index starts. A contact stamped (updated_at) before Sage read, but committed after, was
// not in that read; the next one still reads it if stamping it came less than the overlap before
// Sage's Date on the last read. The Date is rounded down to the second, which only widens the
// overlap. Whether Sage stamps updated_at at commit or earlier is not documented (NOTES §4): two
// seconds is ample for one row written in one request. Every second more is read again by every
// round, and under load that is most of what a round costs.
const contactIndexOverlap = 2 * time.Second

// contactIndexReadsAtOnce bounds the first reads (every customer contact of a business) made at
// once across businesses: after a start, every business's first customer asks within moments,
// and each read holds a page of up to 200 contacts while it is decoded, and 12 bytes a contact
// read before it (their keys): under 10 MB for 32 reads of 5,000 contacts. With 8, the first
// customers of 200 businesses starting together queued for two seconds. A customer that finds
// them all taken for contactIndexSlotWait searches Sage instead, this once, rather than wait
// behind other businesses' reads (minutes, for large ones, against Sage's rate limit).
const (
	contactIndexReadsAtOnce = 32
	contactIndexSlotWait    = 2 * time.Second
)

// contactIndexBuilds is how many times in a row a business's index may fail to be read whole
// (readWhole) before it is turned off.
const contactIndexBuilds = 3

// MaxContactIndex is the largest Config.ContactIndex: a first read of that many customers
// is 100 pages, about 33 s of a business's calls under Sage's rate limit, made again after
// every start and every rest.
const MaxContactIndex = 20000

// contactIndexIdle is how long an index may go unasked before the next sweep drops it and
// gives its keys back to the budget: a daemon keeps its indexes for its life, and a business
// with no new customer for an hour (or one no longer connected) then costs nothing but its
// next customer's first read. contactIndexAge is how long an index built by a first read is
// kept at all: it only gains keys (those of contacts since edited or deleted stay), and the
// business may have outgrown Config.ContactIndex, so once a day it is read again from the
// start.
const (
	contactIndexIdle = time.Hour
	contactIndexAge  = 24 * time.Hour
)

// contactIndexRest is how long an index turned off stays off (matching searches Sage) before it
// is read again from the start.
const contactIndexRest = 15 * time.Minute

// ContactIndexes are the contact indexes of the Sage businesses customers have been matched
// in (contactIndex). They hold what Sage holds, not what a stream brought, so a daemon keeps
// one set across its streams (Config.ContactIndexes): a replication cut or a PostgreSQL
// restart then costs no business a first read of all its customers again.
type ContactIndexes struct{ xs *contactIndexes }

// NewContactIndexes returns the indexes cfg's ContactIndex (0: 5000; negative: none; at most
// MaxContactIndex), ContactIndexKeys (0: 1<<20), ContactIndexOff and Logger describe.
func NewContactIndexes(cfg Config) *ContactIndexes {
	if cfg.ContactIndex == 0 {
		cfg.ContactIndex = 5000
	}
	if cfg.ContactIndexKeys <= 0 {
		cfg.ContactIndexKeys = 1 << 20
	}
	var log *slog.Logger
	if cfg.Logger != nil {
		log = cfg.Logger.With("component", "pipeline")
	}
	xs := newContactIndexes(min(cfg.ContactIndex, MaxContactIndex), cfg.ContactIndexKeys, log)
	xs.onOff = cfg.ContactIndexOff
	return &ContactIndexes{xs}
}

// contactIndexes are the contact indexes of the Sage businesses customers have been matched
// in, sharing one budget of keys.
type contactIndexes struct {
	maxContacts int          // per business (Config.ContactIndex)
	keysLeft    atomic.Int64 // of Config.ContactIndexKeys
	seed        maphash.Seed
	firstReads  chan struct{} // a slot for each first read under way
	log         *slog.Logger
	now         func() time.Time
	onOff       func(reason string) // Config.ContactIndexOff

	mu         sync.Mutex
	byBusiness map[string]*contactIndex
	swept      time.Time // when of last dropped idle indexes
}

func newContactIndexes(maxContacts int, keys int64, log *slog.Logger) *contactIndexes {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	xs := &contactIndexes{maxContacts: maxContacts, seed: maphash.MakeSeed(), firstReads: make(chan struct{}, contactIndexReadsAtOnce),
		log: log, now: time.Now, byBusiness: map[string]*contactIndex{}}
	xs.keysLeft.Store(keys)
	return xs
}

// of is businessID's index, made empty on first use; nil when indexes are off.
func (xs *contactIndexes) of(businessID string) *contactIndex {
	if xs == nil || xs.maxContacts <= 0 || businessID == "" {
		return nil
	}
	xs.mu.Lock()
	defer xs.mu.Unlock()
	now := xs.now()
	if now.Sub(xs.swept) > contactIndexIdle/4 {
		xs.swept = now
		xs.dropIdleLocked(now)
	}
	x := xs.byBusiness[businessID]
	if x == nil {
		x = &contactIndex{xs: xs, business: businessID, done: make(chan struct{})}
		xs.byBusiness[businessID] = x
	}
	x.asked = now
	return x
}

// dropIdleLocked drops the indexes not reading that were not asked for since contactIndexIdle
// before now, or were first read more than contactIndexAge before it, and gives their keys
// back. A caller that still holds one searches Sage (fresh); the next of makes a new one.
func (xs *contactIndexes) dropIdleLocked(now time.Time) {
	for business, x := range xs.byBusiness {
		if !x.mu.TryLock() {
			continue
		}
		idle := now.Sub(x.asked) > contactIndexIdle
		old := !x.built.IsZero() && now.Sub(x.built) > contactIndexAge
		if (idle || old) && !x.running {
			xs.keysLeft.Add(int64(x.keys.len()))
			x.keys, x.whole, x.dropped = keySet{}, false, true
			delete(xs.byBusiness, business)
		}
		x.mu.Unlock()
	}
}

// contactIndex is one Sage business's customer contacts (GET /contacts?contact_type_id=CUSTOMER)
// reduced to the keys matchContact compares: reference, email, and name with postcode, each
// folded as its rule compares and hashed to 32 bits (4 bytes a key). It lets matching skip the
// searches of a customer no Sage contact can match, which is almost every customer made in GES
// since the connection: one read of what changed in Sage instead of up to three searches.
//
// It may hold more than Sage does (contacts since deleted or edited, hash collisions): a key
// found only sends its rule's search, which decides as before. It never holds less, which is
// what makes skipping a search safe: every round (fresh) starts after the customer asked, and
// reads every customer contact created or updated since a little before the last round read
// (updated_or_created_since, by Sage's clock: the reply's Date, less the time the request
// took), the first round reading them all. A read of several pages during which a contact was
// deleted, created or edited may have skipped one (the pages shift; readWhole), so the index is
// not used after such a round, and the next reads again from where the last whole one began.
type contactIndex struct {
	xs       *contactIndexes
	business string
	asked    time.Time // when of last gave it out; under xs.mu

	mu   sync.Mutex
	keys keySet
	// through is Sage's clock when the last whole read began; zero before the first.
	through time.Time
	// off means matching searches Sage until offUntil: the business has more than
	// Config.ContactIndex customers, the keys ran out, Sage gives no clock, or reads kept
	// failing to be whole.
	off      bool
	offUntil time.Time
	broken   int // reads in a row not whole
	// whole is whether the last round read everything it had to (and so through is set): the
	// index may be used.
	whole bool
	// built is when (by this daemon's clock) the first read that counted ended; dropped is set
	// when dropIdleLocked gave the index's keys back: it is never used or read again.
	built   time.Time
	dropped bool

	// started and finished number the rounds; one runs at a time, and done is closed (and
	// replaced) when it ends, with err.
	started, finished uint64
	running           bool
	err               error
	done              chan struct{}
}

// fresh brings the index up to a moment after it was called, sharing a round with every caller
// that waits at once, and reports whether it can be used (false: search Sage). When it can, use
// (if not nil) is called with the index's lookup before any later round changes the index. An
// error is Sage's, from the round this call ran with its own session (l); when a round another
// caller ran (with another company's session, maybe) failed, this one searches Sage instead.
func (x *contactIndex) fresh(ctx context.Context, l contactLister, use func(has func(uint32) bool)) (bool, error) {
	x.mu.Lock()
	want := x.started + 1 // a round that starts after this call
	var ran uint64        // the round this call ran, if any
	for {
		if x.off && !x.running && x.xs.now().After(x.offUntil) {
			x.off, x.through, x.broken = false, time.Time{}, 0 // read again from the start
		}
		switch {
		case x.off, x.dropped:
			x.mu.Unlock()
			return false, nil
		case x.finished >= want:
			err, mine := x.err, x.finished == ran
			usable := x.whole // false after a round that failed
			if usable && use != nil {
				use(x.keys.has)
			}
			x.mu.Unlock()
			if err != nil && !mine {
				return false, nil
			}
			return usable, err
		case !x.running:
			x.running = true
			x.started++
			ran = x.started
			x.mu.Unlock()
			err := x.round(ctx, l)
			x.mu.Lock()
			x.running, x.finished, x.err = false, ran, err
			close(x.done)
			x.done = make(chan struct{})
		default:
			done := x.done
			x.mu.Unlock()
			select {
			case <-done:
			case <-ctx.Done():
				return false, ctx.Err()
			}
			x.mu.Lock()
		}
	}
}

// round reads what changed in Sage since the last round (everything, the first time) into the
// index. Only the running round calls it.
func (x *contactIndex) round(ctx context.Context, l contactLister) error {
	x.mu.Lock()
	through := x.through
	x.whole = false
	x.mu.Unlock()

	q := url.Values{"contact_type_id": {"CUSTOMER"}}
	limit := x.xs.maxContacts
	if through.IsZero() {
		wait := time.NewTimer(contactIndexSlotWait)
		defer wait.Stop()
		select {
		case x.xs.firstReads <- struct{}{}:
			defer func() { <-x.xs.firstReads }()
		case <-wait.C:
			return nil // every slot taken: search Sage this once
		case <-ctx.Done():
			return ctx.Err()
		}
	} else {
		q.Set("updated_or_created_since", sinceParam(through.Add(-contactIndexOverlap)))
		limit = 0
	}
	// Each page is reduced to its keys as it comes (about 12 bytes a contact), and dropped.
	var keys []uint32
	list, err := l.ListContactsAt(ctx, q, limit, func(page []sage.ContactKeys) {
		for _, c := range page {
			keys = x.xs.contactKeys(keys, c)
		}
	})
	if err != nil {
		return err
	}
	switch {
	case list.At.IsZero():
		x.turnOff(IndexOffNoDate, "Sage's reply has no Date")
		return nil
	case limit > 0 && list.Total > limit:
		x.turnOff(IndexOffTooMany, fmt.Sprintf("more than %d customers", limit))
		return nil
	}
	whole := true
	if list.Pages > 1 {
		if whole, err = readWhole(ctx, l, list.At); err != nil {
			return err
		}
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	had := x.keys.len()
	for _, k := range keys {
		x.keys.add(k)
	}
	x.keys.merge()
	if x.xs.keysLeft.Add(-int64(x.keys.len()-had)) < 0 {
		x.turnOffLocked(IndexOffKeysSpent, "the contact indexes' keys are spent (Config.ContactIndexKeys)")
		return nil
	}
	if !whole {
		if x.broken++; x.broken >= contactIndexBuilds {
			x.turnOffLocked(IndexOffChanging, fmt.Sprintf("contacts changed while each of %d reads of several pages ran", x.broken))
		}
		return nil // through stays: the next round reads from where this one began
	}
	x.broken = 0
	if through.IsZero() {
		x.built = x.xs.now()
	}
	x.through, x.whole = list.At, true
	return nil
}

func (x *contactIndex) turnOff(reason, why string) {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.turnOffLocked(reason, why)
}

// readWhole reports whether a read of several pages that began at (by Sage's clock) read every
// contact it lists. Pages are read one after another, each from what Sage holds then: a contact
// that leaves a page before the reader gets to it (deleted, no longer a customer, or moved by an
// edit in an order Sage does not document) moves the rest up, so one may be skipped and,
// untouched, never read again. Sage's times are to the second, so an edit cannot be told from
// the create before it; the read is whole only when no contact of any type was deleted,
// created or edited since a little before it began: two reads, of a page each.
func readWhole(ctx context.Context, l contactLister, at time.Time) (bool, error) {
	since := sinceParam(at.Add(-contactIndexOverlap))
	gone, err := l.ListContactsAt(ctx, url.Values{"deleted_since": {since}, "items_per_page": {"1"}}, 1, nil)
	if err != nil || gone.Total > 0 {
		return false, err
	}
	changed, err := l.ListContactsAt(ctx, url.Values{"updated_or_created_since": {since}, "items_per_page": {"1"}}, 1, nil)
	return err == nil && changed.Total == 0, err
}

// Why a contact index was turned off: Config.ContactIndexOff's reason.
const (
	IndexOffTooMany   = "too_many_customers" // the business has more than Config.ContactIndex
	IndexOffKeysSpent = "keys_spent"         // Config.ContactIndexKeys is spent
	IndexOffNoDate    = "no_date"            // Sage's reply had no Date: its clock is unknown
	IndexOffChanging  = "reads_not_whole"    // contactIndexBuilds reads of several pages in a row did not count
)

// IndexOffReasons are the IndexOff constants, for a metric to show each from the start.
var IndexOffReasons = []string{IndexOffTooMany, IndexOffKeysSpent, IndexOffNoDate, IndexOffChanging}

// turnOffLocked stops using the index for contactIndexRest, and gives its keys back to the
// budget; reason is one of the IndexOff constants, why says it in words.
func (x *contactIndex) turnOffLocked(reason, why string) {
	x.off, x.offUntil, x.whole = true, x.xs.now().Add(contactIndexRest), false
	x.xs.keysLeft.Add(int64(x.keys.len()))
	x.keys = keySet{}
	x.xs.log.Info("contact index off: customers are searched for in Sage", "business", x.business, "reason", reason, "why", why, "until", x.offUntil.UTC().Format(time.RFC3339))
	if x.xs.onOff != nil {
		x.xs.onOff(reason)
	}
}

// keySet is a set of 32-bit keys in 4 bytes each: a sorted run, and a short unsorted tail
// merged into it as it grows.
type keySet struct {
	sorted, tail []uint32
}

func (s *keySet) has(k uint32) bool {
	_, ok := slices.BinarySearch(s.sorted, k)
	return ok || slices.Contains(s.tail, k)
}

// add adds k; a key already there is dropped at the next merge.
func (s *keySet) add(k uint32) {
	s.tail = append(s.tail, k)
	if len(s.tail) >= max(128, len(s.sorted)/16) {
		s.merge()
	}
}

// merge sorts the tail into the run, without duplicates.
func (s *keySet) merge() {
	if len(s.tail) == 0 {
		return
	}
	s.sorted = slices.Compact(slices.Sorted(slices.Values(append(s.sorted, s.tail...))))
	s.tail = s.tail[:0]
}

// len is how many keys the set holds, counting those added twice since the last merge twice.
func (s *keySet) len() int { return len(s.sorted) + len(s.tail) }

// sinceParam formats t for updated_or_created_since and deleted_since (UTC, to the second,
// rounded down).
func sinceParam(t time.Time) string {
	return t.UTC().Truncate(time.Second).Format("2006-01-02T15:04:05Z")
}

// Kinds of index key, one per matchContact rule.
const (
	keyReference = 'r'
	keyEmail     = 'e'
	keyNamePost  = 'n'
)

// contactKeys appends to keys the index keys of a Sage contact: its reference, its emails
// (top-level and main contact person's, as contactEmail reads either) and its name with
// postcode.
func (xs *contactIndexes) contactKeys(keys []uint32, c sage.ContactKeys) []uint32 {
	if c.Reference != "" {
		keys = append(keys, xs.key(keyReference, foldKey(c.Reference)))
	}
	if c.Email != "" {
		keys = append(keys, xs.key(keyEmail, foldKey(c.Email)))
	}
	if p := c.MainContactPerson; p != nil && p.Email != "" {
		keys = append(keys, xs.key(keyEmail, foldKey(p.Email)))
	}
	if a := c.MainAddress; a != nil {
		keys = append(keys, xs.key(keyNamePost, namePostKey(c.Name, a.PostalCode)))
	}
	return keys
}

// key hashes one folded key of a kind to 32 bits: with n keys in an index, a key not there is
// found there (and searched for) once in 2^32/n.
func (xs *contactIndexes) key(kind byte, folded string) uint32 {
	var h maphash.Hash
	h.SetSeed(xs.seed)
	h.WriteByte(kind)
	h.WriteString(folded)
	v := h.Sum64()
	return uint32(v ^ v>>32)
}

// namePostKey is what the name-and-postcode rule compares: both normalised, joined by a byte
// normalise never keeps.
func namePostKey(name, postcode string) string { return normalise(name) + "\x00" + normalise(postcode) }

// foldKey maps s to one representative of everything strings.EqualFold finds equal to it:
// each rune becomes the smallest of its simple case-folding orbit (invalid bytes become
// U+FFFD, as EqualFold reads them).
func foldKey(s string) string {
	ascii := true
	for i := 0; i < len(s); i++ {
		if s[i] >= utf8.RuneSelf {
			ascii = false
			break
		}
	}
	if ascii {
		return strings.ToUpper(s) // 'A' < 'a': the smallest of each ASCII orbit
	}
	var b strings.Builder
	for _, r := range s {
		m := r
		for f := unicode.SimpleFold(r); f != r; f = unicode.SimpleFold(f) {
			m = min(m, f)
		}
		b.WriteRune(m)
	}
	return b.String()
}
