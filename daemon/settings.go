package daemon

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/gessync/gessync/cdc"
	"github.com/gessync/gessync/pipeline"
	"github.com/gessync/gessync/sink/sage"
	"github.com/gessync/gessync/state"
	"github.com/gessync/gessync/transform"
)

// CompanySettings is one company's settings as the settings page, the HTTP API and the CLI show
// them. Field names are a contract with scripts.
type CompanySettings struct {
	// CompanyID is the GES company.
	CompanyID int64 `json:"company_id"`
	// Connected is true when the company has a Sage connection with a business chosen.
	Connected bool `json:"connected"`
	// State is "connected", "connecting", "lost" or "not connected" (as in Status).
	State string `json:"state"`
	// BusinessID and BusinessName are the Sage business the company syncs to.
	BusinessID   string `json:"business_id,omitempty"`
	BusinessName string `json:"business_name,omitempty"`
	// SyncCustomers, SyncInvoices and SyncPayments switch each kind of record on or off. Invoices
	// need customers, payments need invoices.
	SyncCustomers bool `json:"sync_customers"`
	SyncInvoices  bool `json:"sync_invoices"`
	SyncPayments  bool `json:"sync_payments"`
	// BankAccountID receives customer receipts; BankAccountName is how Sage shows it.
	BankAccountID   string `json:"bank_account_id,omitempty"`
	BankAccountName string `json:"bank_account_name,omitempty"`
	// SalesLedgerAccountID is the ledger account of ordinary sales lines (nominal 4000 unless
	// chosen otherwise).
	SalesLedgerAccountID   string `json:"sales_ledger_account_id,omitempty"`
	SalesLedgerAccountName string `json:"sales_ledger_account_name,omitempty"`
	// Tier is the Sage Accounting product: start, standard or plus.
	Tier string `json:"tier"`
}

// SettingsUpdate changes some of a company's settings; nil fields stay as they are.
type SettingsUpdate struct {
	// SyncCustomers, SyncInvoices and SyncPayments switch each kind of record on or off.
	SyncCustomers *bool `json:"sync_customers,omitempty"`
	SyncInvoices  *bool `json:"sync_invoices,omitempty"`
	SyncPayments  *bool `json:"sync_payments,omitempty"`
	// BusinessID chooses another of the Sage user's businesses: the bank account, tax rates and
	// ledger accounts are looked up again in it.
	BusinessID *string `json:"business_id,omitempty"`
	// BankAccountID must be one of the business's bank accounts (see BankAccounts).
	BankAccountID *string `json:"bank_account_id,omitempty"`
	// SalesLedgerAccountID must be one of the business's ledger accounts (see LedgerAccounts);
	// SalesLedgerNominalCode chooses one by its nominal code instead (e.g. 4000).
	SalesLedgerAccountID   *string `json:"sales_ledger_account_id,omitempty"`
	SalesLedgerNominalCode *int    `json:"sales_ledger_nominal_code,omitempty"`
	// Tier is "start", "standard" or "plus"; "auto" detects it from Sage again.
	Tier *string `json:"tier,omitempty"`
}

// SettingsError is a settings change refused: Field names the setting, Problem says why in
// words for the person who asked.
type SettingsError struct{ Field, Problem string }

// Error reads "FIELD: PROBLEM".
func (e *SettingsError) Error() string { return e.Field + ": " + e.Problem }

// Choice is one option of a setting: a Sage business, bank account or ledger account.
type Choice struct {
	// ID is Sage's id, the value to set.
	ID string `json:"id"`
	// Name is how Sage shows it.
	Name string `json:"name"`
	// Detail is e.g. the bank account type or the ledger account's nominal code.
	Detail string `json:"detail,omitempty"`
}

// ErrNotConnected means the company has no Sage connection: connect it first.
var ErrNotConnected = errors.New("company not connected to Sage: connect it first")

// Settings returns company's settings.
func (d *Daemon) Settings(ctx context.Context, companyID int64) (CompanySettings, error) {
	conn, err := d.Store.Connection(ctx, companyID)
	if errors.Is(err, state.ErrNotFound) {
		s := state.DefaultSettings()
		return CompanySettings{CompanyID: companyID, State: "not connected", SyncCustomers: s.SyncCustomers, SyncInvoices: s.SyncInvoices, SyncPayments: s.SyncPayments, Tier: string(transform.TierStandard)}, nil
	}
	if err != nil {
		return CompanySettings{}, err
	}
	return settingsView(conn), nil
}

