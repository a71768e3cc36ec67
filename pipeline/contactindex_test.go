package pipeline

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"
	"unicode"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/gessync/gessync/sink/sage"
)

// sageContacts is a Sage business's contacts as GET /contacts lists them, on a clock the test
// moves. A list of several pages reads each page from what the business holds when it gets to
// it, as Sage's pages do; betweenPages, when set, changes the business once, before page 2.
type sageContacts struct {
	mu           sync.Mutex
	now          time.Time
	contacts     []sageContact
	deleted      []time.Time
	pageSize     int  // default 200
	noDate       bool // replies carry no Date
	calls        []url.Values
	fail         error
	betweenPages func(*sageContacts)
	// gate, when set, holds each call until the test sends on it.
	gate chan struct{}
}

type sageContact struct {
	keys        sage.ContactKeys
	created     time.Time
	stamped     time.Time // updated_at
	committed   time.Time // visible from
	notCustomer bool
}

// visible lists the contacts q selects now, as GET /contacts would.
func (s *sageContacts) visible(q url.Values) ([]sage.ContactKeys, error) {
	var since time.Time
	if v := q.Get("updated_or_created_since"); v != "" {
		var err error
		if since, err = time.Parse(time.RFC3339, v); err != nil {
			return nil, err
		}
	}
	var out []sage.ContactKeys
	for _, c := range s.contacts {
		if c.committed.After(s.now) || c.stamped.Before(since) || (c.notCustomer && q.Get("contact_type_id") == "CUSTOMER") {
			continue
		}
		out = append(out, c.keys)
	}
	return out, nil
}

func (s *sageContacts) ListContactsAt(ctx context.Context, q url.Values, limit int, each func([]sage.ContactKeys)) (sage.ContactList, error) {
	if s.gate != nil {
		select {
		case <-s.gate:
		case <-ctx.Done():
			return sage.ContactList{}, ctx.Err()
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls = append(s.calls, q)
	if s.fail != nil {
		return sage.ContactList{}, s.fail
	}
	var out sage.ContactList
	if !s.noDate {
		out.At = s.now.Truncate(time.Second)
	}
	if v := q.Get("deleted_since"); v != "" {
		since, err := time.Parse(time.RFC3339, v)
		if err != nil {
			return out, err
		}
		for _, d := range s.deleted {
			if d.After(since) {
				out.Total++
			}
		}
		out.Pages = 1
		return out, nil
	}
	size := s.pageSize
	if size == 0 {
		size = 200
	}
	for page := 1; ; page++ {
		if page == 2 && s.betweenPages != nil {
			s.betweenPages(s)
			s.betweenPages = nil
		}
		all, err := s.visible(q)
		if err != nil {
			return out, err
		}
		if page == 1 {
			out.Total = len(all)
		}
		out.Pages = page
		if items := all[min((page-1)*size, len(all)):min(page*size, len(all))]; each != nil {
			each(items)
		} else {
			out.Contacts = append(out.Contacts, items...)
		}
		if page*size >= len(all) || (limit > 0 && out.Total > limit) {
			return out, nil
		}
	}
}

func (s *sageContacts) add(keys sage.ContactKeys, stamped, committed time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.contacts = append(s.contacts, sageContact{keys: keys, created: stamped, stamped: stamped, committed: committed})
}

func (s *sageContacts) setNow(t time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.now = t
}

func (s *sageContacts) callCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.calls)
}

// ruleKeys are the keys matchContact's rules look up for a GES customer with c's details.
func ruleKeys(xs *contactIndexes, c sage.ContactKeys) []uint32 {
	var keys []uint32
	if c.Reference != "" {
		keys = append(keys, xs.key(keyReference, foldKey(c.Reference)))
	}
	if c.Email != "" {
		keys = append(keys, xs.key(keyEmail, foldKey(c.Email)))
	}
	if c.MainAddress != nil {
		keys = append(keys, xs.key(keyNamePost, namePostKey(c.Name, c.MainAddress.PostalCode)))
	}
	return keys
}

