package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/gessync/gessync/daemon"
	"github.com/gessync/gessync/web"
)

// webConfig is the operations configuration from the environment: the HTTP side's, and the
// previous token keys of a key rotation.
type webConfig struct {
	AdminToken     string
	OpenPaths      []string
	GESURLTemplate string
	ReadyMaxLag    time.Duration
	// PreviousTokenKeys (GESSYNC_TOKEN_KEY_PREVIOUS) open tokens sealed before a rotation.
	PreviousTokenKeys [][]byte
}

// minAdminToken is the shortest admin token accepted: it guards every company's books.
const minAdminToken = 16

// parseWebConfig reads GESSYNC_ADMIN_TOKEN, GESSYNC_OPEN_PATHS, GESSYNC_GES_URL_TEMPLATE and
// GESSYNC_READY_MAX_LAG. The admin token is required when httpAddr is not a loopback address.
func parseWebConfig(getenv func(string) string, httpAddr string) (webConfig, error) {
	c := webConfig{AdminToken: getenv("GESSYNC_ADMIN_TOKEN"), GESURLTemplate: getenv("GESSYNC_GES_URL_TEMPLATE")}
	if c.AdminToken == "" && !loopback(httpAddr) {
		return c, &ConfigError{"GESSYNC_ADMIN_TOKEN", fmt.Sprintf("not set while GESSYNC_HTTP_ADDR (%s) is not a loopback address: set it to a long random secret (openssl rand -hex 32), or listen on 127.0.0.1", httpAddr)}
	}
	if c.AdminToken != "" && len(c.AdminToken) < minAdminToken {
		return c, &ConfigError{"GESSYNC_ADMIN_TOKEN", fmt.Sprintf("too short: use at least %d random characters (openssl rand -hex 32)", minAdminToken)}
	}
	switch v := strings.TrimSpace(getenv("GESSYNC_OPEN_PATHS")); v {
	case "":
		c.OpenPaths = web.DefaultOpenPaths
	case "none":
		c.OpenPaths = []string{}
	default:
		for _, p := range strings.Split(v, ",") {
			p = strings.TrimSpace(p)
			if !strings.HasPrefix(p, "/") {
				return c, &ConfigError{"GESSYNC_OPEN_PATHS", fmt.Sprintf("%q is not a path: give a comma-separated list such as /healthz,/readyz,/metrics, or none", p)}
			}
			c.OpenPaths = append(c.OpenPaths, p)
		}
	}
	if t := c.GESURLTemplate; t != "" {
		u, err := url.Parse(strings.NewReplacer("{table}", "t", "{id}", "1", "{company_id}", "1").Replace(t))
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || !strings.Contains(t, "{id}") {
			return c, &ConfigError{"GESSYNC_GES_URL_TEMPLATE", "must be an http(s) URL containing {id} (and usually {table}), e.g. https://app.example/{table}/{id}"}
		}
	}
	if v := getenv("GESSYNC_TOKEN_KEY_PREVIOUS"); v != "" {
		if getenv("GESSYNC_TOKEN_KEY") == "" {
			return c, &ConfigError{"GESSYNC_TOKEN_KEY", "not set while GESSYNC_TOKEN_KEY_PREVIOUS is: a rotation needs the new key"}
		}
		for _, k := range strings.Split(v, ",") {
			key, err := base64.StdEncoding.DecodeString(strings.TrimSpace(k))
			if err != nil || len(key) != 32 {
				return c, &ConfigError{"GESSYNC_TOKEN_KEY_PREVIOUS", "must be comma-separated keys of 32 bytes in base64, as GESSYNC_TOKEN_KEY was"}
			}
			c.PreviousTokenKeys = append(c.PreviousTokenKeys, key)
		}
	}
	c.ReadyMaxLag = daemon.DefaultReadyMaxLag
	if v := getenv("GESSYNC_READY_MAX_LAG"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			return c, &ConfigError{"GESSYNC_READY_MAX_LAG", "must be a positive duration such as 5m"}
		}
		c.ReadyMaxLag = d
	}
	return c, nil
}

