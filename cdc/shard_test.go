package cdc_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/gessync/gessync/cdc"
)

func TestParseShard(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want cdc.Shard
		err  string
	}{
		{in: "", want: cdc.Shard{}},
		{in: "0/2", want: cdc.Shard{Index: 0, Of: 2}},
		{in: " 2 / 3 ", want: cdc.Shard{Index: 2, Of: 3}},
		{in: "2/2", err: "k must be between 0 and 1"},
		{in: "-1/2", err: "k must be between 0 and 1"},
		{in: "0/1", err: "N must be at least 2"},
		{in: "0/0", err: "N must be at least 2"},
		{in: "1", err: "write k/N"},
		{in: "a/b", err: "whole numbers"},
	} {
		got, err := cdc.ParseShard(tc.in)
		if tc.err != "" {
			require.ErrorContains(t, err, tc.err, tc.in)
			continue
		}
		require.NoError(t, err, tc.in)
		require.Equal(t, tc.want, got, tc.in)
	}
	s := cdc.Shard{Index: 1, Of: 3}
	require.Equal(t, "1/3", s.String())
	require.Equal(t, "company_id % 3 = 1", s.Filter())
	require.Equal(t, "gessync_s1_of_3", s.Name("gessync"))
	require.True(t, s.Owns(4))
	require.False(t, s.Owns(3))
	require.True(t, cdc.Shard{}.Owns(3))
	require.Equal(t, "gessync", cdc.Shard{}.Name("gessync"))
	require.Equal(t, "CREATE PUBLICATION p FOR TABLE customers WHERE (company_id % 3 = 1), invoices WHERE (company_id % 3 = 1), payments WHERE (company_id % 3 = 1)", s.PublicationSQL("p"))
}

// shardDB is a GES database with companies 1–4 and one customer, invoice and payment each.
func shardDB(t *testing.T) (string, *pgx.Conn) {
	t.Helper()
	url, db := newDB(t)
	ctx := context.Background()
	_, err := db.Exec(ctx, `INSERT INTO companies (id, name) VALUES (2, 'Two'), (3, 'Three'), (4, 'Four');
		INSERT INTO customers (id, company_id, first_name) SELECT c, c, 'C' || c FROM generate_series(1, 4) c;
		INSERT INTO invoices (id, company_id, customer_id, invoice_number) SELECT c, c, c, 'I-' || c FROM generate_series(1, 4) c;
		INSERT INTO payments (id, company_id, invoice_id, amount, method, paid_on) SELECT c, c, c, 10, 'cash', '2026-11-01' FROM generate_series(1, 4) c;`)
	require.NoError(t, err)
	return url, db
}

// gesWritesWork runs the UPDATEs and DELETEs GES makes on every table.
func gesWritesWork(t *testing.T, db *pgx.Conn) error {
	t.Helper()
	ctx := context.Background()
	for _, sql := range []string{
		`UPDATE customers SET email = 'a@example.com' WHERE id = 1`,
		`UPDATE invoices SET notes = 'n' WHERE id = 1`,
		`UPDATE payments SET reference = 'r' WHERE id = 1`,
		`DELETE FROM payments WHERE id = 3`,
	} {
		if _, err := db.Exec(ctx, sql); err != nil {
			return err
		}
	}
	return nil
}

func fixIdentity(t *testing.T, db *pgx.Conn) {
	t.Helper()
	for _, table := range cdc.Tables {
		for _, stmt := range strings.Split(cdc.IdentityFixSQL(table), ";") {
			if strings.TrimSpace(stmt) == "" {
				continue
			}
			_, err := db.Exec(context.Background(), stmt)
			require.NoError(t, err, stmt)
		}
	}
}

// The premise of the identity check, on a real server: PostgreSQL accepts a row-filtered
// publication on GES's default replica identity and then refuses GES's own UPDATEs.
func TestRowFilterWithoutReplicaIdentityBreaksGESUpdates(t *testing.T) {
	_, db := shardDB(t)
	ctx := context.Background()
	_, err := db.Exec(ctx, cdc.Shard{Index: 0, Of: 2}.PublicationSQL("premise"))
	require.NoError(t, err, "PostgreSQL accepts the publication")
	err = gesWritesWork(t, db)
	require.ErrorContains(t, err, `cannot update table "customers"`)
	_, err = db.Exec(ctx, `DROP PUBLICATION premise`)
	require.NoError(t, err)
	require.NoError(t, gesWritesWork(t, db))
}

