package web

import (
	"context"
	"fmt"
	"html/template"
	"net/http"
	"strconv"
	"time"

	"github.com/gessync/gessync/daemon"
	"github.com/gessync/gessync/state"
)

const style = `<meta name="viewport" content="width=device-width, initial-scale=1"><style>
body{font:15px/1.45 system-ui,sans-serif;margin:0;color:#1d2329;background:#f6f7f9}
main{max-width:1100px;margin:0 auto;padding:1rem 1.5rem}
header{display:flex;justify-content:space-between;align-items:center}
h1{font-size:1.5rem}h2{font-size:1.15rem;margin-top:1.8rem}
table{border-collapse:collapse;width:100%;background:#fff}
th,td{text-align:left;padding:.4rem .55rem;border-bottom:1px solid #dde1e6;vertical-align:top}
th{background:#eef0f3;font-weight:600}
.card{background:#fff;border:1px solid #dde1e6;border-radius:6px;padding:.8rem 1rem;margin:.8rem 0}
.err{color:#a8071a}.ok{color:#135200}.muted{color:#67707a}.warn{color:#8a5300}
.state-connected{color:#135200;font-weight:600}.state-lost{color:#a8071a;font-weight:600}
form.inline{display:inline}button{cursor:pointer}
label{margin-right:1rem}select{max-width:22rem}
.sage{font-family:ui-monospace,monospace;font-size:.9em;background:#f2f2f2;padding:.1rem .3rem}
</style>`

var funcs = template.FuncMap{
	"when": func(t any) string {
		switch v := t.(type) {
		case time.Time:
			if v.IsZero() {
				return ""
			}
			return v.UTC().Format("2006-01-02 15:04:05 UTC")
		case *time.Time:
			if v == nil || v.IsZero() {
				return ""
			}
			return v.UTC().Format("2006-01-02 15:04:05 UTC")
		}
		return ""
	},
}

var overviewPage = template.Must(template.New("overview").Funcs(funcs).Parse(`<!doctype html><html lang="en"><head><meta charset="utf-8"><title>gessync</title>` + style + `</head>
<body><main><header><h1>gessync: GES → Sage</h1>{{if .SignOut}}<form method="post" action="/signout" class="inline"><button>Sign out</button></form>{{end}}</header>
{{if .Err}}<p class="err">{{.Err}}</p>{{end}}
{{with .Status}}<p class="card">Replication {{if .ReplicationConnected}}<span class="ok">connected</span>{{else}}<span class="err">not connected</span>{{end}};
lag {{.LagBytes}} bytes, {{printf "%.1f" .LagSeconds}} s; {{.PendingTransactions}} transactions pending; checkpoint {{.CheckpointLSN}}.</p>
<table id="companies"><thead><tr><th>Company</th><th>State</th><th>Sage business</th><th>Synced</th><th>Failed</th><th>Pending</th><th>Needs attention</th><th>Last sync</th></tr></thead><tbody>
{{range .Companies}}<tr data-company="{{.CompanyID}}"><td><a href="/companies/{{.CompanyID}}">Company {{.CompanyID}}</a></td><td class="state-{{.State}}">{{.State}}</td><td>{{.BusinessName}}</td>
<td>{{.Synced}}</td><td>{{.Failed}}</td><td>{{.Pending}}</td><td>{{if .OpenErrors}}<a class="err" href="/companies/{{.CompanyID}}#open">{{.OpenErrors}}</a>{{else}}0{{end}}</td><td>{{when .LastSyncAt}}</td></tr>
{{else}}<tr><td colspan="8" class="muted">No company is connected yet.</td></tr>{{end}}
</tbody></table>{{end}}
<form method="get" action="/companies" class="card"><label for="company">GES company id</label><input id="company" name="company_id" type="number" min="1" required> <button type="submit" id="open-company">Open</button></form>
</main></body></html>
`))

