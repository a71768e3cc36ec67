// Package bench measures gessync on this machine, side by side in one run: the decode ceiling
// against pg_recvlogical, end-to-end rate and latency against the Sage sandbox with latency and
// the per-business limit, Sage calls per GES change, the daemon's memory, and catch-up time.
// `gessync bench` runs it (BENCHMARKS.md quotes the output); `gessync bench --smoke` and the
// package's test run it at tiny sizes so that it cannot rot.
//
// Everything runs on loopback: a throwaway PostgreSQL (internal/pglocal), the sandbox behind a
// recorder in this process, and the daemon (daemon.New/Run) in a child process so that its RSS
// and CPU are its own. Every loop and wait is bounded.
package bench

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/gessync/gessync/internal/pglocal"
)

// Options sizes a run. Zero values take the full-run defaults (see Defaults); Smoke shrinks
// everything.
type Options struct {
	// Parts to run: decode, e2e (limit on), off (limit off), calls, memory, catchup (all when
	// empty).
	Parts []string
	// DecodeRows customers inserts, DecodeRowsPerTxn to a transaction, for the decode ceiling.
	DecodeRows, DecodeRowsPerTxn int
	// Companies connected for the end-to-end, calls and catch-up figures.
	Companies int
	// Latency is added by the sandbox to every API call.
	Latency time.Duration
	// ClientRPM is the daemon's per-business limit (sink/sage RequestsPerMinute; 0 = its default).
	ClientRPM int
	// SandboxRPM is the sandbox's per-business limit (0 = Sage's 200 a minute).
	SandboxRPM int
	// Step is how long each offered rate is held.
	Step time.Duration
	// LimitFractions are the offered rates with the limit on, as shares of the ceiling the
	// client limit allows across all companies.
	LimitFractions []float64
	// OffRates are the offered rates (changes a second) with both limits off.
	OffRates []float64
	// MixCompanies run the realistic edit mix for calls per change.
	MixCompanies int
	// MemoryCompanies are the company counts whose peak RSS is compared.
	MemoryCompanies []int
	// MemoryStep is how long each memory load runs.
	MemoryStep time.Duration
	// BigTxnRows is the size of the one large transaction.
	BigTxnRows int
	// HourlyChanges is an hour's GES traffic for the catch-up figure.
	HourlyChanges int
	// PGRecvLogical is the pg_recvlogical binary (default: Debian's, then PATH).
	PGRecvLogical string
	// ProfileDir, when set, receives CPU profiles (decode-cdc.pprof, daemon-*.pprof).
	ProfileDir string
	// SeparateState puts the daemons' state in a database of its own on the same server
	// (STATE_DATABASE_URL) instead of schema gessync of the GES database: its writes are then
	// no longer decoded by the GES slot's walsender.
	SeparateState bool
	// TLS serves the sandbox over TLS with HTTP/2 offered, as Sage's API is served, instead of
	// plain HTTP/1.1 (one connection per call in flight).
	TLS bool
	// OffDrainChanges, after the limit-off steps, are committed with the daemon stopped and
	// timed to lag 0 (default 30000; 24 in a smoke run).
	OffDrainChanges int
	// ValidateEvery: the sandbox checks one request in ValidateEvery of each operation against
	// the swagger (sagetest.Options.ValidateEvery; default 20, 1 checks all). The check is most
	// of the sandbox's CPU, which stands in for Sage's servers and shares the machine.
	ValidateEvery int
	// Statements loads pg_stat_statements and prints, after each drain, the statements
	// PostgreSQL ran during it per change drained (the daemon's, and the walsender's none).
	Statements bool
	// Exe and ChildArgs start a bench daemon: Exe (default os.Executable) with ChildArgs
	// (default "bench") and ChildEnv set.
	Exe       string
	ChildArgs []string
	// Out receives the report; Log receives progress lines (nil: discarded).
	Out, Log io.Writer
}

// Defaults are the full run's sizes.
func Defaults() Options {
	return Options{
		DecodeRows: 1_000_000, DecodeRowsPerTxn: 1000,
		Companies: 200, Latency: 50 * time.Millisecond, Step: 60 * time.Second,
		LimitFractions: []float64{0.5, 0.8, 0.9, 0.95, 1.0, 1.1},
		OffRates:       []float64{250, 500, 1000, 1500, 1750, 2000, 3000},
		MixCompanies:   20, MemoryCompanies: []int{10, 200}, MemoryStep: 60 * time.Second,
		BigTxnRows: 1_000_000, HourlyChanges: 6000, OffDrainChanges: 30_000, ValidateEvery: 20,
	}
}