// loopback reports whether addr (host:port) listens only on a loopback address.
func loopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// server builds the web side for d.
func (c webConfig) server(d *daemon.Daemon, publicURL string, log *slog.Logger) *web.Server {
	return &web.Server{
		Daemon: d, OAuth: d.Client, States: d.Store, Metrics: d.Metrics.Handler(), Logger: log.With("component", "web"),
		AdminToken: c.AdminToken, OpenPaths: c.OpenPaths, GESURLTemplate: c.GESURLTemplate, ReadyMaxLag: c.ReadyMaxLag,
		PublicURL: publicURL, SecureCookies: strings.HasPrefix(publicURL, "https://"),
	}
}

// cliCommands are the subcommands that talk to a running daemon over its HTTP API.
var cliCommands = map[string]bool{"status": true, "errors": true, "retry": true, "settings": true, "disconnect": true, "connect-link": true}

// client talks to the daemon's API.
type client struct {
	base, token string
	hc          *http.Client
}

func newClient(fs *flag.FlagSet, getenv func(string) string) (*client, *string) {
	def := getenv("GESSYNC_URL")
	if def == "" {
		addr := getenv("GESSYNC_HTTP_ADDR")
		if addr == "" {
			addr = "127.0.0.1:8080"
		}
		def = "http://" + addr
	}
	u := fs.String("url", def, "the daemon's address (GESSYNC_URL; default http://<GESSYNC_HTTP_ADDR>)")
	return &client{token: getenv("GESSYNC_ADMIN_TOKEN"), hc: &http.Client{Timeout: 60 * time.Second}}, u
}

// call sends method path with body (JSON) and decodes a 2xx answer into out.
func (c *client) call(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimRight(c.base, "/")+path, rd)
	if err != nil {
		return &ConfigError{"GESSYNC_URL", fmt.Sprintf("%q is not a URL: %v", c.base, err)}
	}
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("cannot reach the daemon at %s (GESSYNC_URL): %w", c.base, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 32<<20))
	if err != nil {
		return fmt.Errorf("reading the daemon's answer: %w", err)
	}
	if resp.StatusCode == http.StatusUnauthorized {
		if c.token == "" {
			return &ConfigError{"GESSYNC_ADMIN_TOKEN", "not set, and the daemon asks for it"}
		}
		return &ConfigError{"GESSYNC_ADMIN_TOKEN", "refused by the daemon: set it to the daemon's admin token"}
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		var e struct {
			Error string `json:"error"`
		}
		if json.Unmarshal(data, &e) == nil && e.Error != "" {
			return errors.New(e.Error)
		}
		return fmt.Errorf("%s %s: %s", method, path, resp.Status)
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("decoding the daemon's answer to %s %s: %w", method, path, err)
		}
	}
	return nil
}