func settingsView(c state.Connection) CompanySettings {
	s := c.Settings
	tier := s.Sage.Tier
	if tier == "" {
		tier = transform.TierStandard
	}
	ledger := s.SalesLedgerName
	if ledger == "" && s.Sage.SalesLedgerAccountID != "" {
		ledger = "nominal 4000 (the default)" // chosen at connect
	}
	return CompanySettings{
		CompanyID: c.CompanyID, Connected: c.Status == "connected" && c.BusinessID != "", State: c.Status,
		BusinessID: c.BusinessID, BusinessName: c.BusinessName,
		SyncCustomers: s.SyncCustomers, SyncInvoices: s.SyncInvoices, SyncPayments: s.SyncPayments,
		BankAccountID: s.Sage.BankAccountID, BankAccountName: s.BankAccountName,
		SalesLedgerAccountID: s.Sage.SalesLedgerAccountID, SalesLedgerAccountName: ledger,
		Tier: string(tier),
	}
}

// CheckSyncToggles refuses combinations the pipeline cannot honour: invoices without customers
// (an invoice needs its contact) and payments without invoices (a receipt is allocated to its
// invoice).
func CheckSyncToggles(customers, invoices, payments bool) error {
	if invoices && !customers {
		return &SettingsError{"sync_invoices", "syncing invoices needs syncing customers: Sage posts an invoice to its customer's contact. Turn sync customers on, or invoices off."}
	}
	if payments && !invoices {
		return &SettingsError{"sync_payments", "syncing payments needs syncing invoices: Sage allocates a receipt to its invoice. Turn sync invoices on, or payments off."}
	}
	return nil
}

// UpdateSettings applies u to company's settings and stores them; the pipeline reads them from
// the next change on. Sage is asked when u names a business, bank account, ledger account or
// asks for the tier to be detected. A refused change is a *SettingsError and changes nothing.
func (d *Daemon) UpdateSettings(ctx context.Context, companyID int64, u SettingsUpdate) (CompanySettings, error) {
	conn, err := d.Store.Connection(ctx, companyID)
	if errors.Is(err, state.ErrNotFound) {
		return CompanySettings{}, ErrNotConnected
	}
	if err != nil {
		return CompanySettings{}, err
	}
	s := conn.Settings
	set := func(p *bool, v *bool) {
		if v != nil {
			*p = *v
		}
	}
	set(&s.SyncCustomers, u.SyncCustomers)
	set(&s.SyncInvoices, u.SyncInvoices)
	set(&s.SyncPayments, u.SyncPayments)
	if err := CheckSyncToggles(s.SyncCustomers, s.SyncInvoices, s.SyncPayments); err != nil {
		return settingsView(conn), err
	}
	if u.BusinessID != nil && *u.BusinessID != conn.BusinessID {
		if conn, err = d.chooseBusiness(ctx, conn, *u.BusinessID); err != nil {
			return settingsView(conn), err
		}
		// The bank account and ledger account of the old business mean nothing in the new one.
		s.Sage, s.BankAccountName, s.SalesLedgerName = conn.Settings.Sage, conn.Settings.BankAccountName, ""
	}
	if u.Tier != nil {
		switch t := strings.ToLower(strings.TrimSpace(*u.Tier)); t {
		case "start", "standard", "plus":
			s.Sage.Tier = transform.Tier(t)
		case "auto", "":
			bs, err := d.bareSession(conn).Businesses(ctx)
			if err != nil {
				return settingsView(conn), fmt.Errorf("company %d: asking Sage for the tier: %w", companyID, err)
			}
			for _, b := range bs {
				if b.ID == conn.BusinessID {
					s.Sage.Tier = tierOf(b)
				}
			}
		default:
			return settingsView(conn), &SettingsError{"tier", fmt.Sprintf("%q is not a Sage Accounting tier: use start, standard, plus or auto", *u.Tier)}
		}
	}
	if u.BankAccountID != nil {
		accounts, err := d.BankAccounts(ctx, companyID)
		if err != nil {
			return settingsView(conn), err
		}
		found := false
		for _, a := range accounts {
			if a.ID == *u.BankAccountID {
				s.Sage.BankAccountID, s.BankAccountName, found = a.ID, a.Name, true
			}
		}
		if !found {
			return settingsView(conn), &SettingsError{"bank_account_id", fmt.Sprintf("%q is not one of %s's bank accounts; choose one of: %s", *u.BankAccountID, conn.BusinessName, names(accounts))}
		}
	}
	if u.SalesLedgerAccountID != nil || u.SalesLedgerNominalCode != nil {
		ledgers, err := d.LedgerAccounts(ctx, companyID)
		if err != nil {
			return settingsView(conn), err
		}
		found := false
		for _, l := range ledgers {
			if (u.SalesLedgerAccountID != nil && l.ID == *u.SalesLedgerAccountID) ||
				(u.SalesLedgerAccountID == nil && u.SalesLedgerNominalCode != nil && l.Detail == fmt.Sprint(*u.SalesLedgerNominalCode)) {
				s.Sage.SalesLedgerAccountID, s.SalesLedgerName, found = l.ID, l.Name, true
				break
			}
		}
		if !found {
			what := ""
			if u.SalesLedgerAccountID != nil {
				what = fmt.Sprintf("ledger account %q", *u.SalesLedgerAccountID)
			} else {
				what = fmt.Sprintf("nominal code %d", *u.SalesLedgerNominalCode)
			}
			return settingsView(conn), &SettingsError{"sales_ledger_account_id", fmt.Sprintf("%s is not a ledger account of %s", what, conn.BusinessName)}
		}
	}
	conn.Settings = s
	if err := d.Store.SaveConnection(ctx, conn); err != nil {
		return settingsView(conn), err
	}
	d.forget(companyID)
	d.log.Info("company settings changed", "company_id", companyID, "sync_customers", s.SyncCustomers, "sync_invoices", s.SyncInvoices,
		"sync_payments", s.SyncPayments, "business_id", conn.BusinessID, "tier", s.Sage.Tier)
	return settingsView(conn), nil
}