// Smoke are sizes that run in seconds.
func Smoke() Options {
	return Options{
		DecodeRows: 2000, DecodeRowsPerTxn: 500,
		// Limits high enough not to stretch the run; the limited code path still runs.
		Companies: 3, Latency: 5 * time.Millisecond, Step: 2 * time.Second, ClientRPM: 6000, SandboxRPM: 6000,
		LimitFractions: []float64{0.5}, OffRates: []float64{40},
		MixCompanies: 2, MemoryCompanies: []int{2, 3}, MemoryStep: time.Second,
		BigTxnRows: 2000, HourlyChanges: 24, OffDrainChanges: 24, ValidateEvery: 20,
	}
}

// Report holds every figure of a run.
type Report struct {
	Machine string
	Decode  *DecodeResult
	Limited *RateResult
	Off     *RateResult
	Calls   *CallsResult
	Memory  *MemoryResult
	Catchup *CatchupResult
	// OffDrain is a backlog drained with the limit off (part off, OffDrainChanges).
	OffDrain *CatchupResult
}

type runner struct {
	opts Options
	pg   *pglocal.Server
	dir  string
	exe  string
	log  io.Writer
}

func (r *runner) logf(format string, args ...any) {
	fmt.Fprintf(r.log, time.Now().Format("15:04:05 ")+format+"\n", args...)
}

func (r *runner) want(part string) bool {
	if len(r.opts.Parts) == 0 {
		return true
	}
	for _, p := range r.opts.Parts {
		if p == part {
			return true
		}
	}
	return false
}

// Run runs the benchmark parts opts names and writes the report to opts.Out as it goes.
func Run(ctx context.Context, opts Options) (_ *Report, err error) {
	def := Defaults()
	fill := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	fill(&opts.DecodeRows, def.DecodeRows)
	fill(&opts.DecodeRowsPerTxn, def.DecodeRowsPerTxn)
	fill(&opts.Companies, def.Companies)
	fill(&opts.MixCompanies, def.MixCompanies)
	fill(&opts.BigTxnRows, def.BigTxnRows)
	fill(&opts.HourlyChanges, def.HourlyChanges)
	fill(&opts.OffDrainChanges, def.OffDrainChanges)
	fill(&opts.ValidateEvery, def.ValidateEvery)
	if opts.Latency < 0 {
		opts.Latency = 0
	} else if opts.Latency == 0 {
		opts.Latency = def.Latency
	}
	if opts.Step <= 0 {
		opts.Step = def.Step
	}
	if opts.MemoryStep <= 0 {
		opts.MemoryStep = def.MemoryStep
	}
	if len(opts.LimitFractions) == 0 {
		opts.LimitFractions = def.LimitFractions
	}
	if len(opts.OffRates) == 0 {
		opts.OffRates = def.OffRates
	}
	if len(opts.MemoryCompanies) == 0 {
		opts.MemoryCompanies = def.MemoryCompanies
	}
	if opts.Out == nil {
		opts.Out = io.Discard
	}
	if opts.Log == nil {
		opts.Log = io.Discard
	}
	if opts.PGRecvLogical == "" {
		opts.PGRecvLogical = findRecvLogical()
	}
	if opts.Exe == "" {
		exe, err := os.Executable()
		if err != nil {
			return nil, err
		}
		opts.Exe = exe
	}
	if opts.ChildArgs == nil {
		opts.ChildArgs = []string{"bench"}
	}
	r := &runner{opts: opts, exe: opts.Exe, log: opts.Log}
	dir, err := os.MkdirTemp("", "gessync-bench-")
	if err != nil {
		return nil, err
	}
	r.dir = dir
	if opts.ProfileDir != "" {
		if err := os.MkdirAll(opts.ProfileDir, 0o755); err != nil {
			return nil, err
		}
	}
	defer func() {
		// Kept after a failure: the daemons' logs in it say why.
		if err == nil && ctx.Err() == nil {
			os.RemoveAll(dir)
		}
	}()
	rep := &Report{Machine: Machine(ctx)}
	out := opts.Out
	fmt.Fprintf(out, "gessync bench — %s\n%s\n\n", time.Now().UTC().Format(time.RFC3339), rep.Machine)

	r.logf("starting PostgreSQL")
	settings := map[string]string{"max_wal_size": "8GB", "checkpoint_timeout": "30min"}
	if opts.Statements {
		settings["shared_preload_libraries"] = "pg_stat_statements"
		settings["pg_stat_statements.track"] = "all"
	}
	r.pg, err = pglocal.Start(ctx, pglocal.Options{Settings: settings})
	if err != nil {
		return rep, err
	}
	defer r.pg.Remove()
	fmt.Fprintf(out, "PostgreSQL: %s (fsync off, wal_level logical, loopback)\n", pgVersion(ctx, r.pg.URL("postgres")))
	fmt.Fprintf(out, "sandbox: checks 1 request in %d of each operation against the swagger, all against its own rules\n\n", opts.ValidateEvery)

	if r.want("decode") {
		d, err := r.decode(ctx, opts.DecodeRows, opts.DecodeRowsPerTxn)
		if err != nil {
			return rep, fmt.Errorf("decode: %w", err)
		}
		rep.Decode = &d
		fmt.Fprintf(out, "%s\n\n", d)
	}
	if err := r.endToEnd(ctx, rep); err != nil {
		return rep, err
	}
	return rep, nil
}

