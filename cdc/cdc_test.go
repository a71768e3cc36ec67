package cdc_test

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/gessync/gessync/cdc"
	"github.com/gessync/gessync/ges"
	"github.com/gessync/gessync/internal/pglocal"
)

var (
	pg    *pglocal.Server
	dbSeq atomic.Int64
)

func TestMain(m *testing.M) { os.Exit(pglocal.RunTests(m, "cdc", &pg)) }

func newDB(t *testing.T) (string, *pgx.Conn) {
	t.Helper()
	ctx := context.Background()
	name := fmt.Sprintf("cdc_%d", dbSeq.Add(1))
	require.NoError(t, pg.CreateDatabase(ctx, name, ges.Schema+`INSERT INTO companies (id, name) VALUES (1, 'Acme Heating');`))
	c, err := pgx.Connect(ctx, pg.URL(name))
	require.NoError(t, err)
	t.Cleanup(func() { c.Close(context.Background()) })
	return pg.URL(name), c
}

// collect runs a stream and returns the events it emits until n changes have arrived.
func collect(t *testing.T, url string, start pglogrepl.LSN, do func(), n int) []cdc.Event {
	t.Helper()
	return collectSlot(t, cdc.Config{URL: url, Slot: slotFor(url)}, start, do, n)
}

// slotFor names a test database's slot after the database: slots are cluster-wide.
func slotFor(url string) string {
	u := url[strings.LastIndex(url, "/")+1:]
	if i := strings.Index(u, "?"); i >= 0 {
		u = u[:i]
	}
	return u
}

func collectSlot(t *testing.T, cfg cdc.Config, start pglogrepl.LSN, do func(), n int) []cdc.Event {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out := make(chan cdc.Event, 64)
	cfg.StatusInterval = 100 * time.Millisecond
	s := cdc.NewStream(cfg)
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx, start, func() pglogrepl.LSN { return start }, out) }()
	do()
	var evs []cdc.Event
	changes := 0
	for changes < n {
		select {
		case ev := <-out:
			if ev.Kind == cdc.EventKeepalive {
				continue
			}
			evs = append(evs, ev)
			if ev.Kind == cdc.EventChange {
				changes++
			}
		case err := <-done:
			t.Fatalf("stream ended: %v", err)
		case <-ctx.Done():
			t.Fatalf("only %d of %d changes arrived", changes, n)
		}
	}
	// Wait for the commit that closes the last change.
	for evs[len(evs)-1].Kind != cdc.EventCommit {
		select {
		case ev := <-out:
			if ev.Kind != cdc.EventKeepalive {
				evs = append(evs, ev)
			}
		case <-ctx.Done():
			t.Fatal("no commit after the last change")
		}
	}
	cancel()
	<-done
	return evs
}

func changes(evs []cdc.Event) []cdc.Change {
	var out []cdc.Change
	for _, e := range evs {
		if e.Kind == cdc.EventChange {
			out = append(out, e.Change)
		}
	}
	return out
}

func TestStreamDecodesRealWAL(t *testing.T) {
	url, db := newDB(t)
	ctx := context.Background()
	info, err := cdc.Prepare(ctx, cdc.Config{URL: url, Slot: slotFor(url)})
	require.NoError(t, err)
	require.True(t, info.Created)
	// ~40 kB that does not compress: stored out of line (TOASTed).
	var b strings.Builder
	for i := 0; b.Len() < 40000; i++ {
		fmt.Fprintf(&b, "%x ", sha256.Sum256([]byte(fmt.Sprint(i))))
	}
	bigNotes := b.String()
	evs := collect(t, url, 0, func() {
		_, err := db.Exec(ctx, `INSERT INTO customers (id, company_id, first_name, last_name, cis_rate, notes, updated_at)
			VALUES (7, 1, 'Zoë', 'Ó Súilleabháin 🔥', 20.00, $1, '2026-11-29 13:56:32.123456+00')`, bigNotes)
		require.NoError(t, err)
		_, err = db.Exec(ctx, `UPDATE customers SET email = 'zoe@example.com' WHERE id = 7`)
		require.NoError(t, err)
		_, err = db.Exec(ctx, `DELETE FROM customers WHERE id = 7`)
		require.NoError(t, err)
	}, 3)
	ch := changes(evs)
	require.Len(t, ch, 3)

	ins := ch[0]
	require.Equal(t, "customers", ins.Table)
	require.Equal(t, cdc.Insert, ins.Op)
	require.Equal(t, "Zoë", ins.New["first_name"].Text)
	require.Equal(t, "Ó Súilleabháin 🔥", ins.New["last_name"].Text)
	require.Equal(t, "20.00", ins.New["cis_rate"].Text, "numeric arrives exactly")
	require.True(t, ins.New["email"].Null)
	require.Equal(t, bigNotes, ins.New["notes"].Text)
	require.True(t, strings.HasPrefix(ins.New["updated_at"].Text, "2026-11-29 13:56:32.123456"), ins.New["updated_at"].Text)
	require.NotZero(t, ins.CommitLSN)
	require.Equal(t, time.UTC, ins.CommitTime.Location())

	upd := ch[1]
	require.Equal(t, cdc.Update, upd.Op)
	require.Equal(t, "zoe@example.com", upd.New["email"].Text)
	require.True(t, upd.New["notes"].Unchanged, "an unchanged TOAST value is marked, never blank")
	require.True(t, upd.New.HasUnchanged())

	del := ch[2]
	require.Equal(t, cdc.Delete, del.Op)
	require.Nil(t, del.New)
	id, ok := del.Key.ID()
	require.True(t, ok)
	require.Equal(t, int64(7), id)

	// Commit events carry end LSNs after their commit LSNs, in order.
	var last pglogrepl.LSN
	for _, e := range evs {
		if e.Kind == cdc.EventCommit {
			require.Greater(t, e.EndLSN, e.CommitLSN)
			require.Greater(t, e.EndLSN, last)
			last = e.EndLSN
		}
	}
}