func names(cs []Choice) string {
	var out []string
	for _, c := range cs {
		out = append(out, fmt.Sprintf("%s (%s)", c.Name, c.ID))
	}
	return strings.Join(out, ", ")
}

// bareSession is a Session of company's token without a business (for GET /businesses).
func (d *Daemon) bareSession(conn state.Connection) *sage.Session {
	return d.Client.Session(sage.Connection{CompanyID: conn.CompanyID, Token: conn.Token}, d.Store)
}

// businessSession is company's Session in its chosen business, or ErrNotConnected.
func (d *Daemon) businessSession(ctx context.Context, companyID int64) (*sage.Session, state.Connection, error) {
	conn, err := d.Store.Connection(ctx, companyID)
	if errors.Is(err, state.ErrNotFound) {
		return nil, conn, ErrNotConnected
	}
	if err != nil {
		return nil, conn, err
	}
	if conn.BusinessID == "" {
		return nil, conn, ErrNotConnected
	}
	return d.session(conn), conn, nil
}

// Businesses lists the Sage businesses company's connection reaches.
func (d *Daemon) Businesses(ctx context.Context, companyID int64) ([]Choice, error) {
	conn, err := d.Store.Connection(ctx, companyID)
	if errors.Is(err, state.ErrNotFound) {
		return nil, ErrNotConnected
	}
	if err != nil {
		return nil, err
	}
	bs, err := d.bareSession(conn).Businesses(ctx)
	if err != nil {
		return nil, fmt.Errorf("company %d: listing Sage businesses: %w", companyID, err)
	}
	out := make([]Choice, 0, len(bs))
	for _, b := range bs {
		out = append(out, Choice{ID: b.ID, Name: nameOf(b), Detail: string(tierOf(b))})
	}
	return out, nil
}

// BankAccounts lists the bank accounts of company's business, for the receipts account choice.
func (d *Daemon) BankAccounts(ctx context.Context, companyID int64) ([]Choice, error) {
	sess, _, err := d.businessSession(ctx, companyID)
	if err != nil {
		return nil, err
	}
	as, err := sess.BankAccounts(ctx)
	if err != nil {
		return nil, fmt.Errorf("company %d: listing bank accounts: %w", companyID, err)
	}
	out := make([]Choice, 0, len(as))
	for _, a := range as {
		c := Choice{ID: a.ID, Name: a.DisplayedAs}
		if c.Name == "" && a.BankAccountDetails != nil {
			c.Name = a.BankAccountDetails.AccountName
		}
		if a.BankAccountType != nil {
			c.Detail = a.BankAccountType.ID
		}
		out = append(out, c)
	}
	return out, nil
}