var companyPage = template.Must(template.New("company").Funcs(funcs).Parse(`<!doctype html><html lang="en"><head><meta charset="utf-8"><title>gessync: company {{.ID}}</title>` + style + `</head>
<body><main><header><h1>Company {{.ID}}{{with .Settings.BusinessName}} → {{.}}{{end}}</h1><a href="/">All companies</a></header>
{{if .Done}}<p class="ok" id="done" role="status">{{.Done}}</p>{{end}}
{{if .Err}}<p class="err" id="problem" role="alert">{{.Err}}</p>{{end}}
<section class="card" id="connection"><h2>Connection</h2>
<p>State: <b class="state-{{.Settings.State}}" id="state">{{.Settings.State}}</b>{{with .Company}}{{with .StateDetail}} ({{.}}){{end}}{{end}}{{with .Settings.BusinessName}}; Sage business <b>{{.}}</b>{{end}}.
{{with .Company}}{{if .RefreshTokenExpiresAt}}Consent runs until {{when .RefreshTokenExpiresAt}} unless used.{{end}}{{end}}</p>
<p><a href="/connect/sage?company_id={{.ID}}" id="connect">{{if .Settings.Connected}}Reconnect to Sage{{else}}Connect to Sage{{end}}</a>
{{if ne .Settings.State "not connected"}}<form method="post" action="/companies/{{.ID}}/disconnect" class="inline"><button type="submit" id="disconnect">Disconnect</button></form>{{end}}</p>
<p class="muted">A link the engineer can use to connect this company themselves, valid until {{when .LinkExpires}}:<br><input readonly size="90" value="{{.Link}}" id="connect-link"></p>
</section>
{{if .Settings.Connected}}<form method="post" action="/companies/{{.ID}}/settings" class="card" id="settings"><h2>Settings</h2>
<p><label><input type="checkbox" name="sync_customers" id="sync_customers" {{if .Settings.SyncCustomers}}checked{{end}}> Sync customers</label>
<label><input type="checkbox" name="sync_invoices" id="sync_invoices" {{if .Settings.SyncInvoices}}checked{{end}}> Sync invoices</label>
<label><input type="checkbox" name="sync_payments" id="sync_payments" {{if .Settings.SyncPayments}}checked{{end}}> Sync payments</label></p>
<p><label for="business_id">Sage business</label> <select name="business_id" id="business_id">{{range .Businesses}}<option value="{{.ID}}" {{if eq .ID $.Settings.BusinessID}}selected{{end}}>{{.Name}}</option>{{else}}<option value="{{.Settings.BusinessID}}">{{.Settings.BusinessName}}</option>{{end}}</select></p>
<p><label for="bank_account_id">Bank account for receipts</label> <select name="bank_account_id" id="bank_account_id">{{range .BankAccounts}}<option value="{{.ID}}" {{if eq .ID $.Settings.BankAccountID}}selected{{end}}>{{.Name}}{{with .Detail}} ({{.}}){{end}}</option>{{else}}<option value="{{.Settings.BankAccountID}}">{{.Settings.BankAccountName}}</option>{{end}}</select></p>
<p><label for="sales_ledger_account_id">Sales ledger account</label> <select name="sales_ledger_account_id" id="sales_ledger_account_id">{{range .Ledgers}}<option value="{{.ID}}" {{if eq .ID $.Settings.SalesLedgerAccountID}}selected{{end}}>{{.Detail}} {{.Name}}</option>{{else}}<option value="{{.Settings.SalesLedgerAccountID}}">{{or .Settings.SalesLedgerAccountName .Settings.SalesLedgerAccountID}}</option>{{end}}</select></p>
<p><label for="tier">Sage Accounting tier</label> <select name="tier" id="tier">{{range .Tiers}}<option value="{{.}}" {{if eq . $.Settings.Tier}}selected{{end}}>{{.}}</option>{{end}}<option value="auto">detect from Sage</option></select></p>
{{range .ChoiceErrs}}<p class="warn">{{.}}</p>{{end}}
<p><button type="submit" id="save">Save settings</button></p></form>{{end}}
<section class="card" id="open"><h2>Needs attention</h2>
{{if .Open}}<form method="post" action="/companies/{{.ID}}/retry" class="inline"><button type="submit" id="retry-all">Retry all</button></form>
<table id="open-errors"><thead><tr><th>Record</th><th>What happened</th><th>Sage's words</th><th>What to do</th><th></th></tr></thead><tbody>
{{range .Open}}<tr data-entry="{{.ID}}" data-record="{{.Table}}/{{.GESID}}"><td>{{if .GESURL}}<a href="{{.GESURL}}" rel="noopener" target="_blank">{{.Table}} {{.GESID}}</a>{{else}}{{.Table}} {{.GESID}}{{end}}<br><span class="muted">{{when .CreatedAt}}</span></td>
<td>{{.Message}}</td><td>{{with .SageMessage}}<span class="sage">{{.}}</span>{{end}}</td><td>{{.Action}}</td>
<td>{{if .GESID}}<form method="post" action="/companies/{{$.ID}}/resync" class="inline"><input type="hidden" name="table" value="{{.Table}}"><input type="hidden" name="ges_id" value="{{.GESID}}"><button type="submit" class="retry">Retry</button></form>
<form method="post" action="/companies/{{$.ID}}/resync" class="inline"><input type="hidden" name="table" value="{{.Table}}"><input type="hidden" name="ges_id" value="{{.GESID}}"><input type="hidden" name="force" value="1"><button type="submit" class="resync">Resync</button></form>{{end}}</td></tr>
{{end}}</tbody></table>{{else}}<p class="ok" id="no-open">Nothing needs attention.</p>{{end}}
</section>
<section class="card" id="log"><h2>Sync log</h2><table id="entries"><thead><tr><th>When</th><th>Level</th><th>Record</th><th>Message</th><th>Resolved</th></tr></thead><tbody>
{{range .Log}}<tr data-entry="{{.ID}}"><td>{{when .CreatedAt}}</td><td class="{{if eq .Level "error"}}err{{else if eq .Level "warning"}}warn{{end}}">{{.Level}}</td>
<td>{{if .GESID}}{{if .GESURL}}<a href="{{.GESURL}}" rel="noopener" target="_blank">{{.Table}} {{.GESID}}</a>{{else}}{{.Table}} {{.GESID}}{{end}}{{end}}</td>
<td>{{.Message}}{{with .SageMessage}}<br><span class="sage">{{.}}</span>{{end}}{{with .Action}}<br><i>{{.}}</i>{{end}}</td><td>{{when .ResolvedAt}}</td></tr>
{{else}}<tr><td colspan="5" class="muted">Nothing logged yet.</td></tr>{{end}}</tbody></table></section>
</main></body></html>
`))

