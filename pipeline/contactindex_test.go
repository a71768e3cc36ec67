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
	"testing"
	"testing/synctest"
	"time"
	"unicode"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/gessync/gessync/sink/sage"
)

// sageContacts is a Sage business's customer contacts as GET /contacts lists them, on a clock
// the test moves.
type sageContacts struct {
	mu       sync.Mutex
	now      time.Time
	contacts []sageContact
	deleted  []time.Time
	pageSize int  // default 200
	noDate   bool // replies carry no Date
	calls    []url.Values
	fail     error
	// gate, when set, holds each call until the test sends on it.
	gate chan struct{}
}

type sageContact struct {
	keys      sage.ContactKeys
	stamped   time.Time // updated_at
	committed time.Time // visible from
}

func (s *sageContacts) ListContactsAt(ctx context.Context, q url.Values, limit int) (sage.ContactList, error) {
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
	var since time.Time
	if v := q.Get("updated_or_created_since"); v != "" {
		var err error
		if since, err = time.Parse(time.RFC3339, v); err != nil {
			return out, err
		}
	}
	for _, c := range s.contacts {
		if !c.committed.After(s.now) && !c.stamped.Before(since) {
			out.Contacts = append(out.Contacts, c.keys)
		}
	}
	size := s.pageSize
	if size == 0 {
		size = 200
	}
	out.Total = len(out.Contacts)
	out.Pages = max(1, (out.Total+size-1)/size)
	if limit > 0 && out.Total > limit {
		out.Contacts, out.Pages = out.Contacts[:min(size, out.Total)], 1
	}
	return out, nil
}