func TestPrepareShardRefusesWithoutReplicaIdentityAndLeavesGESAlone(t *testing.T) {
	url, db := shardDB(t)
	ctx := context.Background()
	cfg := cdc.Config{URL: url, Slot: "shard_refuse_s0", Publication: "gessync_s0_of_2", Shard: cdc.Shard{Index: 0, Of: 2}}
	_, err := cdc.Prepare(ctx, cfg)
	var se *cdc.SetupError
	require.True(t, errors.As(err, &se), "%v", err)
	require.Equal(t, "customers, invoices, payments", se.Table)
	msg := err.Error()
	for _, table := range cdc.Tables {
		require.Contains(t, msg, cdc.IdentityFixSQL(table))
		require.Contains(t, msg, table+" has REPLICA IDENTITY DEFAULT (primary key id)")
	}
	require.Contains(t, msg, "shard 0/2")
	require.Contains(t, msg, "without GESSYNC_SHARD")

	var pubs, slots int
	require.NoError(t, db.QueryRow(ctx, `SELECT count(*) FROM pg_publication WHERE pubname = $1`, cfg.Publication).Scan(&pubs))
	require.NoError(t, db.QueryRow(ctx, `SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1`, cfg.Slot).Scan(&slots))
	require.Zero(t, pubs, "no publication created")
	require.Zero(t, slots, "no slot created")
	require.NoError(t, gesWritesWork(t, db), "GES's updates and deletes still work")

	// An identity on an index that lacks id is refused too: a DELETE would not name the record.
	_, err = db.Exec(ctx, `ALTER TABLE invoices REPLICA IDENTITY USING INDEX invoices_company_id_invoice_number_key`)
	require.NoError(t, err)
	_, err = cdc.Prepare(ctx, cfg)
	require.ErrorContains(t, err, "invoices has REPLICA IDENTITY USING INDEX invoices_company_id_invoice_number_key (company_id, invoice_number)")

	// The single-instance mode needs none of it.
	_, err = cdc.Prepare(ctx, cdc.Config{URL: url, Slot: "shard_refuse_all"})
	require.NoError(t, err)
	require.NoError(t, gesWritesWork(t, db))
	_, err = db.Exec(ctx, `SELECT pg_drop_replication_slot('shard_refuse_all')`)
	require.NoError(t, err)
}

func TestPrepareShardAfterTheDBAMadeCompanyIDPartOfTheIdentity(t *testing.T) {
	url, db := shardDB(t)
	ctx := context.Background()
	fixIdentity(t, db)
	cfg := cdc.Config{URL: url, Slot: "shard_ok_s1", Publication: "gessync_s1_of_2", Shard: cdc.Shard{Index: 1, Of: 2}, StatusInterval: 100 * time.Millisecond}
	info, err := cdc.Prepare(ctx, cfg)
	require.NoError(t, err)
	t.Cleanup(func() { _, _ = db.Exec(context.Background(), `SELECT pg_drop_replication_slot($1)`, cfg.Slot) })
	require.True(t, info.Created)
	rows, err := db.Query(ctx, `SELECT tablename, rowfilter FROM pg_publication_tables WHERE pubname = $1 ORDER BY tablename`, cfg.Publication)
	require.NoError(t, err)
	type tf struct{ Table, Filter string }
	got, err := pgx.CollectRows(rows, pgx.RowToStructByPos[tf])
	require.NoError(t, err)
	require.Equal(t, []tf{{"customers", "((company_id % (2)::bigint) = 1)"}, {"invoices", "((company_id % (2)::bigint) = 1)"}, {"payments", "((company_id % (2)::bigint) = 1)"}}, got)
	require.NoError(t, gesWritesWork(t, db), "GES's updates and deletes work with the filtered publication")

	// Prepare again accepts the publication it made.
	_, err = cdc.Prepare(ctx, cfg)
	require.NoError(t, err)

	// Only odd companies stream; a DELETE's key carries company_id and id.
	out := make(chan cdc.Event, 64)
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	s := cdc.NewStream(cfg)
	done := make(chan error, 1)
	var from pglogrepl.LSN // past the writes above
	require.NoError(t, db.QueryRow(ctx, `SELECT pg_current_wal_lsn()`).Scan(&from))
	go func() { done <- s.Run(sctx, from, func() pglogrepl.LSN { return from }, out) }()
	_, err = db.Exec(ctx, `UPDATE customers SET email = 'x@example.com' WHERE id IN (1, 2, 3, 4);
		DELETE FROM payments WHERE id IN (2, 4); DELETE FROM payments WHERE id = 1;
		UPDATE invoices SET notes = 'last' WHERE id = 3`)
	require.NoError(t, err)
	var got2 []cdc.Change
	for len(got2) == 0 || got2[len(got2)-1].Table != "invoices" {
		select {
		case ev := <-out:
			if ev.Kind == cdc.EventChange {
				got2 = append(got2, ev.Change)
			}
		case err := <-done:
			t.Fatalf("stream ended: %v", err)
		case <-sctx.Done():
			t.Fatalf("changes of odd companies did not arrive: %+v", got2)
		}
	}
	cancel()
	<-done
	var seen []string
	for _, ch := range got2 {
		c, ok := ch.New.Int("company_id")
		if ch.Op == cdc.Delete {
			c, ok = ch.Key.Int("company_id")
			id, idOK := ch.Key.ID()
			require.True(t, idOK, "delete key names the record")
			require.Equal(t, int64(1), id)
		}
		require.True(t, ok, "company_id present in %s %s", ch.Table, ch.Op)
		require.Equal(t, int64(1), c%2, "shard 1/2 streams only odd companies")
		seen = append(seen, ch.Table+" "+ch.Op.String())
	}
	require.Equal(t, []string{"customers update", "customers update", "payments delete", "invoices update"}, seen)
}

