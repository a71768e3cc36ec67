package state

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestSaveMappingAndResolveDoesBothInOneStatement(t *testing.T) {
	st, c := newStore(t)
	ctx := context.Background()
	require.NoError(t, st.Log(ctx, Entry{CompanyID: 1, Table: "customers", GESID: 10, Level: LevelError, Code: "sage.RecordInvalid", Message: "no name"}))
	require.NoError(t, st.Log(ctx, Entry{CompanyID: 1, Table: "invoices", GESID: 20, Level: LevelError, Code: "waiting:customers/10", Message: "waits"}))
	require.NoError(t, st.Log(ctx, Entry{CompanyID: 2, Table: "invoices", GESID: 30, Level: LevelError, Code: "waiting:customers/10", Message: "another company's"}))
	first, err := st.AttemptCreate(ctx, "customers", 10, "biz", 0)
	require.NoError(t, err)
	require.True(t, first)

	waiting, err := st.SaveMappingAndResolve(ctx, Mapping{Table: "customers", GESID: 10, CompanyID: 1, BusinessID: "biz", SageID: "c10", PayloadHash: "h1"},
		Waker{Code: "waiting:customers/10"})
	require.NoError(t, err)

	require.Len(t, waiting, 1, "the company's record waiting for this one, and only it")
	assert.Equal(t, int64(20), waiting[0].GESID)
	m, err := st.Mapping(ctx, "customers", 10)
	require.NoError(t, err)
	assert.Equal(t, "c10", m.SageID)
	assert.Equal(t, "h1", m.PayloadHash)
	open, err := st.OpenErrors(ctx)
	require.NoError(t, err)
	assert.Equal(t, map[int64]int{1: 1, 2: 1}, open, "the customer's own error is resolved; the waiting ones stay open")
	var attempts int
	require.NoError(t, c.QueryRow(ctx, `SELECT count(*) FROM gessync.create_attempts`).Scan(&attempts))
	assert.Zero(t, attempts, "the create attempt is forgotten")
}

func TestParentsWithHashGroupsByCompany(t *testing.T) {
	st, _ := newStore(t)
	ctx := context.Background()
	for _, m := range []Mapping{
		{Table: "payments", GESID: 1, CompanyID: 1, BusinessID: "b", SageID: "p1", ParentID: 20, PayloadHash: "set-aside"},
		{Table: "payments", GESID: 2, CompanyID: 1, BusinessID: "b", SageID: "p2", ParentID: 20, PayloadHash: "set-aside"},
		{Table: "payments", GESID: 3, CompanyID: 1, BusinessID: "b", SageID: "p3", ParentID: 21, PayloadHash: "other"},
		{Table: "payments", GESID: 4, CompanyID: 2, BusinessID: "c", SageID: "p4", ParentID: 40, PayloadHash: "set-aside"},
		{Table: "invoices", GESID: 5, CompanyID: 2, BusinessID: "c", SageID: "i5", ParentID: 50, PayloadHash: "set-aside"},
	} {
		require.NoError(t, st.SaveMapping(ctx, m))
	}
	got, err := st.ParentsWithHash(ctx, "payments", "set-aside")
	require.NoError(t, err)
	assert.Equal(t, map[int64][]int64{1: {20}, 2: {40}}, got)
}

func TestMappingPairAttemptRecordsTheAttemptOnlyWithoutAMapping(t *testing.T) {
	st, c := newStore(t)
	ctx := context.Background()
	require.NoError(t, st.SaveMapping(ctx, Mapping{Table: "customers", GESID: 10, CompanyID: 1, BusinessID: "biz", SageID: "c10"}))

	self, parent, first, err := st.MappingPairAttempt(ctx, "invoices", 20, "customers", 10, "biz", 1)
	require.NoError(t, err)
	assert.True(t, first, "no mapping and no earlier attempt")
	assert.Equal(t, Mapping{Table: "invoices", GESID: 20}, self)
	assert.Equal(t, "c10", parent.SageID)

	_, _, first, err = st.MappingPairAttempt(ctx, "invoices", 20, "customers", 10, "biz", 1)
	require.NoError(t, err)
	assert.False(t, first, "the earlier attempt was never acknowledged")

	require.NoError(t, st.SaveMapping(ctx, Mapping{Table: "invoices", GESID: 20, CompanyID: 1, BusinessID: "biz", SageID: "i20"}))
	self, _, first, err = st.MappingPairAttempt(ctx, "invoices", 20, "customers", 10, "biz", 1)
	require.NoError(t, err)
	assert.False(t, first)
	assert.Equal(t, "i20", self.SageID)
	var attempts int
	require.NoError(t, c.QueryRow(ctx, `SELECT count(*) FROM gessync.create_attempts`).Scan(&attempts))
	assert.Zero(t, attempts, "a record with a mapping records no attempt")

	_, _, first, err = st.MappingPairAttempt(ctx, "invoices", 20, "customers", 10, "other-business", 1)
	require.NoError(t, err)
	assert.True(t, first, "a mapping in another business is no mapping here")
}