// has reports whether key (a rule's index key) may belong to a Sage contact, as a lookup
// through fresh's use would say; true for every key while the index is off.
func (x *contactIndex) has(key uint32) bool {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.off || x.keys.has(key)
}

var indexT0 = time.Date(2026, 11, 30, 9, 0, 0, 0, time.UTC)

// Every contact committed in Sage before a customer asks is in the index when fresh returns,
// by every key its rules compare, even one stamped up to a second before an earlier round read
// but committed after it; over thousands of steps, each round reads only what changed since a
// little before the last.
func TestContactIndexHoldsEveryContactCommittedBeforeTheAsk(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 11))
	s := &sageContacts{now: indexT0}
	for i := range 450 { // three pages: the first round reads them all
		s.add(sage.ContactKeys{ID: fmt.Sprint("old", i), Reference: fmt.Sprint("OLD", i)}, indexT0.Add(-time.Hour), indexT0.Add(-time.Hour))
	}
	xs := newContactIndexes(5000, 1<<20, nil)
	x := xs.of("biz")
	ctx := context.Background()
	now := indexT0
	var all []sage.ContactKeys
	maxRead, built, prevAsk := 0, false, now
	for step := range 3000 {
		now = now.Add(time.Duration(rng.IntN(1500)) * time.Millisecond)
		s.setNow(now)
		if rng.IntN(2) == 0 { // a bookkeeper's contact, stamped up to a second before it commits
			c := sage.ContactKeys{ID: fmt.Sprint("c", step), Name: fmt.Sprint("Name ", step)}
			switch rng.IntN(3) {
			case 0:
				c.Reference = fmt.Sprint("r", step)
			case 1:
				c.Email = fmt.Sprintf("E%d@Example.co.uk", step)
			default:
				c.MainAddress = &sage.AddressKey{PostalCode: "LS1 4AB"}
			}
			s.add(c, now.Add(-time.Duration(rng.IntN(1000))*time.Millisecond), now)
			all = append(all, c)
		}
		if rng.IntN(3) > 0 {
			continue
		}
		before := s.callCount()
		usable, err := x.fresh(ctx, s, nil)
		require.NoError(t, err)
		require.True(t, usable)
		if built {
			require.Equal(t, before+1, s.callCount(), "one read a round")
		}
		built = true
		for _, c := range all {
			for _, k := range ruleKeys(xs, c) {
				require.True(t, x.has(k), "step %d: contact %s missing", step, c.ID)
			}
		}
		s.mu.Lock()
		q := s.calls[len(s.calls)-1]
		s.mu.Unlock()
		if v := q.Get("updated_or_created_since"); v != "" {
			since, err := time.Parse(time.RFC3339, v)
			require.NoError(t, err)
			read := now.Sub(since)
			require.LessOrEqual(t, read, now.Sub(prevAsk)+contactIndexOverlap+time.Second, "a round reads only from a little before the last")
			maxRead = max(maxRead, int(read/time.Second))
		}
		prevAsk = now
	}
	require.True(t, x.has(xs.key(keyReference, foldKey("old449"))), "the first round read every page")
	require.False(t, x.has(xs.key(keyReference, foldKey("never"))))
	require.NotZero(t, maxRead)
}

// Customers asking while a round is being read share the next one: three asks, two reads.
func TestContactIndexAsksMeanwhileShareOneRound(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := &sageContacts{now: indexT0, gate: make(chan struct{})}
		x := newContactIndexes(5000, 1<<20, nil).of("biz")
		ctx := context.Background()
		results := make(chan error, 3)
		ask := func() {
			usable, err := x.fresh(ctx, s, nil)
			if err == nil && !usable {
				err = errors.New("not usable")
			}
			results <- err
		}
		go ask()
		synctest.Wait() // the first round waits on the gate
		go ask()
		go ask()
		synctest.Wait() // both wait for a round that starts after them
		s.gate <- struct{}{}
		require.NoError(t, <-results)
		synctest.Wait()
		s.gate <- struct{}{} // the second round, shared
		require.NoError(t, <-results)
		require.NoError(t, <-results)
		require.Equal(t, 2, s.callCount())
	})
}