func TestPrepareRefusesAPublicationThatDoesNotMatchTheShard(t *testing.T) {
	url, db := shardDB(t)
	ctx := context.Background()
	fixIdentity(t, db)
	// Made for two shards, used as shard 0 of three.
	_, err := db.Exec(ctx, cdc.Shard{Index: 0, Of: 2}.PublicationSQL("pub_two"))
	require.NoError(t, err)
	_, err = cdc.Prepare(ctx, cdc.Config{URL: url, Slot: "shard_mismatch", Publication: "pub_two", Shard: cdc.Shard{Index: 0, Of: 3}})
	require.ErrorContains(t, err, "publication pub_two does not match shard 0/3")
	require.ErrorContains(t, err, "DROP PUBLICATION pub_two")
	// An unsharded instance refuses a filtered publication: it would miss companies.
	_, err = cdc.Prepare(ctx, cdc.Config{URL: url, Slot: "shard_mismatch", Publication: "pub_two"})
	require.ErrorContains(t, err, "it belongs to a shard")
	// A shard refuses an unfiltered publication: it would see every company.
	_, err = db.Exec(ctx, `CREATE PUBLICATION pub_all FOR TABLE customers, invoices, payments`)
	require.NoError(t, err)
	_, err = cdc.Prepare(ctx, cdc.Config{URL: url, Slot: "shard_mismatch", Publication: "pub_all", Shard: cdc.Shard{Index: 0, Of: 2}})
	require.ErrorContains(t, err, "customers has no row filter")
	var slots int
	require.NoError(t, db.QueryRow(ctx, `SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'shard_mismatch'`).Scan(&slots))
	require.Zero(t, slots)
}

func TestReplicaIdentityFullCoversTheShardFilter(t *testing.T) {
	_, db := shardDB(t)
	ctx := context.Background()
	_, err := db.Exec(ctx, `ALTER TABLE customers REPLICA IDENTITY FULL`)
	require.NoError(t, err)
	ids, err := cdc.ShardIdentity(ctx, db)
	require.NoError(t, err)
	require.Len(t, ids, 3)
	require.True(t, ids[0].Covers(cdc.IdentityColumns...), ids[0].Describe())
	require.Equal(t, "REPLICA IDENTITY FULL", ids[0].Describe())
	require.False(t, ids[1].Covers(cdc.IdentityColumns...))
	err = cdc.CheckShardIdentity(ctx, db, cdc.Config{Publication: "p", Shard: cdc.Shard{Index: 0, Of: 2}})
	require.ErrorContains(t, err, "invoices, payments:")
	require.NotContains(t, err.Error(), "customers_company_id_id_key")
}