// LedgerAccounts lists the sales ledger accounts of company's business (all ledger accounts when
// Sage marks none as sales); Detail is the nominal code.
func (d *Daemon) LedgerAccounts(ctx context.Context, companyID int64) ([]Choice, error) {
	sess, _, err := d.businessSession(ctx, companyID)
	if err != nil {
		return nil, err
	}
	ls, err := sess.LedgerAccounts(ctx)
	if err != nil {
		return nil, fmt.Errorf("company %d: listing ledger accounts: %w", companyID, err)
	}
	var sales, all []Choice
	for _, l := range ls {
		name := l.DisplayedAs
		if name == "" {
			name = l.Name
		}
		c := Choice{ID: l.ID, Name: name, Detail: fmt.Sprint(l.Nominalcode)}
		all = append(all, c)
		if l.LedgerAccountType != nil && l.LedgerAccountType.ID == "SALES" {
			sales = append(sales, c)
		}
	}
	if len(sales) > 0 {
		return sales, nil
	}
	return all, nil
}

// chooseBusiness moves company to another of its Sage user's businesses: it checks the id, then
// chooses the receipts account and looks up tax rates and ledger accounts as Connect does. The
// sync toggles are kept.
func (d *Daemon) chooseBusiness(ctx context.Context, conn state.Connection, businessID string) (state.Connection, error) {
	bs, err := d.bareSession(conn).Businesses(ctx)
	if err != nil {
		return conn, fmt.Errorf("company %d: listing Sage businesses: %w", conn.CompanyID, err)
	}
	var b *sage.Business
	for i := range bs {
		if bs[i].ID == businessID {
			b = &bs[i]
		}
	}
	if b == nil {
		var cs []Choice
		for _, x := range bs {
			cs = append(cs, Choice{ID: x.ID, Name: nameOf(x)})
		}
		return conn, &SettingsError{"business_id", fmt.Sprintf("%q is not a business this Sage user reaches; choose one of: %s", businessID, names(cs))}
	}
	sess := d.Client.Session(sage.Connection{CompanyID: conn.CompanyID, BusinessID: b.ID, Token: conn.Token}, d.Store)
	s := conn.Settings
	s.Sage = transform.Settings{BusinessID: b.ID, Tier: tierOf(*b)}
	accounts, err := sess.BankAccounts(ctx)
	if err != nil {
		return conn, fmt.Errorf("company %d: listing bank accounts: %w", conn.CompanyID, err)
	}
	s.BankAccountName = ""
	for _, a := range accounts {
		if s.Sage.BankAccountID == "" && a.BankAccountType != nil && a.BankAccountType.ID == "CHECKING" {
			s.Sage.BankAccountID, s.BankAccountName = a.ID, a.DisplayedAs
		}
	}
	if s.Sage.BankAccountID == "" {
		return conn, &SettingsError{"business_id", fmt.Sprintf("%s has no current account for receipts: add one in Sage, then choose the business again", nameOf(*b))}
	}
	rates, err := sess.TaxRates(ctx)
	if err != nil {
		return conn, fmt.Errorf("company %d: listing tax rates: %w", conn.CompanyID, err)
	}
	s.Sage.TaxRates = TaxRateIDs(rates)
	ledgers, err := sess.LedgerAccounts(ctx)
	if err != nil {
		return conn, fmt.Errorf("company %d: listing ledger accounts: %w", conn.CompanyID, err)
	}
	for _, l := range ledgers {
		switch {
		case l.Nominalcode == 4000 && s.Sage.SalesLedgerAccountID == "":
			s.Sage.SalesLedgerAccountID = l.ID
		case l.CISLabour && s.Sage.CISLabourLedgerAccountID == "":
			s.Sage.CISLabourLedgerAccountID = l.ID
		case l.CISMaterials && s.Sage.CISMaterialsLedgerAccountID == "":
			s.Sage.CISMaterialsLedgerAccountID = l.ID
		}
	}
	if s.Sage.SalesLedgerAccountID == "" {
		return conn, &SettingsError{"business_id", fmt.Sprintf("%s has no sales ledger account with nominal code 4000", nameOf(*b))}
	}
	tok, err := sess.Token(ctx)
	if err != nil {
		return conn, fmt.Errorf("company %d: %w", conn.CompanyID, err)
	}
	conn.BusinessID, conn.BusinessName, conn.Token, conn.Settings, conn.Status = b.ID, nameOf(*b), tok, s, "connected"
	return conn, nil
}

