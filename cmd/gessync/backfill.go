package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/gessync/gessync/daemon"
)

// apiClient talks to a running daemon's HTTP API (GESSYNC_URL, GESSYNC_ADMIN_TOKEN).
type apiClient struct {
	base, token string
	hc          *http.Client
}

func newAPIClient(getenv func(string) string, fs *flag.FlagSet) *apiClient {
	c := &apiClient{base: getenv("GESSYNC_URL"), token: getenv("GESSYNC_ADMIN_TOKEN"), hc: &http.Client{Timeout: 10 * time.Minute}}
	if c.base == "" {
		c.base = "http://127.0.0.1:8080"
	}
	fs.StringVar(&c.base, "url", c.base, "the daemon's address (GESSYNC_URL)")
	return c
}

func (c *apiClient) do(ctx context.Context, method, path string, out any) error {
	return c.doBody(ctx, method, path, nil, out)
}

// doBody sends a JSON body (nil for none) and decodes the JSON answer into out.
func (c *apiClient) doBody(ctx context.Context, method, path string, body []byte, out any) error {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimRight(c.base, "/")+path, rd)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("is the daemon running at %s? %w", c.base, err)
	}
	defer resp.Body.Close()
	answer, _ := io.ReadAll(resp.Body)
	if resp.StatusCode >= 300 {
		var e struct {
			Error string `json:"error"`
		}
		if json.Unmarshal(answer, &e) == nil && e.Error != "" {
			return errors.New(e.Error)
		}
		return fmt.Errorf("%s %s: %s", method, path, resp.Status)
	}
	return json.Unmarshal(answer, out)
}

// runBackfill is `gessync backfill --company N [--since DATE]`: it starts the company's
// backfill in the running daemon and shows progress until it ends.
func runBackfill(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) error {
	fs := flag.NewFlagSet("backfill", flag.ContinueOnError)
	fs.SetOutput(stderr)
	c := newAPIClient(getenv, fs)
	company := fs.Int64("company", 0, "GES company id (required)")
	since := fs.String("since", "", "only invoices issued and payments taken on or after this date (YYYY-MM-DD)")
	watch := fs.Bool("watch", false, "only show the progress of the running backfill")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *company <= 0 {
		return &ConfigError{"--company", "give the GES company id, e.g. --company 1"}
	}
	var p daemon.BackfillProgress
	path := fmt.Sprintf("/api/companies/%d/backfill", *company)
	if !*watch {
		q := ""
		if *since != "" {
			q = "?since=" + *since
		}
		if err := c.do(ctx, http.MethodPost, path+q, &p); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "Backfill of company %d started: %d records.\n", *company, p.Total)
	}
	tty := isTerminal(stdout)
	for {
		if err := c.do(ctx, http.MethodGet, path, &p); err != nil {
			return err
		}
		if tty {
			fmt.Fprintf(stdout, "\r%s", progressLine(p))
		}
		if p.Status != "running" {
			break
		}
		select {
		case <-ctx.Done():
			fmt.Fprintln(stdout)
			return nil
		case <-time.After(500 * time.Millisecond):
		}
	}
	if tty {
		fmt.Fprintln(stdout)
	} else {
		fmt.Fprintln(stdout, progressLine(p))
	}
	if p.Status == "failed" {
		return fmt.Errorf("backfill of company %d failed: %s", *company, p.Error)
	}
	fmt.Fprintf(stdout, "Backfill of company %d done: %d records at %.1f a second. See the sync log for what was matched and what needs a person.\n", *company, p.Done, p.Rate)
	return nil
}

// progressLine draws "[#####.....]  52%  5200/10000  84.2/s  ETA 57s  invoices".
func progressLine(p daemon.BackfillProgress) string {
	const width = 30
	frac := 1.0
	if p.Total > 0 {
		frac = min(float64(p.Done)/float64(p.Total), 1)
	}
	n := int(frac * width)
	eta := "-"
	if p.ETA > 0 {
		eta = (time.Duration(p.ETA) * time.Second).String()
	}
	return fmt.Sprintf("[%s%s] %3.0f%%  %d/%d  %.1f/s  ETA %s  %s", strings.Repeat("#", n), strings.Repeat(".", width-n), frac*100, p.Done, p.Total, p.Rate, eta, p.Table)
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// runResync is `gessync resync --company N (--customer ID | --invoice ID | --payment ID)`: it
// asks the daemon to re-read the record in GES and push all of it to Sage again, behind the
// company's queued changes; the outcome shows in the sync log (`gessync errors`).
func runResync(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) error {
	fs := flag.NewFlagSet("resync", flag.ContinueOnError)
	fs.SetOutput(stderr)
	c := newAPIClient(getenv, fs)
	company := fs.Int64("company", 0, "GES company id (required)")
	customer := fs.Int64("customer", 0, "GES customer id")
	invoice := fs.Int64("invoice", 0, "GES invoice id")
	payment := fs.Int64("payment", 0, "GES payment id")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *company <= 0 {
		return &ConfigError{"--company", "give the GES company id, e.g. --company 1"}
	}
	var table string
	var id int64
	for _, o := range []struct {
		t  string
		id int64
	}{{"customers", *customer}, {"invoices", *invoice}, {"payments", *payment}} {
		if o.id > 0 {
			if table != "" {
				return &ConfigError{"--customer/--invoice/--payment", "give exactly one record"}
			}
			table, id = o.t, o.id
		}
	}
	if table == "" {
		return &ConfigError{"--customer/--invoice/--payment", "give the record to resync, e.g. --invoice 42"}
	}
	body, _ := json.Marshal(map[string]any{"table": table, "id": id, "force": true})
	var out map[string]any
	if err := c.doBody(ctx, http.MethodPost, fmt.Sprintf("/api/companies/%d/resync", *company), body, &out); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s %d queued to be pushed to Sage again; `gessync errors --company %d` shows anything that still fails.\n", table, id, *company)
	return nil
}

// runReconcile is `gessync reconcile --company N [--json]`: it prints each difference between
// the company's GES records and its Sage business and exits non-zero when there is drift.
func runReconcile(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) error {
	fs := flag.NewFlagSet("reconcile", flag.ContinueOnError)
	fs.SetOutput(stderr)
	c := newAPIClient(getenv, fs)
	company := fs.Int64("company", 0, "GES company id (required)")
	asJSON := fs.Bool("json", false, "print the differences as JSON")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *company <= 0 {
		return &ConfigError{"--company", "give the GES company id, e.g. --company 1"}
	}
	var diffs []daemon.Difference
	if err := c.do(ctx, http.MethodGet, fmt.Sprintf("/api/companies/%d/reconcile", *company), &diffs); err != nil {
		return err
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(diffs); err != nil {
			return err
		}
	} else {
		for _, d := range diffs {
			fmt.Fprintln(stdout, d.String())
		}
	}
	if len(diffs) > 0 {
		return fmt.Errorf("company %d: %d differences between GES and Sage", *company, len(diffs))
	}
	if !*asJSON {
		fmt.Fprintf(stdout, "Company %d: Sage matches GES.\n", *company)
	}
	return nil
}