// A round cancelled by its caller's context does not fail those who waited on it: one of them
// reads again.
func TestContactIndexACancelledRoundIsReadAgain(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := &sageContacts{now: indexT0, gate: make(chan struct{})}
		x := newContactIndexes(5000, 1<<20, nil).of("biz")
		first, cancel := context.WithCancel(context.Background())
		firstErr := make(chan error, 1)
		go func() { _, err := x.fresh(first, s, nil); firstErr <- err }()
		synctest.Wait()
		second := make(chan error, 1)
		go func() {
			usable, err := x.fresh(context.Background(), s, nil)
			if err == nil && !usable {
				err = errors.New("not usable")
			}
			second <- err
		}()
		synctest.Wait()
		cancel()
		require.ErrorIs(t, <-firstErr, context.Canceled)
		synctest.Wait()
		s.gate <- struct{}{}
		require.NoError(t, <-second)
	})
}

// A business with more customers than Config.ContactIndex is searched as before, after one page,
// until contactIndexRest has passed.
func TestContactIndexOffForALargeBusiness(t *testing.T) {
	s := &sageContacts{now: indexT0}
	for i := range 30 {
		s.add(sage.ContactKeys{ID: fmt.Sprint(i), Reference: fmt.Sprint("R", i)}, indexT0, indexT0)
	}
	xs := newContactIndexes(20, 1<<20, nil)
	var offs []string
	xs.onOff = func(reason string) { offs = append(offs, reason) }
	x := xs.of("biz")
	usable, err := x.fresh(context.Background(), s, nil)
	require.NoError(t, err)
	require.False(t, usable)
	usable, err = x.fresh(context.Background(), s, nil)
	require.NoError(t, err)
	require.False(t, usable)
	require.Equal(t, 1, s.callCount(), "off: no more reads")
	require.Equal(t, []string{IndexOffTooMany}, offs, "turned off once, and told")

	// After contactIndexRest it reads again: now small enough.
	s.contacts = s.contacts[:10]
	xs.now = func() time.Time { return time.Now().Add(contactIndexRest + time.Minute) }
	usable, err = x.fresh(context.Background(), s, nil)
	require.NoError(t, err)
	require.True(t, usable)
	require.Equal(t, 2, s.callCount())
	require.Nil(t, newContactIndexes(-1, 1<<20, nil).of("biz"), "a negative ContactIndex: none")
}

// Without Sage's clock (no Date on the reply) a round cannot say what it saw: off.
func TestContactIndexOffWithoutSagesClock(t *testing.T) {
	s := &sageContacts{now: indexT0, noDate: true}
	used := false
	noDate := newContactIndexes(5000, 1<<20, nil)
	var offs []string
	noDate.onOff = func(reason string) { offs = append(offs, reason) }
	usable, err := noDate.of("biz").fresh(context.Background(), s, func(func(uint32) bool) { used = true })
	require.NoError(t, err)
	require.False(t, usable)
	require.False(t, used, "an index that cannot be used is not looked into")
	require.Equal(t, []string{IndexOffNoDate}, offs)

	s.noDate = false
	xs := newContactIndexes(5000, 1<<20, nil)
	s.add(sage.ContactKeys{ID: "1", Reference: "R1"}, indexT0, indexT0)
	usable, err = xs.of("biz").fresh(context.Background(), s, func(has func(uint32) bool) {
		used = has(xs.key(keyReference, foldKey("r1")))
	})
	require.NoError(t, err)
	require.True(t, usable)
	require.True(t, used, "looked into, and R1 found")
}