// done messages, chosen by ?done= so a redirect cannot carry text of its own.
var doneMessages = map[string]string{
	"saved":        "Settings saved: they apply from the next change on.",
	"disconnected": "Disconnected from Sage.",
	"retry":        "Queued: the record is sent again from GES's current row.",
	"resync":       "Queued: the whole record is sent again from GES's current row.",
	"retry-all":    "Queued every record that needs attention.",
}

func (s *Server) pages(mux *http.ServeMux) {
	mux.HandleFunc("GET /{$}", s.overview)
	mux.HandleFunc("GET /companies", func(w http.ResponseWriter, r *http.Request) {
		id, err := strconv.ParseInt(r.URL.Query().Get("company_id"), 10, 64)
		if err != nil || id <= 0 {
			http.Redirect(w, r, "/", http.StatusSeeOther)
			return
		}
		http.Redirect(w, r, fmt.Sprintf("/companies/%d", id), http.StatusSeeOther)
	})
	mux.HandleFunc("GET /companies/{id}", s.withCompany(func(w http.ResponseWriter, r *http.Request, id int64) {
		s.companyPage(w, r, id, http.StatusOK, doneMessages[r.URL.Query().Get("done")], "")
	}))
	mux.HandleFunc("POST /companies/{id}/settings", s.withCompany(s.saveSettings))
	mux.HandleFunc("POST /companies/{id}/disconnect", s.withCompany(func(w http.ResponseWriter, r *http.Request, id int64) {
		s.cache.forget(id)
		if err := s.Daemon.Disconnect(r.Context(), id); err != nil {
			s.pageFail(w, r, id, err)
			return
		}
		http.Redirect(w, r, fmt.Sprintf("/companies/%d?done=disconnected", id), http.StatusSeeOther)
	}))
	mux.HandleFunc("POST /companies/{id}/resync", s.withCompany(func(w http.ResponseWriter, r *http.Request, id int64) {
		gesID, err := strconv.ParseInt(r.FormValue("ges_id"), 10, 64)
		if err != nil {
			s.companyPage(w, r, id, http.StatusBadRequest, "", "ges_id must be a GES record id")
			return
		}
		force := r.FormValue("force") != ""
		if err := s.Daemon.Resync(r.Context(), id, r.FormValue("table"), gesID, force); err != nil {
			s.pageFail(w, r, id, err)
			return
		}
		done := "retry"
		if force {
			done = "resync"
		}
		http.Redirect(w, r, fmt.Sprintf("/companies/%d?done=%s", id, done), http.StatusSeeOther)
	}))
	mux.HandleFunc("POST /companies/{id}/retry", s.withCompany(func(w http.ResponseWriter, r *http.Request, id int64) {
		if _, err := s.Daemon.RetryOpen(r.Context(), id); err != nil {
			s.pageFail(w, r, id, err)
			return
		}
		http.Redirect(w, r, fmt.Sprintf("/companies/%d?done=retry-all", id), http.StatusSeeOther)
	}))
}

