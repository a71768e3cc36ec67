package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/cookiejar"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"

	"github.com/gessync/gessync/daemon"
	"github.com/gessync/gessync/ges"
	"github.com/gessync/gessync/internal/pglocal"
	"github.com/gessync/gessync/sink/sagetest"
)

// runDemo starts a throwaway PostgreSQL (wal_level=logical) holding the GES schema and sample,
// runs the daemon against the built-in Sage sandbox, connects both sample companies through the
// real OAuth flow, makes a few edits in GES and prints what reached Sage.
func runDemo(ctx context.Context, args []string, stdout, stderr io.Writer, log *slog.Logger) error {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	keep := fs.Bool("keep-running", false, "leave PostgreSQL, the daemon and the sandbox running until Ctrl-C")
	addr := fs.String("http-addr", "", "daemon HTTP address (default: a free port on 127.0.0.1)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	fmt.Fprintln(stdout, "Starting a throwaway PostgreSQL with wal_level=logical …")
	pg, err := pglocal.Start(ctx, pglocal.Options{})
	if err != nil {
		return err
	}
	defer pg.Remove()
	if err := pg.CreateDatabase(ctx, "ges", ges.Schema+ges.Sample); err != nil {
		return err
	}
	gesURL := pg.URL("ges")
	fmt.Fprintf(stdout, "GES database: %s (schema and sample loaded: 2 companies, 5 customers, 4 invoices, 2 payments)\n", gesURL)

	free, err := freeAddrs(2)
	if err != nil {
		return err
	}
	sbAddr := free[0]
	if *addr == "" {
		*addr = free[1]
	}
	cfg := runConfig{GESURL: gesURL, StateSchema: "gessync", Slot: "gessync", Publication: "gessync", HTTPAddr: *addr, PublicURL: "http://" + *addr, SandboxAddr: sbAddr, RetryMax: 5 * time.Second, StatusInterval: time.Second}
	dctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ready := make(chan string, 1)
	done := make(chan error, 1)
	go func() { done <- runDaemon(dctx, cfg, log, ready) }()
	var httpAddr string
	select {
	case httpAddr = <-ready:
	case err := <-done:
		return err
	}
	base := "http://" + httpAddr
	fmt.Fprintf(stdout, "Daemon: %s   Sage sandbox: http://%s\n", base, sbAddr)

	for _, company := range []int{1, 2} {
		if err := connectCompany(ctx, base, company); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "Connected GES company %d to a new Sage sandbox business.\n", company)
	}

	db, err := pgx.Connect(ctx, gesURL)
	if err != nil {
		return err
	}
	defer db.Close(ctx)
	edits := []struct{ what, sql string }{
		{"Mrs Bennett's email changed", `UPDATE customers SET email = 'margaret.bennett@example.co.uk', updated_at = now() WHERE id = 1`},
		{"Draft invoice HH-1003 issued", `UPDATE invoices SET status = 'issued', issue_date = '2026-11-20', due_date = '2026-12-04', updated_at = now() WHERE id = 3`},
		{"A new customer, invoiced at 20 %, 5 % and 0 % VAT, pays in part", `
			INSERT INTO customers (id, company_id, account_ref, title, first_name, last_name, email, address_line1, town, postcode)
			VALUES (6, 1, 'WHIT01', 'Ms', 'Joanne', 'Whitaker', 'jo.whitaker@example.com', '3 Kirkstall Lane', 'Leeds', 'LS5 3BE');
			INSERT INTO invoices (id, company_id, customer_id, invoice_number, status, issue_date, due_date, line_items, subtotal, vat_total, total)
			VALUES (5, 1, 6, 'HH-1004', 'issued', '2026-11-25', '2026-12-09',
			 '[{"description":"Boiler installation labour","quantity":1,"unit_price":450.00,"vat_rate":20,"kind":"labour"},
			   {"description":"Loft insulation top-up","quantity":3,"unit_price":21.99,"vat_rate":5,"kind":"materials"},
			   {"description":"Gas Safe notification fee","quantity":1,"unit_price":4.50,"vat_rate":0,"kind":"other"}]',
			 520.47, 93.30, 613.77);
			INSERT INTO payments (id, company_id, invoice_id, amount, method, paid_on, reference) VALUES (3, 1, 5, 300.00, 'bank_transfer', '2026-11-26', 'WHITAKER DEPOSIT');
			-- The ids above were given explicitly: move the sequences on, so rows added by hand
			-- afterwards (--keep-running) get fresh ones.
			SELECT setval('customers_id_seq', (SELECT max(id) FROM customers));
			SELECT setval('invoices_id_seq', (SELECT max(id) FROM invoices));
			SELECT setval('payments_id_seq', (SELECT max(id) FROM payments));`},
	}
	for _, e := range edits {
		if _, err := db.Exec(ctx, e.sql); err != nil {
			return fmt.Errorf("demo edit %q: %w", e.what, err)
		}
		fmt.Fprintln(stdout, "GES edit:", e.what)
	}
	var target pglogrepl.LSN
	if err := db.QueryRow(ctx, `SELECT pg_current_wal_lsn()`).Scan(&target); err != nil {
		return err
	}
	st, err := waitCaughtUp(ctx, base, target, 60*time.Second)
	if err != nil {
		return err
	}
	if err := printSage(ctx, stdout, "http://"+sbAddr); err != nil {
		return err
	}
	fmt.Fprintln(stdout, "\nStatus:")
	tw := tabwriter.NewWriter(stdout, 2, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "slot\t%s\ncheckpoint_lsn\t%s\nserver_wal_end_lsn\t%s\nlag_seconds\t%.1f\n", st.Slot, st.CheckpointLSN, st.ServerWALEndLSN, st.LagSeconds)
	for _, c := range st.Companies {
		fmt.Fprintf(tw, "company %d\tconnected=%v synced=%d failed=%d skipped=%d\n", c.CompanyID, c.Connected, c.Synced, c.Failed, c.Skipped)
	}
	tw.Flush()
	if *keep {
		fmt.Fprintf(stdout, "\nStill running: status at %s/status, Sage dump at http://%s/_sandbox/dump, GES at %s. Ctrl-C stops.\n", base, sbAddr, gesURL)
		fmt.Fprintf(stdout, "The gessync commands (status, errors, backfill, …) reach it with GESSYNC_URL=%s\n", base)
		<-ctx.Done()
	}
	cancel()
	if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return nil
}