// A read of several pages during which a contact was deleted, or stopped being a customer, or
// was edited, may have skipped one (the pages shift): it does not count, and the next ask reads
// everything again; after contactIndexBuilds such reads the business is searched as before. A
// contact created meanwhile does not skip one, and the next round reads it.
func TestContactIndexReadsAgainWhenContactsChangedDuringTheRead(t *testing.T) {
	threePages := func() *sageContacts {
		s := &sageContacts{now: indexT0, pageSize: 2}
		for i := range 5 {
			s.add(sage.ContactKeys{ID: fmt.Sprint(i), Reference: fmt.Sprint("R", i)}, indexT0.Add(-time.Hour), indexT0.Add(-time.Hour))
		}
		return s
	}
	for name, change := range map[string]func(*sageContacts){
		"deleted": func(s *sageContacts) {
			s.contacts = s.contacts[1:]
			s.deleted = append(s.deleted, s.now)
		},
		"no longer a customer": func(s *sageContacts) {
			s.contacts[0].notCustomer = true
			s.contacts[0].stamped = s.now
		},
	} {
		t.Run(name, func(t *testing.T) {
			s := threePages()
			s.betweenPages = change
			xs := newContactIndexes(5000, 1<<20, nil)
			x := xs.of("biz")
			usable, err := x.fresh(context.Background(), s, nil)
			require.NoError(t, err)
			require.False(t, usable, "the read skipped R2")
			require.False(t, x.has(xs.key(keyReference, foldKey("R2"))), "the model skips R2: the test shows what it guards")

			s.setNow(indexT0.Add(contactIndexOverlap + 2*time.Second)) // the change is older than the overlap
			usable, err = x.fresh(context.Background(), s, nil)
			require.NoError(t, err)
			require.True(t, usable, "read whole again")
			require.True(t, x.has(xs.key(keyReference, foldKey("R2"))))
			for _, q := range s.calls {
				if q.Get("contact_type_id") != "" {
					require.Empty(t, q.Get("updated_or_created_since"), "each read of the customers is of them all")
				}
			}
		})
	}
	t.Run("created", func(t *testing.T) {
		// A creation alone only moves the rest down, but one edited in the same second (Sage's
		// times are to the second) looks the same: any change makes the read not count.
		s := threePages()
		s.betweenPages = func(s *sageContacts) {
			s.contacts = append([]sageContact{{keys: sage.ContactKeys{ID: "new", Reference: "NEW"}, created: s.now, stamped: s.now, committed: s.now}}, s.contacts...)
		}
		xs := newContactIndexes(5000, 1<<20, nil)
		x := xs.of("biz")
		usable, err := x.fresh(context.Background(), s, nil)
		require.NoError(t, err)
		require.False(t, usable)
		s.setNow(indexT0.Add(contactIndexOverlap + 2*time.Second))
		usable, err = x.fresh(context.Background(), s, nil)
		require.NoError(t, err)
		require.True(t, usable)
		require.True(t, x.has(xs.key(keyReference, foldKey("NEW"))))
	})
	t.Run("a later read of several pages", func(t *testing.T) {
		// The first read is whole (one page); 5 contacts then change, so the next read is of
		// three pages, and one stops being a customer between them: that read skipped one, and
		// the index is not used until a read is whole again.
		s := &sageContacts{now: indexT0, pageSize: 2}
		s.add(sage.ContactKeys{ID: "old", Reference: "OLD"}, indexT0.Add(-time.Hour), indexT0.Add(-time.Hour))
		xs := newContactIndexes(5000, 1<<20, nil)
		x := xs.of("biz")
		usable, err := x.fresh(context.Background(), s, nil)
		require.NoError(t, err)
		require.True(t, usable)
		later := indexT0.Add(time.Minute)
		for i := range 5 {
			s.add(sage.ContactKeys{ID: fmt.Sprint("n", i), Reference: fmt.Sprint("N", i)}, later.Add(-30*time.Second), later.Add(-30*time.Second))
		}
		s.setNow(later)
		s.betweenPages = func(s *sageContacts) {
			s.contacts[1].notCustomer = true // N0
			s.contacts[1].stamped = s.now
		}
		usable, err = x.fresh(context.Background(), s, nil)
		require.NoError(t, err)
		require.False(t, x.has(xs.key(keyReference, foldKey("N2"))), "the model skips N2")
		require.False(t, usable, "a read that skipped N2 is not used")
		s.setNow(later.Add(contactIndexOverlap + 2*time.Second))
		usable, err = x.fresh(context.Background(), s, nil)
		require.NoError(t, err)
		require.True(t, usable)
		require.True(t, x.has(xs.key(keyReference, foldKey("N2"))), "read again from where the last whole read began")
	})
	t.Run("again and again", func(t *testing.T) {
		s := threePages()
		xs := newContactIndexes(5000, 1<<20, nil)
		var offs []string
		xs.onOff = func(reason string) { offs = append(offs, reason) }
		x := xs.of("biz")
		for i := range contactIndexBuilds {
			s.betweenPages = func(s *sageContacts) { s.contacts[0].stamped = s.now } // an edit
			usable, err := x.fresh(context.Background(), s, nil)
			require.NoError(t, err)
			require.False(t, usable, "read %d", i)
		}
		n := s.callCount()
		usable, err := x.fresh(context.Background(), s, nil)
		require.NoError(t, err)
		require.False(t, usable)
		require.Equal(t, n, s.callCount(), "then off: no more reads")
		require.Equal(t, []string{IndexOffChanging}, offs)
	})
}