func findRecvLogical() string {
	for _, p := range []string{"/usr/lib/postgresql/15/bin/pg_recvlogical", "/usr/bin/pg_recvlogical"} {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	if p, err := exec.LookPath("pg_recvlogical"); err == nil {
		return p
	}
	return "pg_recvlogical"
}

// Machine describes this machine as BENCHMARKS.md quotes it: nproc, memory, CPU, Go.
func Machine(ctx context.Context) string {
	cpu := ""
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "model name") {
				cpu = strings.TrimSpace(strings.SplitN(l, ":", 2)[1])
				break
			}
		}
	}
	mem := ""
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		f := strings.Fields(strings.SplitN(string(b), "\n", 2)[0])
		if len(f) >= 2 {
			kb, _ := strconv.ParseFloat(f[1], 64)
			mem = fmt.Sprintf("%.1f GiB", kb/1024/1024)
		}
	}
	return fmt.Sprintf("machine: %d CPUs (%s), %s RAM, %s %s/%s", runtime.NumCPU(), cpu, mem, runtime.Version(), runtime.GOOS, runtime.GOARCH)
}

func pgVersion(ctx context.Context, url string) string {
	out, err := exec.CommandContext(ctx, "psql", url, "-Atc", "SHOW server_version").Output()
	if err != nil {
		return "unknown"
	}
	return strings.TrimSpace(string(out))
}

