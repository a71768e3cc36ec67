package bench

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"

	"github.com/gessync/gessync/cdc"
	"github.com/gessync/gessync/ges"
)

// DecodeResult is the decode ceiling: the same row changes read from two slots created at the
// same LSN, by pg_recvlogical and by gessync's cdc stream.
type DecodeResult struct {
	Rows, RowsPerTxn  int
	WALBytes          int64
	Recv, CDC         time.Duration
	RecvRate, CDCRate float64 // changes a second
	Ratio             float64 // CDCRate / RecvRate
	// CPU seconds spent, per side: the walsender decoding for the client, and the client.
	RecvWalsenderCPU, RecvClientCPU time.Duration
	CDCWalsenderCPU, CDCClientCPU   time.Duration
}

func (d DecodeResult) String() string {
	return fmt.Sprintf(`decode ceiling: %d customers inserts in transactions of %d rows (%.0f MB of WAL), two slots copied at one LSN
  pg_recvlogical: %7.2f s  %9.0f changes/s  (walsender CPU %.2f s, pg_recvlogical CPU %.2f s)
  gessync cdc:    %7.2f s  %9.0f changes/s  (walsender CPU %.2f s, gessync CPU %.2f s)
  ratio gessync/pg_recvlogical: %.2f (target >= 0.80)`,
		d.Rows, d.RowsPerTxn, float64(d.WALBytes)/1e6,
		d.Recv.Seconds(), d.RecvRate, d.RecvWalsenderCPU.Seconds(), d.RecvClientCPU.Seconds(),
		d.CDC.Seconds(), d.CDCRate, d.CDCWalsenderCPU.Seconds(), d.CDCClientCPU.Seconds(), d.Ratio)
}