// A round that fails, run by another company's session on the same business, is not this
// company's error (its connection may be fine): it searches Sage with its own session instead.
// Companies a and b both wait for the round after c's; the test repeats until a, whose
// session has lost its connection, is the one that runs it.
func TestContactIndexAnotherSessionsErrorIsNotThisOnes(t *testing.T) {
	lost := &sage.RetryableError{Err: sage.ErrConnectionLost}
	for try := 0; ; try++ {
		require.Less(t, try, 100, "a never ran the shared round")
		aRan := false
		synctest.Test(t, func(t *testing.T) {
			c := &sageContacts{now: indexT0, gate: make(chan struct{})}
			a := &sageContacts{now: indexT0, gate: make(chan struct{}), fail: lost}
			b := &sageContacts{now: indexT0, gate: make(chan struct{})}
			x := newContactIndexes(5000, 1<<20, nil).of("biz")
			type result struct {
				usable bool
				err    error
			}
			ask := func(l *sageContacts) chan result {
				ch := make(chan result, 1)
				go func() { u, err := x.fresh(context.Background(), l, nil); ch <- result{u, err} }()
				return ch
			}
			cDone := ask(c)
			synctest.Wait()
			aDone, bDone := ask(a), ask(b)
			synctest.Wait()
			c.gate <- struct{}{}
			require.NoError(t, (<-cDone).err)
			synctest.Wait() // a or b runs the next round, for both
			select {
			case a.gate <- struct{}{}:
				aRan = true
				require.ErrorIs(t, (<-aDone).err, sage.ErrConnectionLost, "the session that read gets its error")
				got := <-bDone
				require.NoError(t, got.err, "not b's")
				require.False(t, got.usable, "b searches Sage")
			default:
				b.gate <- struct{}{}
				require.NoError(t, (<-bDone).err)
				require.True(t, (<-aDone).usable)
			}
		})
		if aRan {
			return
		}
	}
}

// The indexes share one budget of keys; one that would go over it is dropped and gives its keys
// back, and its business is searched as before.
func TestContactIndexKeysAreBounded(t *testing.T) {
	s := &sageContacts{now: indexT0}
	for i := range 10 {
		s.add(sage.ContactKeys{ID: fmt.Sprint(i), Reference: fmt.Sprint("R", i), Email: fmt.Sprint(i, "@x.co.uk")}, indexT0, indexT0)
	}
	xs := newContactIndexes(5000, 30, nil)
	var offs []string
	xs.onOff = func(reason string) { offs = append(offs, reason) }
	usable, err := xs.of("a").fresh(context.Background(), s, nil)
	require.NoError(t, err)
	require.True(t, usable)
	require.EqualValues(t, 10, xs.keysLeft.Load())
	never := xs.key(keyReference, foldKey("never"))
	require.False(t, xs.of("a").has(never))
	usable, err = xs.of("b").fresh(context.Background(), s, nil)
	require.NoError(t, err)
	require.False(t, usable, "20 more keys than are left")
	require.EqualValues(t, 10, xs.keysLeft.Load(), "given back")
	require.Equal(t, []string{IndexOffKeysSpent}, offs)

	// A customer told before that it could use an index that is off since: every key may be
	// there, so every rule searches.
	xs.of("a").turnOff(IndexOffKeysSpent, "a test")
	require.True(t, xs.of("a").has(never))
}