func TestPrepareRefusesWhatItCannotStreamAndNamesIt(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name  string
		setup string
		cfg   cdc.Config
		table string
		want  string
	}{
		{name: "error - a required column is missing", setup: `ALTER TABLE invoices DROP COLUMN line_items`, table: "invoices", want: "line_items"},
		{name: "error - a required column has another type", setup: `ALTER TABLE payments ALTER COLUMN reference TYPE varchar(40)`, table: "payments", want: "reference is character varying, want text"},
		{name: "error - a table is missing from the publication", setup: `CREATE PUBLICATION gessync FOR TABLE customers, invoices`, table: "payments", want: "not in publication gessync"},
		{name: "error - no publication and creating one is not allowed", cfg: cdc.Config{NoCreate: true}, want: "CREATE PUBLICATION gessync"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			url, db := newDB(t)
			if tc.setup != "" {
				_, err := db.Exec(ctx, tc.setup)
				require.NoError(t, err)
			}
			cfg := tc.cfg
			cfg.URL, cfg.Slot = url, slotFor(url)
			_, err := cdc.Prepare(ctx, cfg)
			var se *cdc.SetupError
			require.True(t, errors.As(err, &se), "want a SetupError, got %v", err)
			require.Equal(t, tc.table, se.Table)
			require.Contains(t, err.Error(), tc.want)
		})
	}
}

func TestPrepareRefusesATableTheRoleCannotRead(t *testing.T) {
	url, db := newDB(t)
	ctx := context.Background()
	_, err := db.Exec(ctx, `CREATE ROLE gessync_ro LOGIN REPLICATION; GRANT SELECT ON customers, invoices TO gessync_ro;
		CREATE PUBLICATION gessync FOR TABLE customers, invoices, payments`)
	require.NoError(t, err)
	roURL := strings.Replace(url, "postgres@", "gessync_ro@", 1)
	_, err = cdc.Prepare(ctx, cdc.Config{URL: roURL})
	var se *cdc.SetupError
	require.True(t, errors.As(err, &se), "want a SetupError, got %v", err)
	require.Equal(t, "payments", se.Table)
	require.Contains(t, err.Error(), "cannot SELECT")
}

// A row read with RowReader is text-identical to the same row streamed: gessync compares them
// to tell a superseded change.
func TestRowReaderMatchesTheStreamText(t *testing.T) {
	url, db := newDB(t)
	ctx := context.Background()
	_, err := cdc.Prepare(ctx, cdc.Config{URL: url, Slot: slotFor(url)})
	require.NoError(t, err)
	evs := collect(t, url, 0, func() {
		_, err := db.Exec(ctx, `INSERT INTO customers (id, company_id, email, cis_registered, cis_rate, country_code, notes)
			VALUES (12, 1, 'no.name@example.co.uk', true, 20.00, 'GB', NULL)`)
		require.NoError(t, err)
		_, err = db.Exec(ctx, `INSERT INTO invoices (id, company_id, customer_id, invoice_number, issue_date, line_items, total)
			VALUES (13, 1, 12, 'X-1', '2026-11-29', '[{"description": "Boiler", "quantity": 1.5, "unit_price": 85.00}]', 102.00)`)
		require.NoError(t, err)
	}, 2)
	pool, err := pgxpool.New(ctx, url)
	require.NoError(t, err)
	defer pool.Close()
	r := cdc.NewRowReader(pool)
	for _, ch := range changes(evs) {
		id, _ := ch.New.ID()
		cur, err := r.Row(ctx, ch.Table, id)
		require.NoError(t, err)
		for k, v := range cur {
			require.Equal(t, ch.New[k], v, "%s.%s", ch.Table, k)
		}
	}
}