// decode measures the decode ceiling on rows customers inserts committed perTxn at a time.
func (r *runner) decode(ctx context.Context, rows, perTxn int) (DecodeResult, error) {
	res := DecodeResult{Rows: rows, RowsPerTxn: perTxn}
	const name = "bench_decode"
	if err := r.pg.CreateDatabase(ctx, name, ges.Schema); err != nil {
		return res, err
	}
	// Dropped last: its million rows are not vacuumed while a later part is measured.
	defer func() { _ = r.pg.DropDatabase(context.Background(), name) }()
	url := r.pg.URL(name)
	db, err := pgx.Connect(ctx, url)
	if err != nil {
		return res, err
	}
	defer db.Close(ctx)
	var start pglogrepl.LSN
	for _, q := range []string{
		`INSERT INTO companies (id, name) VALUES (1, 'Decode Heating')`,
		`CREATE PUBLICATION bench_decode FOR TABLE customers, invoices, payments`,
		`SELECT lsn FROM pg_create_logical_replication_slot('bench_recv', 'pgoutput')`,
		// A copy starts at exactly the first slot's position: both read the same WAL.
		`SELECT lsn FROM pg_copy_logical_replication_slot('bench_recv', 'bench_cdc')`,
	} {
		if strings.HasPrefix(q, "SELECT") {
			if err := db.QueryRow(ctx, q).Scan(&start); err != nil {
				return res, fmt.Errorf("%s: %w", q, err)
			}
		} else if _, err := db.Exec(ctx, q); err != nil {
			return res, fmt.Errorf("%s: %w", q, err)
		}
	}
	defer func() {
		_, _ = db.Exec(context.Background(), `SELECT pg_drop_replication_slot(s) FROM unnest(array['bench_recv','bench_cdc']) s`)
	}()
	var walStart pglogrepl.LSN
	if err := db.QueryRow(ctx, `SELECT pg_current_wal_lsn()`).Scan(&walStart); err != nil {
		return res, err
	}
	r.logf("decode: generating %d customers rows, %d per transaction", rows, perTxn)
	for done := 0; done < rows; done += perTxn {
		n := min(perTxn, rows-done)
		if _, err := db.Exec(ctx, `INSERT INTO customers (id, company_id, account_ref, customer_type, title, first_name, last_name, email, phone, mobile,
				address_line1, address_line2, town, county, postcode, payment_terms_days, notes)
			SELECT g, 1, 'REF' || g, 'domestic', 'Mrs', 'Jane', 'Smith ' || g, 'jane.smith' || g || '@example.co.uk', '01632 960123', '07700 900123',
				'12 Acacia Avenue', 'Flat 2', 'Leeds', 'West Yorkshire', 'LS1 4AB', 30, 'Side gate code 1234. Dog friendly.'
			FROM generate_series($1::bigint, $2::bigint) g`, done+1, done+n); err != nil {
			return res, err
		}
	}
	var end pglogrepl.LSN
	if err := db.QueryRow(ctx, `SELECT pg_current_wal_lsn()`).Scan(&end); err != nil {
		return res, err
	}
	res.WALBytes = int64(end - walStart)
	walsender := func(slot string) int {
		for i := 0; i < 200; i++ {
			var pid *int
			_ = db.QueryRow(ctx, `SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1`, slot).Scan(&pid)
			if pid != nil {
				return *pid
			}
			time.Sleep(5 * time.Millisecond)
		}
		return 0
	}

	// pg_recvlogical, as Debian ships it, writing to /dev/null and stopping at end.
	r.logf("decode: pg_recvlogical up to %s", end)
	cmd := exec.CommandContext(ctx, r.opts.PGRecvLogical, "-d", url, "--slot", "bench_recv", "--start",
		"-o", "proto_version=1", "-o", "publication_names=bench_decode", "--endpos", end.String(),
		"-f", "/dev/null", "--no-loop", "-s", "10")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	t0 := time.Now()
	if err := cmd.Start(); err != nil {
		return res, fmt.Errorf("pg_recvlogical: %w", err)
	}
	wsPid := walsender("bench_recv")
	var wsCPU time.Duration
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	for waiting := true; waiting; {
		select {
		case err := <-done:
			if err != nil {
				return res, fmt.Errorf("pg_recvlogical: %w: %s", err, stderr.String())
			}
			waiting = false
		case <-time.After(20 * time.Millisecond):
			if c, err := procCPU(wsPid); err == nil {
				wsCPU = c // the walsender exits with the client: keep its last reading
			}
		}
	}
	res.Recv = time.Since(t0)
	res.RecvWalsenderCPU = wsCPU
	res.RecvClientCPU = cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()

	// gessync's cdc stream into a consumer that discards, until the last commit.
	r.logf("decode: gessync cdc stream up to %s", end)
	stopProfile, err := r.profileSelf("decode-cdc")
	if err != nil {
		return res, err
	}
	defer stopProfile()
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	events := make(chan cdc.Event, 1024)
	stream := cdc.NewStream(cdc.Config{URL: url, Slot: "bench_cdc", Publication: "bench_decode", StatusInterval: 10 * time.Second})
	self0 := selfCPU()
	t0 = time.Now()
	runErr := make(chan error, 1)
	go func() { runErr <- stream.Run(sctx, 0, func() pglogrepl.LSN { return 0 }, events) }()
	wsPid = walsender("bench_cdc")
	changes := 0
	limit := time.After(30 * time.Minute)
	for finished := false; !finished; {
		select {
		case ev := <-events:
			switch ev.Kind {
			case cdc.EventChange:
				changes++
			case cdc.EventCommit:
				if ev.EndLSN >= end || changes >= rows {
					finished = true
				}
			}
		case err := <-runErr:
			return res, fmt.Errorf("cdc stream stopped after %d changes: %w", changes, err)
		case <-limit:
			return res, fmt.Errorf("cdc stream: only %d of %d changes in 30 min", changes, rows)
		}
	}
	res.CDC = time.Since(t0)
	res.CDCClientCPU = selfCPU() - self0
	res.CDCWalsenderCPU, _ = procCPU(wsPid)
	cancel()
	<-runErr
	if changes != rows {
		return res, fmt.Errorf("cdc stream: %d changes, want %d", changes, rows)
	}
	res.RecvRate = float64(rows) / res.Recv.Seconds()
	res.CDCRate = float64(rows) / res.CDC.Seconds()
	res.Ratio = res.CDCRate / res.RecvRate
	return res, nil
}