// Main is `gessync bench`: flags for sizes, --smoke for a tiny run; the report goes to stdout
// and progress to stderr.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if IsChild() {
		return ChildMain()
	}
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	smoke := fs.Bool("smoke", false, "tiny sizes: runs in seconds (CI)")
	parts := fs.String("parts", "", "comma-separated parts to run: decode,e2e (limit on),off (limit off),calls,memory,catchup (default all)")
	o := Options{}
	fs.IntVar(&o.DecodeRows, "decode-rows", 0, "customers inserts for the decode ceiling (default 1000000)")
	fs.IntVar(&o.DecodeRowsPerTxn, "decode-rows-per-txn", 0, "rows per transaction for the decode ceiling (default 1000)")
	fs.IntVar(&o.Companies, "companies", 0, "companies for end to end, calls and catch-up (default 200)")
	fs.DurationVar(&o.Latency, "latency", 0, "latency the sandbox adds to each call (default 50ms; negative: none)")
	fs.IntVar(&o.ClientRPM, "client-rpm", 0, "the daemon's per-business requests a minute (default sink/sage's, 180)")
	fs.IntVar(&o.SandboxRPM, "sandbox-rpm", 0, "the sandbox's per-business requests a minute (default 200, Sage's)")
	fs.DurationVar(&o.Step, "step", 0, "how long each offered rate is held (default 60s)")
	fractions := fs.String("limit-fractions", "", "offered rates with the limit on, as shares of the ceiling (default 0.5,0.8,0.9,0.95,1,1.1)")
	offRates := fs.String("off-rates", "", "offered changes a second with the limit off (default 250,500,1000,1500,1750,2000,3000)")
	fs.IntVar(&o.MixCompanies, "mix-companies", 0, "companies running the realistic edit mix (default 20)")
	memCompanies := fs.String("memory-companies", "", "company counts compared for peak RSS (default 10,200)")
	fs.DurationVar(&o.MemoryStep, "memory-step", 0, "load duration of each memory run (default 60s)")
	fs.IntVar(&o.BigTxnRows, "big-txn-rows", 0, "rows of the one large transaction (default 1000000)")
	fs.IntVar(&o.HourlyChanges, "hourly-changes", 0, "an hour's GES changes for the catch-up figure (default 6000)")
	fs.StringVar(&o.PGRecvLogical, "pg-recvlogical", "", "pg_recvlogical binary (default Debian's)")
	fs.StringVar(&o.ProfileDir, "profile-dir", "", "write CPU profiles here")
	fs.IntVar(&o.OffDrainChanges, "off-drain-changes", 0, "changes drained with the limit off after the off steps (default 30000)")
	fs.IntVar(&o.ValidateEvery, "validate-every", 0, "the sandbox checks one request in N of each operation against the swagger (default 20; 1: all)")
	fs.BoolVar(&o.Statements, "statements", false, "load pg_stat_statements and print the statements each drain ran, per change")
	fs.BoolVar(&o.TLS, "tls", false, "serve the sandbox over TLS with HTTP/2, as Sage's API is served (default: plain HTTP/1.1)")
	fs.BoolVar(&o.SeparateState, "separate-state", false, "the daemons' state in a database of its own on the same server (default: schema gessync of the GES database)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *smoke {
		s := Smoke()
		merge(&o, s)
	}
	var err error
	if o.LimitFractions, err = floats(*fractions); err != nil {
		return err
	}
	if o.OffRates, err = floats(*offRates); err != nil {
		return err
	}
	mc, err := floats(*memCompanies)
	if err != nil {
		return err
	}
	for _, v := range mc {
		o.MemoryCompanies = append(o.MemoryCompanies, int(v))
	}
	if *smoke {
		s := Smoke()
		if o.LimitFractions == nil {
			o.LimitFractions = s.LimitFractions
		}
		if o.OffRates == nil {
			o.OffRates = s.OffRates
		}
		if o.MemoryCompanies == nil {
			o.MemoryCompanies = s.MemoryCompanies
		}
	}
	if *parts != "" {
		o.Parts = strings.Split(*parts, ",")
	}
	o.Out, o.Log = stdout, stderr
	_, err = Run(ctx, o)
	return err
}

// merge fills o's zero sizes from s.
func merge(o *Options, s Options) {
	set := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	set(&o.DecodeRows, s.DecodeRows)
	set(&o.DecodeRowsPerTxn, s.DecodeRowsPerTxn)
	set(&o.Companies, s.Companies)
	set(&o.MixCompanies, s.MixCompanies)
	set(&o.BigTxnRows, s.BigTxnRows)
	set(&o.HourlyChanges, s.HourlyChanges)
	set(&o.OffDrainChanges, s.OffDrainChanges)
	set(&o.ValidateEvery, s.ValidateEvery)
	if o.Latency == 0 {
		o.Latency = s.Latency
	}
	if o.Step == 0 {
		o.Step = s.Step
	}
	if o.MemoryStep == 0 {
		o.MemoryStep = s.MemoryStep
	}
	if o.ClientRPM == 0 {
		o.ClientRPM = s.ClientRPM
	}
	if o.SandboxRPM == 0 {
		o.SandboxRPM = s.SandboxRPM
	}
}

func floats(s string) ([]float64, error) {
	if s == "" {
		return nil, nil
	}
	var out []float64
	for _, f := range strings.Split(s, ",") {
		v, err := strconv.ParseFloat(strings.TrimSpace(f), 64)
		if err != nil {
			return nil, fmt.Errorf("%q: %w", f, err)
		}
		out = append(out, v)
	}
	return out, nil
}