func (s *Server) overview(w http.ResponseWriter, r *http.Request) {
	data := map[string]any{"SignOut": s.AdminToken != ""}
	st, err := s.Daemon.Status(r.Context())
	code := http.StatusOK
	if err != nil {
		s.Logger.Error("status", "err", err)
		data["Err"] = "The status is unavailable: " + err.Error()
		code = http.StatusServiceUnavailable
	} else {
		data["Status"] = st
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	if err := overviewPage.Execute(w, data); err != nil {
		s.Logger.Error("overview page", "err", err)
	}
}

func (s *Server) pageFail(w http.ResponseWriter, r *http.Request, id int64, err error) {
	code, _ := failure(err)
	if code >= 500 {
		s.Logger.Error("page", "company_id", id, "err", err)
	}
	s.companyPage(w, r, id, code, "", err.Error())
}

// companyPage renders company id's page with code, a done message and a problem.
func (s *Server) companyPage(w http.ResponseWriter, r *http.Request, id int64, code int, done, problem string) {
	ctx, cancel := context.WithTimeout(r.Context(), 20*time.Second)
	defer cancel()
	data := map[string]any{"ID": id, "Done": done, "Err": problem, "Tiers": []string{"start", "standard", "plus"}}
	cs, err := s.Daemon.Settings(ctx, id)
	if err != nil {
		s.Logger.Error("settings", "company_id", id, "err", err)
		data["Err"] = "The settings are unavailable: " + err.Error()
		code = http.StatusServiceUnavailable
	}
	data["Settings"] = cs
	if st, err := s.Daemon.Status(ctx); err == nil {
		for _, c := range st.Companies {
			if c.CompanyID == id {
				data["Company"] = c
			}
		}
	}
	if cs.Connected {
		var problems []string
		add := func(what string, list func(context.Context, int64) ([]daemon.Choice, error), key string) {
			cs, err := list(ctx, id)
			if err != nil {
				problems = append(problems, fmt.Sprintf("Sage could not list the %s just now (%v); the current choice is kept.", what, err))
				return
			}
			data[key] = cs
		}
		add("businesses", s.cachedList("businesses", s.Daemon.Businesses), "Businesses")
		add("bank accounts", s.cachedList("bank_accounts", s.Daemon.BankAccounts), "BankAccounts")
		add("ledger accounts", s.cachedList("ledger_accounts", s.Daemon.LedgerAccounts), "Ledgers")
		data["ChoiceErrs"] = problems
	}
	link, exp := s.ConnectLink(id)
	data["Link"], data["LinkExpires"] = link, exp
	es, err := s.Daemon.Entries(ctx, state.LogQuery{CompanyID: id, Limit: 100})
	if err != nil {
		data["Err"] = "The sync log is unavailable: " + err.Error()
	}
	var open, all []Entry
	for _, e := range es {
		v := s.entryView(e)
		all = append(all, v)
		if e.Level == state.LevelError && e.ResolvedAt == nil {
			open = append(open, v)
		}
	}
	data["Open"], data["Log"] = open, all
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	if err := companyPage.Execute(w, data); err != nil {
		s.Logger.Error("company page", "company_id", id, "err", err)
	}
}

// saveSettings applies the settings form: the toggles always, the choices when they changed.
func (s *Server) saveSettings(w http.ResponseWriter, r *http.Request, id int64) {
	cur, err := s.Daemon.Settings(r.Context(), id)
	if err != nil {
		s.pageFail(w, r, id, err)
		return
	}
	on := func(k string) *bool { v := r.FormValue(k) != ""; return &v }
	u := daemon.SettingsUpdate{SyncCustomers: on("sync_customers"), SyncInvoices: on("sync_invoices"), SyncPayments: on("sync_payments")}
	changed := func(k, was string) *string {
		v := r.FormValue(k)
		if v == "" || v == was {
			return nil
		}
		return &v
	}
	u.BusinessID = changed("business_id", cur.BusinessID)
	if u.BusinessID == nil { // a new business brings its own accounts
		u.BankAccountID = changed("bank_account_id", cur.BankAccountID)
		u.SalesLedgerAccountID = changed("sales_ledger_account_id", cur.SalesLedgerAccountID)
	}
	u.Tier = changed("tier", cur.Tier)
	_, err = s.Daemon.UpdateSettings(r.Context(), id, u)
	s.cache.forget(id)
	if err != nil {
		s.pageFail(w, r, id, err)
		return
	}
	http.Redirect(w, r, fmt.Sprintf("/companies/%d?done=saved", id), http.StatusSeeOther)
}