// runCLI runs one of cliCommands.
func runCLI(ctx context.Context, cmd string, args []string, stdout, stderr io.Writer, getenv func(string) string) error {
	fs := flag.NewFlagSet(cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	c, base := newClient(fs, getenv)
	asJSON := fs.Bool("json", false, "print JSON for scripts instead of a table")
	company := fs.Int64("company", 0, "GES company id")
	var all, force *bool
	var table *string
	var id *int64
	var sets multiFlag
	switch cmd {
	case "errors":
		all = fs.Bool("all", false, "every entry, not only the open errors")
	case "retry":
		table = fs.String("table", "", "one record: customers, invoices or payments (with --id)")
		id = fs.Int64("id", 0, "one record: its GES id (with --table)")
		force = fs.Bool("force", false, "resync: send the whole record even if gessync thinks Sage has it")
	case "settings":
		fs.Var(&sets, "set", "change a setting, name=value (repeatable): sync_customers, sync_invoices, sync_payments, business_id, bank_account_id, sales_ledger_account_id, sales_ledger_nominal_code, tier")
		all = fs.Bool("choices", false, "also list the businesses, bank accounts and ledger accounts to choose from")
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	c.base = *base
	needCompany := func() error {
		if *company <= 0 {
			return fmt.Errorf("gessync %s needs --company N (a GES company id)", cmd)
		}
		return nil
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	defer tw.Flush()
	printJSON := func(v any) error {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	}
	switch cmd {
	case "status":
		var st daemon.Status
		if err := c.call(ctx, http.MethodGet, "/api/status", nil, &st); err != nil {
			return err
		}
		if *asJSON {
			return printJSON(st)
		}
		fmt.Fprintf(tw, "slot\t%s\nreplication connected\t%v\ncheckpoint\t%s (stored %s)\nserver WAL end\t%s\nlag\t%d bytes, %.1f s\npending transactions\t%d\n\n",
			st.Slot, st.ReplicationConnected, st.CheckpointLSN, st.StoredCheckpointLSN, st.ServerWALEndLSN, st.LagBytes, st.LagSeconds, st.PendingTransactions)
		fmt.Fprintln(tw, "COMPANY\tSTATE\tBUSINESS\tSYNCED\tFAILED\tSKIPPED\tPENDING\tOPEN ERRORS\tLAST SYNC")
		for _, co := range st.Companies {
			fmt.Fprintf(tw, "%d\t%s\t%s\t%d\t%d\t%d\t%d\t%d\t%s\n", co.CompanyID, co.State, co.BusinessName, co.Synced, co.Failed, co.Skipped, co.Pending, co.OpenErrors, when(co.LastSyncAt))
		}
		return nil
	case "errors":
		q := url.Values{}
		if *company > 0 {
			q.Set("company_id", strconv.FormatInt(*company, 10))
		}
		if *all {
			q.Set("all", "1")
		}
		var es []web.Entry
		if err := c.call(ctx, http.MethodGet, "/api/errors?"+q.Encode(), nil, &es); err != nil {
			return err
		}
		if *asJSON {
			return printJSON(es)
		}
		if len(es) == 0 {
			fmt.Fprintln(tw, "Nothing needs attention.")
			return nil
		}
		fmt.Fprintln(tw, "ID\tCOMPANY\tRECORD\tWHEN\tWHAT HAPPENED\tSAGE SAID\tWHAT TO DO")
		for _, e := range es {
			rec := ""
			if e.GESID != 0 {
				rec = fmt.Sprintf("%s/%d", e.Table, e.GESID)
			}
			fmt.Fprintf(tw, "%d\t%d\t%s\t%s\t%s\t%s\t%s\n", e.ID, e.CompanyID, rec, e.CreatedAt.Format("2006-01-02 15:04"), oneLine(e.Message), oneLine(e.SageMessage), oneLine(e.Action))
		}
		return nil
	case "retry":
		var out struct {
			Queued int    `json:"queued"`
			Error  string `json:"error"`
		}
		if *table != "" || *id != 0 {
			if err := needCompany(); err != nil {
				return err
			}
			if *table == "" || *id <= 0 {
				return errors.New("gessync retry of one record needs both --table and --id")
			}
			if err := c.call(ctx, http.MethodPost, fmt.Sprintf("/api/companies/%d/resync", *company), web.ResyncRequest{Table: *table, ID: *id, Force: *force}, &out); err != nil {
				return err
			}
		} else {
			p := "/api/retry"
			if *company > 0 {
				p += "?company_id=" + strconv.FormatInt(*company, 10)
			}
			if err := c.call(ctx, http.MethodPost, p, nil, &out); err != nil {
				return err
			}
		}
		if *asJSON {
			return printJSON(out)
		}
		fmt.Fprintf(tw, "Queued %d record(s) to send again; watch `gessync errors`.\n", out.Queued)
		if out.Error != "" {
			return errors.New(out.Error)
		}
		return nil
	case "settings":
		if err := needCompany(); err != nil {
			return err
		}
		path := fmt.Sprintf("/api/companies/%d/settings", *company)
		var cs daemon.CompanySettings
		if len(sets) > 0 {
			u, err := settingsUpdate(sets)
			if err != nil {
				return err
			}
			if err := c.call(ctx, http.MethodPatch, path, u, &cs); err != nil {
				return err
			}
		} else if err := c.call(ctx, http.MethodGet, path, nil, &cs); err != nil {
			return err
		}
		choices := map[string][]daemon.Choice{}
		if *all {
			for _, k := range []string{"businesses", "bank_accounts", "ledger_accounts"} {
				var l []daemon.Choice
				if err := c.call(ctx, http.MethodGet, fmt.Sprintf("/api/companies/%d/%s", *company, k), nil, &l); err != nil {
					return err
				}
				choices[k] = l
			}
		}
		if *asJSON {
			if *all {
				return printJSON(map[string]any{"settings": cs, "choices": choices})
			}
			return printJSON(cs)
		}
		fmt.Fprintf(tw, "company\t%d\nstate\t%s\nbusiness\t%s (%s)\nsync_customers\t%v\nsync_invoices\t%v\nsync_payments\t%v\nbank_account\t%s (%s)\nsales_ledger_account\t%s (%s)\ntier\t%s\n",
			cs.CompanyID, cs.State, cs.BusinessName, cs.BusinessID, cs.SyncCustomers, cs.SyncInvoices, cs.SyncPayments,
			cs.BankAccountName, cs.BankAccountID, cs.SalesLedgerAccountName, cs.SalesLedgerAccountID, cs.Tier)
		for _, k := range []string{"businesses", "bank_accounts", "ledger_accounts"} {
			if l, ok := choices[k]; ok {
				fmt.Fprintf(tw, "\n%s:\n", k)
				for _, ch := range l {
					fmt.Fprintf(tw, "  %s\t%s\t%s\n", ch.ID, ch.Name, ch.Detail)
				}
			}
		}
		return nil
	case "disconnect":
		if err := needCompany(); err != nil {
			return err
		}
		if err := c.call(ctx, http.MethodPost, fmt.Sprintf("/api/companies/%d/disconnect", *company), nil, nil); err != nil {
			return err
		}
		if *asJSON {
			return printJSON(map[string]any{"company_id": *company, "connected": false})
		}
		fmt.Fprintf(tw, "Company %d is disconnected from Sage; its changes are skipped until it connects again.\n", *company)
		return nil
	case "connect-link":
		if err := needCompany(); err != nil {
			return err
		}
		var l web.ConnectLink
		if err := c.call(ctx, http.MethodPost, fmt.Sprintf("/api/companies/%d/connect_link", *company), nil, &l); err != nil {
			return err
		}
		if *asJSON {
			return printJSON(l)
		}
		fmt.Fprintf(tw, "%s\n(valid until %s)\n", l.URL, l.ExpiresAt.Format(time.RFC3339))
		return nil
	}
	return fmt.Errorf("unknown command %q", cmd)
}

// settingsUpdate turns --set name=value pairs into a daemon.SettingsUpdate.
func settingsUpdate(sets []string) (daemon.SettingsUpdate, error) {
	var u daemon.SettingsUpdate
	for _, kv := range sets {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return u, fmt.Errorf("--set %q: use name=value, e.g. --set sync_payments=false", kv)
		}
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		b := func() (*bool, error) {
			switch strings.ToLower(v) {
			case "true", "on", "yes", "1":
				t := true
				return &t, nil
			case "false", "off", "no", "0":
				f := false
				return &f, nil
			}
			return nil, fmt.Errorf("--set %s: %q is not on or off (true/false)", k, v)
		}
		s := func() *string { x := v; return &x }
		var err error
		switch k {
		case "sync_customers":
			u.SyncCustomers, err = b()
		case "sync_invoices":
			u.SyncInvoices, err = b()
		case "sync_payments":
			u.SyncPayments, err = b()
		case "business_id":
			u.BusinessID = s()
		case "bank_account_id":
			u.BankAccountID = s()
		case "sales_ledger_account_id":
			u.SalesLedgerAccountID = s()
		case "sales_ledger_nominal_code":
			n, perr := strconv.Atoi(v)
			if perr != nil {
				return u, fmt.Errorf("--set sales_ledger_nominal_code: %q is not a nominal code such as 4000", v)
			}
			u.SalesLedgerNominalCode = &n
		case "tier":
			u.Tier = s()
		default:
			return u, fmt.Errorf("--set %s: unknown setting; use sync_customers, sync_invoices, sync_payments, business_id, bank_account_id, sales_ledger_account_id, sales_ledger_nominal_code or tier", k)
		}
		if err != nil {
			return u, err
		}
	}
	return u, nil
}

// multiFlag collects a repeatable flag.
type multiFlag []string

// String joins the values (flag.Value).
func (m *multiFlag) String() string { return strings.Join(*m, ",") }

// Set adds one value (flag.Value).
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

func when(t *time.Time) string {
	if t == nil || t.IsZero() {
		return "-"
	}
	return t.Local().Format("2006-01-02 15:04:05")
}

func oneLine(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > 120 {
		s = s[:117] + "..."
	}
	return s
}