// Disconnect forgets company's Sage connection and tokens. Its changes are skipped from then on;
// the id map is kept, so reconnecting to the same business updates the same records.
func (d *Daemon) Disconnect(ctx context.Context, companyID int64) error {
	if _, err := d.Store.Connection(ctx, companyID); errors.Is(err, state.ErrNotFound) {
		return ErrNotConnected
	} else if err != nil {
		return err
	}
	if err := d.Store.DeleteConnection(ctx, companyID); err != nil {
		return err
	}
	d.forget(companyID)
	d.log.Info("company disconnected from Sage", "company_id", companyID)
	return d.Store.Log(ctx, state.Entry{CompanyID: companyID, Level: state.LevelInfo, Code: "disconnect",
		Message: "Disconnected from Sage: changes are not sent until the company is connected again."})
}

// Entries returns sync-log entries (state.Store.Entries).
func (d *Daemon) Entries(ctx context.Context, q state.LogQuery) ([]state.Entry, error) {
	return d.Store.Entries(ctx, q)
}

// ErrRowGone means the GES record asked for no longer exists.
var ErrRowGone = errors.New("the record no longer exists in GES")

// Resync reads the current GES row of (table, id) and sends it through company's queue and the
// pipeline's upsert path again (Retry on the settings page). With force (Resync), gessync first
// forgets what it last sent, so the whole record goes to Sage even if it looks unchanged, and a
// record Sage no longer has (an open "not found" error) is created again. It returns when the
// row is queued; the outcome shows in the sync log.
func (d *Daemon) Resync(ctx context.Context, companyID int64, table string, id int64, force bool) error {
	switch table {
	case "customers", "invoices", "payments":
	default:
		return &SettingsError{"table", fmt.Sprintf("%q is not a synced table: use customers, invoices or payments", table)}
	}
	if err := d.NotHere(companyID); err != nil {
		return err // a standby's or another shard's resync would race the instance that streams it
	}
	row, err := d.Rows.Row(ctx, table, id)
	if errors.Is(err, cdc.ErrRowGone) {
		return fmt.Errorf("%s %d: %w", table, id, ErrRowGone)
	}
	if err != nil {
		return err
	}
	if c, ok := row.Int("company_id"); !ok || c != companyID {
		return &SettingsError{"id", fmt.Sprintf("%s %d belongs to company %d, not %d", table, id, c, companyID)}
	}
	if force {
		if err := d.forgetSent(ctx, companyID, table, id); err != nil {
			return err
		}
	}
	p := d.pipe.Load()
	if p == nil {
		return pipeline.ErrNotRunning
	}
	return p.Resync(ctx, companyID, table, row, nil)
}

// forgetSent clears the payload hash of (table, id) so the next upsert sends everything, and
// drops its Sage id when Sage said it no longer has the record.
func (d *Daemon) forgetSent(ctx context.Context, companyID int64, table string, id int64) error {
	m, err := d.Store.Mapping(ctx, table, id)
	if errors.Is(err, state.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if m.CompanyID != companyID {
		return nil
	}
	open, err := d.Store.Entries(ctx, state.LogQuery{CompanyID: companyID, OpenOnly: true, Limit: 1000})
	if err != nil {
		return err
	}
	for _, e := range open {
		if e.Table == table && e.GESID == id && e.Code == "sage.RecordNotFound" {
			if err := d.Store.ForgetSageRecord(ctx, table, id, m.BusinessID, m.SageID); err != nil {
				return err
			}
			if p := d.pipe.Load(); p != nil { // one started after this reads it from state
				p.Replacing(state.Replacement{Table: table, GESID: id, BusinessID: m.BusinessID, Replaces: m.SageID})
			}
			return nil
		}
	}
	m.PayloadHash = ""
	return d.Store.SaveMapping(ctx, m)
}

// RetryOpen queues every record with an open error of company (0: every company) again, as
// Resync without force. It returns how many were queued.
func (d *Daemon) RetryOpen(ctx context.Context, companyID int64) (int, error) {
	open, err := d.Store.Entries(ctx, state.LogQuery{CompanyID: companyID, OpenOnly: true, Limit: 10000})
	if err != nil {
		return 0, err
	}
	seen := map[string]bool{}
	n := 0
	var errs []error
	for i := len(open) - 1; i >= 0; i-- { // oldest first
		e := open[i]
		key := fmt.Sprintf("%s/%d", e.Table, e.GESID)
		if e.GESID == 0 || seen[key] {
			continue
		}
		seen[key] = true
		if err := d.Resync(ctx, e.CompanyID, e.Table, e.GESID, false); err != nil {
			if errors.Is(err, ErrRowGone) {
				continue
			}
			errs = append(errs, err)
			continue
		}
		n++
	}
	return n, errors.Join(errs...)
}