// freeAddrs returns n distinct free addresses on 127.0.0.1. All n are held open until all are
// chosen: one at a time, the kernel may hand out the same port twice.
func freeAddrs(n int) ([]string, error) {
	var addrs []string
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		defer l.Close()
		addrs = append(addrs, l.Addr().String())
	}
	return addrs, nil
}

// connectCompany walks the OAuth flow as a browser would: /connect/sage → Sage authorize →
// /oauth/callback.
func connectCompany(ctx context.Context, base string, company int) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("%s/connect/sage?company_id=%d", base, company), nil)
	if err != nil {
		return err
	}
	jar, _ := cookiejar.New(nil) // the callback checks the cookie /connect/sage set
	resp, err := (&http.Client{Jar: jar}).Do(req)
	if err != nil {
		return fmt.Errorf("connecting company %d: %w", company, err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("connecting company %d: %s: %s", company, resp.Status, strings.TrimSpace(string(body)))
	}
	return nil
}

// waitCaughtUp polls /status until the checkpoint has reached target and nothing is pending.
func waitCaughtUp(ctx context.Context, base string, target pglogrepl.LSN, limit time.Duration) (daemon.Status, error) {
	deadline := time.Now().Add(limit)
	var st daemon.Status
	for {
		resp, err := http.Get(base + "/status")
		if err == nil {
			err = json.NewDecoder(resp.Body).Decode(&st)
			resp.Body.Close()
		}
		if err == nil {
			cp, _ := pglogrepl.ParseLSN(st.CheckpointLSN)
			if cp >= target && st.PendingTransactions == 0 {
				return st, nil
			}
		}
		if time.Now().After(deadline) {
			return st, fmt.Errorf("not caught up within %s (checkpoint %s, target %s)", limit, st.CheckpointLSN, target)
		}
		select {
		case <-ctx.Done():
			return st, ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func printSage(ctx context.Context, w io.Writer, sandbox string) error {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, sandbox+"/_sandbox/dump", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var dump sagetest.Dump
	if err := json.NewDecoder(resp.Body).Decode(&dump); err != nil {
		return fmt.Errorf("reading sandbox dump: %w", err)
	}
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	for _, b := range dump.Businesses {
		fmt.Fprintf(tw, "\nSage business %q\n", b.Name)
		fmt.Fprintln(tw, "CONTACT\tREFERENCE\tEMAIL")
		for _, c := range b.Contacts {
			email := ""
			if c.MainContactPerson != nil {
				email = c.MainContactPerson.Email
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\n", c.Name, c.Reference, email)
		}
		fmt.Fprintln(tw, "INVOICE\tCONTACT\tNET\tVAT\tTOTAL\tOUTSTANDING\tSTATUS")
		for _, inv := range b.SalesInvoices {
			contact, status := inv.Contact.DisplayedAs, inv.Status.ID
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", inv.InvoiceNumber, contact, inv.NetAmount.StringFixed(2), inv.TaxAmount.StringFixed(2), inv.TotalAmount.StringFixed(2), inv.OutstandingAmount.StringFixed(2), status)
		}
		fmt.Fprintln(tw, "PAYMENT\tREFERENCE\tAMOUNT\tALLOCATED TO")
		for _, p := range b.ContactPayments {
			var to []string
			for _, a := range p.AllocatedArtefacts {
				to = append(to, a.Artefact.DisplayedAs+" "+a.Amount.StringFixed(2))
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", p.Date, p.Reference, p.TotalAmount.StringFixed(2), strings.Join(to, ", "))
		}
	}
	return tw.Flush()
}
