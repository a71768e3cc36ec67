package e2e_test

import (
	"context"
	"net/http"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/gessync/gessync/cdc"
)

// TestShardRefusesWithoutReplicaIdentityAndGESKeepsWriting starts a shard on GES's default
// replica identity: it must refuse, say what the DBA must run, create no publication (which
// would make PostgreSQL refuse GES's UPDATEs and DELETEs), and the single-instance mode must
// still work on the same database.
func TestShardRefusesWithoutReplicaIdentityAndGESKeepsWriting(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	e.exec(customerSQL)
	e.exec(invoiceSQL)
	e.exec(paymentSQL)

	s := e.startInstance("s0", e.proxy, "GESSYNC_SHARD=0/2", "GESSYNC_SLOT="+e.dbName+"_s0")
	e.eventually(30*time.Second, "the shard refuses to start", s.exited)
	require.NotZero(t, s.cmd.ProcessState.ExitCode())
	out := s.output()
	for _, table := range cdc.Tables {
		require.Contains(t, out, "CREATE UNIQUE INDEX CONCURRENTLY "+table+"_company_id_id_key ON "+table+" (company_id, id);")
		require.Contains(t, out, "ALTER TABLE "+table+" REPLICA IDENTITY USING INDEX "+table+"_company_id_id_key;")
	}
	require.Contains(t, out, "will not create publication gessync_s0_of_2")

	var pubs, slots int
	require.NoError(t, e.db.QueryRow(ctx, `SELECT count(*) FROM pg_publication WHERE pubname LIKE 'gessync_s%'`).Scan(&pubs))
	require.NoError(t, e.db.QueryRow(ctx, `SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1`, e.dbName+"_s0").Scan(&slots))
	require.Zero(t, pubs, "no row-filtered publication")
	require.Zero(t, slots, "no shard slot")
	// GES's own writes keep working.
	e.exec(`UPDATE customers SET email = 'margaret@bennett.example', updated_at = now() WHERE id = 10`)
	e.exec(`UPDATE invoices SET notes = 'boiler serviced' WHERE id = 20`)
	e.exec(`UPDATE payments SET reference = 'WHITAKER DEP' WHERE id = 30`)
	e.exec(`DELETE FROM payments WHERE id = 30`)

	// One instance without a shard needs none of it.
	one := e.startInstance("one", e.proxy)
	e.eventually(30*time.Second, "the unsharded instance leads and streams", one.leading)
	one.connect(1)
	e.exec(`UPDATE customers SET phone = '0113 496 0999', updated_at = now() WHERE id = 10`)
	one.caughtUp()
	require.Len(t, e.business(0).Contacts, 1)
}

// TestTwoShardsSyncEveryCompanyExactlyOnce makes the DBA's replica identity change, runs two
// shards (company_id % 2), each behind its own proxy to the same Sage, writes for four
// companies (inserts, updates and deletes, some transactions spanning companies), and checks
// that every company's Sage business equals GES and that each company's writes reached Sage
// through its own shard only.
func TestTwoShardsSyncEveryCompanyExactlyOnce(t *testing.T) {
	e := newEnv(t)
	e.exec(`INSERT INTO companies (id, name) VALUES (3, 'Calder Gas'), (4, 'Dales Plumbing')`)
	for _, table := range cdc.Tables {
		for _, stmt := range strings.Split(cdc.IdentityFixSQL(table), ";") {
			if strings.TrimSpace(stmt) != "" {
				e.exec(stmt)
			}
		}
	}

	// Each shard reaches Sage through its own proxy; record the business of every write.
	var mu sync.Mutex
	writes := map[int]map[string]int{0: {}, 1: {}}
	proxies := map[int]*httpProxy{}
	for k := 0; k < 2; k++ {
		p := newProxy(t, e.sandbox)
		t.Cleanup(func() { p.Close() })
		hook := func(r *http.Request, status int) bool {
			if business := r.Header.Get("X-Business"); business != "" {
				mu.Lock()
				writes[k][business]++
				mu.Unlock()
			}
			return true
		}
		p.afterWrite.Store(&hook)
		proxies[k] = p
	}
	s0 := e.startInstance("s0", proxies[0], "GESSYNC_SHARD=0/2", "GESSYNC_SLOT="+e.dbName+"_s0")
	s1 := e.startInstance("s1", proxies[1], "GESSYNC_SHARD=1/2", "GESSYNC_SLOT="+e.dbName+"_s1")
	e.eventually(30*time.Second, "shard 0 streams", s0.leading)
	e.eventually(30*time.Second, "shard 1 streams", s1.leading)
	s1.connect(1)
	s0.connect(2)
	s1.connect(3)
	s0.connect(4)
	// A company's resyncs and backfills belong to its shard, or they would race it.
	code, body := s0.post("/api/companies/1/resync", `{"table": "customers", "id": 1}`)
	require.Equal(t, http.StatusServiceUnavailable, code, body)
	require.Contains(t, body, "belongs to shard 1/2")
	code, body = s0.post("/api/companies/3/backfill", ``)
	require.NotEqual(t, http.StatusAccepted, code, body)
	require.Contains(t, body, "belongs to shard 1/2")

	w := e.newBurstWriter()
	for i := 0; i < 24; i++ {
		require.NoError(t, w.step(i, 1+i%4))
	}
	// One transaction touching every company: each shard gets its part of it.
	e.exec(`UPDATE customers SET phone = '0113 496 0000', updated_at = now() WHERE id IN (1000, 1001, 1002, 1003)`)
	e.exec(`DELETE FROM payments WHERE id IN (3008, 3009, 3010, 3011)`)
	s0.caughtUp()
	s1.caughtUp()

	for c := 1; c <= 4; c++ {
		e.requireSageEqualsGES(c)
	}
	mu.Lock()
	defer mu.Unlock()
	for k := 0; k < 2; k++ {
		var got []string
		for business := range writes[k] {
			got = append(got, business)
		}
		sort.Strings(got)
		var want []string
		for c := 1; c <= 4; c++ {
			if c%2 == k {
				want = append(want, e.businessOf(c))
			}
		}
		sort.Strings(want)
		require.Equal(t, want, got, "shard %d/2 wrote to the businesses of its companies only", k)
	}
	for _, name := range []string{"gessync_s0_of_2", "gessync_s1_of_2"} {
		var n int
		require.NoError(t, e.db.QueryRow(context.Background(), `SELECT count(*) FROM pg_publication_tables WHERE pubname = $1 AND rowfilter IS NOT NULL`, name).Scan(&n))
		require.Equal(t, 3, n, "publication %s filters all three tables", name)
	}
}