// A synced change resolves its record's errors and reads those waiting for it; with a sync log
// of 200,000 entries (matches and notes are never resolved) that must be an index lookup, not a
// scan of the log per change.
func TestResolvingARecordDoesNotScanTheSyncLog(t *testing.T) {
	_, c := newStore(t)
	ctx := context.Background()
	_, err := c.Exec(ctx, `INSERT INTO gessync.sync_log (company_id, ges_table, ges_id, level, code, message, sage_message, action)
		SELECT g % 200, 'invoices', g, CASE WHEN g % 100 = 0 THEN 'error' ELSE 'info' END, 'match', 'm', '', '' FROM generate_series(1, 200000) g`)
	require.NoError(t, err)
	_, err = c.Exec(ctx, `ANALYZE gessync.sync_log`)
	require.NoError(t, err)
	q := func(sql string) string { return strings.ReplaceAll(sql, "@s.", "gessync.") }
	for name, stmt := range map[string]struct {
		sql  string
		args []any
	}{
		"resolve": {q(resolveRecordSQL), []any{"invoices", int64(12345)}},
		"resolve and waiting": {q(`WITH resolved AS (` + resolveRecordSQL + ` RETURNING id) ` + waitingSQL(4)),
			[]any{"invoices", int64(12345), int64(45), "waiting:invoices/12345", "payments", int64(7), "sage.allocated_by_hand"}},
	} {
		var plan []string
		rows, err := c.Query(ctx, `EXPLAIN `+stmt.sql, stmt.args...)
		require.NoError(t, err)
		for rows.Next() {
			var line string
			require.NoError(t, rows.Scan(&line))
			plan = append(plan, line)
		}
		require.NoError(t, rows.Err())
		assert.NotContains(t, strings.Join(plan, "\n"), "Seq Scan", "%s:\n%s", name, strings.Join(plan, "\n"))
	}
}

func TestAttemptIsTheFirstAttemptWithEveryParent(t *testing.T) {
	st, c := newStore(t)
	ctx := context.Background()
	_, err := st.Attempt(ctx, "invoices", 20, "biz")
	require.ErrorIs(t, err, ErrNotFound)

	_, err = st.AttemptCreate(ctx, "invoices", 20, "biz", 10)
	require.NoError(t, err)
	var recorded time.Time
	require.NoError(t, c.QueryRow(ctx, `SELECT attempted_at FROM gessync.create_attempts`).Scan(&recorded))
	// The invoice moved to customer 11 before the next attempt, then back: each parent once.
	first, err := st.AttemptCreate(ctx, "invoices", 20, "biz", 11)
	require.NoError(t, err)
	require.False(t, first)
	first, err = st.AttemptCreate(ctx, "invoices", 20, "biz", 10)
	require.NoError(t, err)
	require.False(t, first)
	a, err := st.Attempt(ctx, "invoices", 20, "biz")
	require.NoError(t, err)
	assert.Equal(t, []int64{10, 11}, a.ParentIDs, "every parent a create was sent for")
	assert.True(t, recorded.Equal(a.At), "the first attempt's time, %s, not a later one's: %s", recorded, a.At)
	assert.Equal(t, time.UTC, a.At.Location())

	// Recorded with the mapping read, the parent is kept too.
	_, _, first, err = st.MappingPairAttempt(ctx, "payments", 30, "invoices", 20, "biz", 1)
	require.NoError(t, err)
	require.True(t, first)
	_, _, first, err = st.MappingPairAttempt(ctx, "payments", 30, "invoices", 21, "biz", 1)
	require.NoError(t, err)
	require.False(t, first)
	a, err = st.Attempt(ctx, "payments", 30, "biz")
	require.NoError(t, err)
	assert.Equal(t, []int64{20, 21}, a.ParentIDs)

	_, err = st.Attempt(ctx, "invoices", 20, "another business")
	require.ErrorIs(t, err, ErrNotFound)
}

