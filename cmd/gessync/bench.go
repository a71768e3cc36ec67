package main

import (
	"context"
	"io"

	"github.com/gessync/gessync/bench"
)

// runBench is `gessync bench`: the benchmark suite of BENCHMARKS.md (`--smoke` for a tiny run).
// The same binary, started by the suite with bench.ChildEnv set, is its bench daemon.
func runBench(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return bench.Main(ctx, args, stdout, stderr)
}