// Sage's refusal of a round is the asker's error.
func TestContactIndexSagesErrorIsTheAsksError(t *testing.T) {
	refused := &sage.RetryableError{Err: errors.New("503")}
	s := &sageContacts{now: indexT0, fail: refused}
	_, err := newContactIndexes(5000, 1<<20, nil).of("biz").fresh(context.Background(), s, nil)
	require.ErrorIs(t, err, refused)
}

// foldKey maps strings strings.EqualFold finds equal to one key, and others apart.
func TestFoldKey(t *testing.T) {
	for _, pair := range [][2]string{
		{"BM1903", "bm1903"},
		{"jane@Example.CO.UK", "JANE@example.co.uk"},
		{"Kelvin", "\u212Aelvin"}, // KELVIN SIGN folds with k
		{"straße", "STRAßE"},
		{"ſtop", "STOP"}, // LATIN SMALL LETTER LONG S folds with s
		{"Ωmega", "ωMEGA"},
		{"a\xffb", "A\xfeB"}, // invalid bytes: both U+FFFD, as EqualFold reads them
	} {
		require.True(t, strings.EqualFold(pair[0], pair[1]), "%q %q", pair[0], pair[1])
		assert.Equal(t, foldKey(pair[0]), foldKey(pair[1]), "%q %q", pair[0], pair[1])
	}
	for _, pair := range [][2]string{{"straße", "STRASSE"}, {"ab", "abc"}, {"a b", "ab"}} {
		require.False(t, strings.EqualFold(pair[0], pair[1]))
		assert.NotEqual(t, foldKey(pair[0]), foldKey(pair[1]), "%q %q", pair[0], pair[1])
	}
}

// FuzzFoldKey: a string and any case-folded variant of it (each rune moved along its simple
// folding orbit) have one key, as strings.EqualFold says they are equal.
func FuzzFoldKey(f *testing.F) {
	for _, s := range []string{"BM1903", "jane@example.co.uk", "Kelvin ſ Ω ß", "a\xffb", ""} {
		f.Add(s, uint64(1))
	}
	f.Fuzz(func(t *testing.T, s string, seed uint64) {
		rng := rand.New(rand.NewPCG(seed, 3))
		var b strings.Builder
		for _, r := range s {
			for range rng.IntN(4) {
				r = unicode.SimpleFold(r)
			}
			b.WriteRune(r)
		}
		v := b.String()
		if !strings.EqualFold(s, v) {
			t.Fatalf("the variant %q of %q is not EqualFold", v, s)
		}
		if foldKey(s) != foldKey(v) {
			t.Fatalf("foldKey(%q) = %q, foldKey(%q) = %q", s, foldKey(s), v, foldKey(v))
		}
	})
}

// keySet holds what was added, once, whether merged or still in its tail.
func TestKeySet(t *testing.T) {
	var s keySet
	rng := rand.New(rand.NewPCG(1, 2))
	in := map[uint32]bool{}
	for i := range 5000 {
		k := rng.Uint32() % 3000 // duplicates too
		s.add(k)
		in[k] = true
		if i%97 == 0 {
			for range 20 {
				k := rng.Uint32() % 4000
				require.Equal(t, in[k], s.has(k), "key %d after %d adds", k, i+1)
			}
		}
	}
	s.merge()
	require.Equal(t, len(in), s.len(), "duplicates dropped")
	require.True(t, slices.IsSorted(s.sorted))
}