// TestMoveFromOneInstanceToTwoShards follows the README's steps for moving from one instance to
// two shards while GES keeps writing: the DBA's identity change, the shards' publications and
// slots created while the single instance still runs, the single instance stopped, the shards
// started, the old slot dropped. Every company's Sage business must equal GES: the changes both
// saw are sent once, and none made between the steps is lost.
func TestMoveFromOneInstanceToTwoShards(t *testing.T) {
	e := newEnv(t)
	e.exec(`INSERT INTO companies (id, name) VALUES (3, 'Calder Gas'), (4, 'Dales Plumbing')`)
	one := e.startInstance("one", e.proxy)
	e.eventually(30*time.Second, "the single instance streams", one.leading)
	for c := 1; c <= 4; c++ {
		one.connect(c)
	}
	w := e.newBurstWriter()
	i := 0
	write := func(n int) {
		t.Helper()
		for end := i + n; i < end; i++ {
			require.NoError(t, w.step(i, 1+i%4))
		}
	}
	write(8)
	one.caughtUp()

	// 1. The DBA's replica identity change, with GES and gessync running.
	for _, table := range cdc.Tables {
		for _, stmt := range strings.Split(cdc.IdentityFixSQL(table), ";") {
			if strings.TrimSpace(stmt) != "" {
				e.exec(stmt)
			}
		}
	}
	write(2)
	// 2. The shards' publications and slots, while the single instance still runs.
	for k := 0; k < 2; k++ {
		s := cdc.Shard{Index: k, Of: 2}
		e.exec(s.PublicationSQL(s.Name("gessync")))
		e.exec(`SELECT pg_create_logical_replication_slot($1, 'pgoutput')`, e.dbName+"_"+s.Name("s"))
	}
	write(4) // seen by the single instance and by the shards
	one.caughtUp()
	write(2) // committed while the single instance may still be at work
	// 3. Stop the single instance.
	one.stop()
	require.Zero(t, one.cmd.ProcessState.ExitCode())
	write(4) // nobody runs
	// 4. Start the shards.
	s0 := e.startInstance("s0", e.proxy, "GESSYNC_SHARD=0/2", "GESSYNC_SLOT="+e.dbName+"_s_s0_of_2")
	s1 := e.startInstance("s1", e.proxy, "GESSYNC_SHARD=1/2", "GESSYNC_SLOT="+e.dbName+"_s_s1_of_2")
	e.eventually(30*time.Second, "shard 0 streams", s0.leading)
	e.eventually(30*time.Second, "shard 1 streams", s1.leading)
	write(4)
	// 5. Drop the old slot.
	e.exec(`SELECT pg_drop_replication_slot($1)`, e.dbName)
	s0.caughtUp()
	s1.caughtUp()

	for c := 1; c <= 4; c++ {
		e.requireSageEqualsGES(c)
	}
	st, _ := s0.status()
	for _, c := range st.Companies {
		require.Zero(t, c.Failed, "company %d failures", c.CompanyID)
		require.Zero(t, c.OpenErrors, "company %d open errors", c.CompanyID)
	}
}