func TestAnUpdateAttemptLeavesTheMappingUnacknowledgedUntilSaved(t *testing.T) {
	st, _ := newStore(t)
	ctx := context.Background()
	m := Mapping{Table: "invoices", GESID: 20, CompanyID: 1, BusinessID: "biz", SageID: "s20", PayloadHash: "h1"}
	require.NoError(t, st.SaveMapping(ctx, m))
	got, err := st.Mapping(ctx, "invoices", 20)
	require.NoError(t, err)
	assert.False(t, got.Unacknowledged)

	require.NoError(t, st.AttemptUpdate(ctx, "invoices", 20, "biz"))
	got, err = st.Mapping(ctx, "invoices", 20)
	require.NoError(t, err)
	assert.True(t, got.Unacknowledged, "the update's reply is not saved yet")
	self, _, err := st.MappingPair(ctx, "invoices", 20, "customers", 10)
	require.NoError(t, err)
	assert.True(t, self.Unacknowledged)

	m.PayloadHash = "h2"
	require.NoError(t, st.SaveMapping(ctx, m))
	got, err = st.Mapping(ctx, "invoices", 20)
	require.NoError(t, err)
	assert.False(t, got.Unacknowledged)
	assert.Equal(t, "h2", got.PayloadHash)
}

func TestForgetSageRecordDropsTheMappingAndNotesWhatTheCreateReplaces(t *testing.T) {
	st, _ := newStore(t)
	ctx := context.Background()
	require.NoError(t, st.SaveMapping(ctx, Mapping{Table: "payments", GESID: 30, CompanyID: 1, BusinessID: "biz", SageID: "r30", PayloadHash: "h"}))
	require.NoError(t, st.AttemptUpdate(ctx, "payments", 30, "biz")) // its update was refused: not found

	require.NoError(t, st.ForgetSageRecord(ctx, "payments", 30, "biz", "r30"))
	_, err := st.Mapping(ctx, "payments", 30)
	require.ErrorIs(t, err, ErrNotFound)
	replacing, err := st.Replacements(ctx)
	require.NoError(t, err)
	assert.Equal(t, []Replacement{{Table: "payments", GESID: 30, BusinessID: "biz", Replaces: "r30"}}, replacing)

	first, err := st.AttemptCreate(ctx, "payments", 30, "biz", 20)
	require.NoError(t, err)
	assert.False(t, first, "a create replacing a Sage record is not a first attempt")
}

// A create's attempt looks its record's mapping up by the primary key, whatever the planner
// thinks of the table: the generic plan, made while the statistics still describe a small
// table, once read every mapping of the business (id_map_sage) or company (id_map_company) in
// the table on each create.
func TestTheAttemptLooksItsMappingUpByPrimaryKey(t *testing.T) {
	st, c := newStore(t)
	ctx := context.Background()
	for i := range int64(50) {
		require.NoError(t, st.SaveMapping(ctx, Mapping{Table: "invoices", GESID: i, CompanyID: i, BusinessID: fmt.Sprint("biz", i), SageID: fmt.Sprint("i", i)}))
	}
	_, err := c.Exec(ctx, `ANALYZE gessync.id_map`)
	require.NoError(t, err)
	_, err = c.Exec(ctx, `INSERT INTO gessync.id_map (ges_table, ges_id, company_id, business_id, sage_id, contact_id, payload_hash, updated_at)
		SELECT 'invoices', g, 1, 'biz1', 'i' || g, '', '', now() FROM generate_series(100, 5099) g`)
	require.NoError(t, err)

	_, err = c.Exec(ctx, `SET plan_cache_mode = force_generic_plan`)
	require.NoError(t, err)
	sql := st.q(`EXPLAIN (ANALYZE, COSTS OFF, SUMMARY OFF, TIMING OFF) ` + mappingPairAttemptSQL)
	rows, err := c.Query(ctx, sql, "invoices", int64(90000), "customers", int64(10), "biz1", int64(1))
	require.NoError(t, err)
	lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	plan := strings.Join(lines, "\n")
	assert.NotContains(t, plan, "Rows Removed by Filter", "a lookup read mappings it did not want:\n%s", plan)
	assert.NotContains(t, plan, "id_map_sage", plan)
	assert.NotContains(t, plan, "id_map_company", plan)

	_, _, first, err := st.MappingPairAttempt(ctx, "invoices", 90000, "customers", 10, "biz1", 1)
	require.NoError(t, err)
	assert.False(t, first, "the EXPLAIN ANALYZE above recorded the attempt")
}