// At most contactIndexReadsAtOnce businesses read all their contacts at once; a customer of
// another business waits contactIndexSlotWait for one to finish, then searches Sage this once.
func TestContactIndexFirstReadsAreBounded(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := &sageContacts{now: indexT0, gate: make(chan struct{})}
		xs := newContactIndexes(5000, 1<<20, nil)
		type result struct {
			usable bool
			err    error
		}
		done := make(chan result, contactIndexReadsAtOnce+2)
		for i := range contactIndexReadsAtOnce {
			go func() {
				u, err := xs.of(fmt.Sprint("biz", i)).fresh(context.Background(), s, nil)
				done <- result{u, err}
			}()
		}
		synctest.Wait()
		require.Len(t, xs.firstReads, contactIndexReadsAtOnce)
		for i := range 2 {
			start := time.Now()
			usable, err := xs.of(fmt.Sprint("late", i)).fresh(context.Background(), s, nil)
			require.NoError(t, err)
			require.False(t, usable, "no slot: search Sage")
			require.Equal(t, contactIndexSlotWait, time.Since(start), "after waiting for one")
		}
		for range contactIndexReadsAtOnce {
			s.gate <- struct{}{}
			r := <-done
			require.NoError(t, r.err)
			require.True(t, r.usable)
		}
		require.Equal(t, contactIndexReadsAtOnce, s.callCount())
		go func() { s.gate <- struct{}{} }()
		usable, err := xs.of("late0").fresh(context.Background(), s, nil)
		require.NoError(t, err)
		require.True(t, usable, "a slot free: the late business reads")
	})
}

// Config.ContactIndex defaults to 5000 and is held to MaxContactIndex: a first read of more
// would spend minutes of the business's Sage calls after every start.
func TestContactIndexSizeIsBounded(t *testing.T) {
	require.Equal(t, 5000, New(Config{}).contacts.maxContacts)
	require.Equal(t, MaxContactIndex, New(Config{ContactIndex: 1_000_000}).contacts.maxContacts)
	require.Equal(t, 300, New(Config{ContactIndex: 300}).contacts.maxContacts)
	require.Nil(t, New(Config{ContactIndex: -1}).contacts.of("biz"))
}

// An index not asked for in contactIndexIdle is dropped at the next sweep, and its keys go
// back to the budget: a business with no new customer for an hour, or no longer connected,
// costs only its next customer's first read. One reading is kept.
func TestContactIndexIdleIsDropped(t *testing.T) {
	s := &sageContacts{now: indexT0}
	for i := range 10 {
		s.add(sage.ContactKeys{ID: fmt.Sprint(i), Reference: fmt.Sprint("R", i)}, indexT0, indexT0)
	}
	var elapsed atomic.Int64
	start := time.Now()
	advance := func(d time.Duration) { elapsed.Add(int64(d)) }
	xs := newContactIndexes(5000, 1000, nil)
	xs.now = func() time.Time { return start.Add(time.Duration(elapsed.Load())) }
	a := xs.of("a")
	usable, err := a.fresh(context.Background(), s, nil)
	require.NoError(t, err)
	require.True(t, usable)
	require.EqualValues(t, 990, xs.keysLeft.Load())

	advance(contactIndexIdle / 2)
	require.Same(t, a, xs.of("a"), "asked half an hour ago: kept")
	advance(contactIndexIdle)
	xs.of("b")
	require.Same(t, a, xs.of("a"), "asked an hour ago to the second: kept")

	advance(contactIndexIdle + time.Second)
	xs.of("b")
	require.EqualValues(t, 1000, xs.keysLeft.Load(), "a's keys given back")
	again := xs.of("a")
	require.NotSame(t, a, again)
	calls := s.callCount()
	usable, err = a.fresh(context.Background(), s, nil)
	require.NoError(t, err)
	require.False(t, usable, "one still held searches Sage")
	require.Equal(t, calls, s.callCount(), "and reads nothing: its keys would never be given back")
	require.EqualValues(t, 1000, xs.keysLeft.Load())

	// A reading index is not dropped.
	s.gate = make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, _ = again.fresh(context.Background(), s, nil)
	}()
	require.Eventually(t, func() bool { again.mu.Lock(); defer again.mu.Unlock(); return again.running }, 5*time.Second, time.Millisecond)
	advance(2 * contactIndexIdle)
	xs.of("b")
	require.Same(t, again, xs.of("a"), "reading: kept")
	close(s.gate)
	<-done

	// One asked for all along is read again from the start once a day: it only gains keys.
	s.gate = nil
	for range 24 * 4 {
		advance(contactIndexIdle / 4)
		require.Same(t, again, xs.of("a"), "asked every quarter of an hour, less than a day old")
	}
	advance(contactIndexIdle / 2)
	require.NotSame(t, again, xs.of("a"), "a day old: dropped")
}