func (s *sageContacts) add(keys sage.ContactKeys, stamped, committed time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.contacts = append(s.contacts, sageContact{keys, stamped, committed})
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
	xs := newContactIndexes(5000, 1<<20)
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
				c.MainAddress = &sage.Address{PostalCode: "LS1 4AB"}
			}
			s.add(c, now.Add(-time.Duration(rng.IntN(1000))*time.Millisecond), now)
			all = append(all, c)
		}
		if rng.IntN(3) > 0 {
			continue
		}
		before := s.callCount()
		usable, err := x.fresh(ctx, s)
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
		x := newContactIndexes(5000, 1<<20).of("biz")
		ctx := context.Background()
		results := make(chan error, 3)
		ask := func() {
			usable, err := x.fresh(ctx, s)
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
		x := newContactIndexes(5000, 1<<20).of("biz")
		first, cancel := context.WithCancel(context.Background())
		firstErr := make(chan error, 1)
		go func() { _, err := x.fresh(first, s); firstErr <- err }()
		synctest.Wait()
		second := make(chan error, 1)
		go func() {
			usable, err := x.fresh(context.Background(), s)
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

// A business with more customers than Config.ContactIndex is searched as before, after one page.
func TestContactIndexOffForALargeBusiness(t *testing.T) {
	s := &sageContacts{now: indexT0}
	for i := range 30 {
		s.add(sage.ContactKeys{ID: fmt.Sprint(i), Reference: fmt.Sprint("R", i)}, indexT0, indexT0)
	}
	xs := newContactIndexes(20, 1<<20)
	x := xs.of("biz")
	usable, err := x.fresh(context.Background(), s)
	require.NoError(t, err)
	require.False(t, usable)
	usable, err = x.fresh(context.Background(), s)
	require.NoError(t, err)
	require.False(t, usable)
	require.Equal(t, 1, s.callCount(), "off: no more reads")
	require.Nil(t, newContactIndexes(-1, 1<<20).of("biz"), "a negative ContactIndex: none")
}

// Without Sage's clock (no Date on the reply) a round cannot say what it saw: off.
func TestContactIndexOffWithoutSagesClock(t *testing.T) {
	s := &sageContacts{now: indexT0, noDate: true}
	usable, err := newContactIndexes(5000, 1<<20).of("biz").fresh(context.Background(), s)
	require.NoError(t, err)
	require.False(t, usable)
}

// A read of several pages during which a contact was deleted may have skipped one: it does not
// count, the next ask reads everything again, and after contactIndexBuilds such reads the
// business is searched as before.
func TestContactIndexReadsAgainWhenContactsWentDuringTheRead(t *testing.T) {
	s := &sageContacts{now: indexT0, pageSize: 2, deleted: []time.Time{indexT0.Add(-time.Second)}}
	for i := range 3 {
		s.add(sage.ContactKeys{ID: fmt.Sprint(i), Reference: fmt.Sprint("R", i)}, indexT0, indexT0)
	}
	x := newContactIndexes(5000, 1<<20).of("biz")
	for i := range contactIndexBuilds {
		usable, err := x.fresh(context.Background(), s)
		require.NoError(t, err)
		require.False(t, usable, "read %d", i)
	}
	require.Equal(t, 2*contactIndexBuilds, s.callCount(), "each read, then its deletions")
	for _, q := range s.calls {
		require.Empty(t, q.Get("updated_or_created_since"), "every read is whole")
	}
	usable, err := x.fresh(context.Background(), s)
	require.NoError(t, err)
	require.False(t, usable)
	require.Equal(t, 2*contactIndexBuilds, s.callCount(), "then off")

	// No deletion since: one whole read is enough.
	s2 := &sageContacts{now: indexT0, pageSize: 2, contacts: s.contacts, deleted: []time.Time{indexT0.Add(-time.Hour)}}
	usable, err = newContactIndexes(5000, 1<<20).of("biz").fresh(context.Background(), s2)
	require.NoError(t, err)
	require.True(t, usable)
}

// The indexes share one budget of keys; one that would go over it is dropped and gives its keys
// back, and its business is searched as before.
func TestContactIndexKeysAreBounded(t *testing.T) {
	s := &sageContacts{now: indexT0}
	for i := range 10 {
		s.add(sage.ContactKeys{ID: fmt.Sprint(i), Reference: fmt.Sprint("R", i), Email: fmt.Sprint(i, "@x.co.uk")}, indexT0, indexT0)
	}
	xs := newContactIndexes(5000, 30)
	usable, err := xs.of("a").fresh(context.Background(), s)
	require.NoError(t, err)
	require.True(t, usable)
	require.EqualValues(t, 10, xs.keysLeft.Load())
	usable, err = xs.of("b").fresh(context.Background(), s)
	require.NoError(t, err)
	require.False(t, usable, "20 more keys than are left")
	require.EqualValues(t, 10, xs.keysLeft.Load(), "given back")
}

// Sage's refusal of a round is the asker's error.
func TestContactIndexSagesErrorIsTheAsksError(t *testing.T) {
	refused := &sage.RetryableError{Err: errors.New("503")}
	s := &sageContacts{now: indexT0, fail: refused}
	_, err := newContactIndexes(5000, 1<<20).of("biz").fresh(context.Background(), s)
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

// At most contactIndexReadsAtOnce businesses read all their contacts at once; the others wait.
func TestContactIndexFirstReadsAreBounded(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := &sageContacts{now: indexT0, gate: make(chan struct{})}
		xs := newContactIndexes(5000, 1<<20)
		done := make(chan error, contactIndexReadsAtOnce+2)
		for i := range contactIndexReadsAtOnce + 2 {
			go func() { _, err := xs.of(fmt.Sprint("biz", i)).fresh(context.Background(), s); done <- err }()
		}
		synctest.Wait()
		require.Len(t, xs.firstReads, contactIndexReadsAtOnce)
		for range contactIndexReadsAtOnce + 2 {
			s.gate <- struct{}{}
			require.NoError(t, <-done)
		}
		require.Equal(t, contactIndexReadsAtOnce+2, s.callCount())
	})
}
