package daemon

import (
	"context"
	"fmt"
	"strings"

	"golang.org/x/oauth2"

	"github.com/gessync/gessync/sink/sage"
	"github.com/gessync/gessync/state"
	"github.com/gessync/gessync/transform"
)

// ConnectResult says what Connect chose, in words for the person connecting.
type ConnectResult struct {
	CompanyID    int64
	BusinessID   string
	BusinessName string
	BankAccount  string
	Notes        []string
}

// Connect finishes connecting company to Sage with a freshly exchanged token: it stores the
// tokens, chooses the business (the only one, or the first, noted), chooses the bank account for
// receipts (the first current account; with none, it creates "GES Payments", noted), and looks up
// the business's tax rates and ledger accounts (GET /businesses, /bank_accounts, /tax_rates,
// /ledger_accounts). Existing sync settings of a reconnecting company are kept.
func (d *Daemon) Connect(ctx context.Context, companyID int64, tok *oauth2.Token) (_ ConnectResult, err error) {
	res := ConnectResult{CompanyID: companyID}
	defer func() {
		if err != nil {
			// Not left "connecting" (its changes would wait without anyone knowing why).
			_ = d.Store.SetStatus(context.WithoutCancel(ctx), companyID, "lost", "Connecting to Sage failed: "+err.Error())
			d.forget(companyID)
		}
	}()
	settings := state.DefaultSettings()
	conn := state.Connection{CompanyID: companyID, Token: tok, Status: "connecting"}
	if old, err := d.Store.Connection(ctx, companyID); err == nil {
		// Keep the business until the new one is chosen: a connect that fails midway must not
		// leave the company looking never connected.
		settings, conn.BusinessID, conn.BusinessName = old.Settings, old.BusinessID, old.BusinessName
	}
	conn.Settings = settings
	if err := d.Store.SaveConnection(ctx, conn); err != nil {
		return res, err
	}
	d.forget(companyID)
	bare := d.Client.Session(sage.Connection{CompanyID: companyID, Token: tok}, d.Store)
	businesses, err := bare.Businesses(ctx)
	if err != nil {
		return res, fmt.Errorf("company %d: listing Sage businesses: %w", companyID, err)
	}
	if len(businesses) == 0 {
		return res, fmt.Errorf("company %d: the Sage user has no business", companyID)
	}
	b := businesses[0]
	if len(businesses) > 1 {
		res.Notes = append(res.Notes, fmt.Sprintf("The Sage user reaches %d businesses; gessync chose the first, %q. Choose another on the settings page if that is wrong.", len(businesses), nameOf(b)))
	}
	res.BusinessID, res.BusinessName = b.ID, nameOf(b)
	cur, err := bare.Token(ctx)
	if err != nil {
		return res, fmt.Errorf("company %d: %w", companyID, err)
	}
	sess := d.Client.Session(sage.Connection{CompanyID: companyID, BusinessID: b.ID, Token: cur}, d.Store)

	s := settings.Sage
	if s.BusinessID != b.ID {
		// Another business: its bank accounts, ledgers and tier are not the old one's. Keep the
		// company's sync toggles, look the rest up afresh.
		if s.BusinessID != "" {
			res.Notes = append(res.Notes, "This company was connected to another Sage business before; its bank account, ledger accounts and tier were looked up again in the new one.")
		}
		s = transform.Settings{}
		settings.BankAccountName, settings.SalesLedgerName = "", ""
	}
	s.BusinessID = b.ID
	if s.Tier == "" {
		s.Tier = tierOf(b)
	}
	accounts, err := sess.BankAccounts(ctx)
	if err != nil {
		return res, fmt.Errorf("company %d: listing bank accounts: %w", companyID, err)
	}
	var chosen *sage.BankAccount
	for i, a := range accounts {
		if s.BankAccountID != "" && a.ID == s.BankAccountID {
			chosen = &accounts[i]
			break
		}
	}
	for i, a := range accounts {
		if chosen == nil && a.BankAccountType != nil && a.BankAccountType.ID == "CHECKING" {
			chosen = &accounts[i]
		}
	}
	if chosen == nil {
		req := sage.BankAccountRequest{BankAccountTypeID: "CHECKING", IdempotencyID: transform.IdempotencyID(b.ID, transform.Record{Table: "bank_accounts", ID: companyID})}
		req.BankAccountDetails.AccountName = "GES Payments"
		a, err := sess.CreateBankAccount(ctx, req)
		if err != nil {
			return res, fmt.Errorf("company %d: creating bank account: %w", companyID, err)
		}
		chosen = &a
		res.Notes = append(res.Notes, "The Sage business had no current account, so gessync created one named \"GES Payments\" for receipts.")
	}
	s.BankAccountID = chosen.ID
	res.BankAccount = chosen.DisplayedAs
	settings.BankAccountName = chosen.DisplayedAs

	rates, err := sess.TaxRates(ctx)
	if err != nil {
		return res, fmt.Errorf("company %d: listing tax rates: %w", companyID, err)
	}
	s.TaxRates = TaxRateIDs(rates)
	ledgers, err := sess.LedgerAccounts(ctx)
	if err != nil {
		return res, fmt.Errorf("company %d: listing ledger accounts: %w", companyID, err)
	}
	for _, l := range ledgers {
		switch {
		case l.Nominalcode == 4000 && s.SalesLedgerAccountID == "":
			s.SalesLedgerAccountID = l.ID
		case l.CISLabour && s.CISLabourLedgerAccountID == "":
			s.CISLabourLedgerAccountID = l.ID
		case l.CISMaterials && s.CISMaterialsLedgerAccountID == "":
			s.CISMaterialsLedgerAccountID = l.ID
		}
	}
	if s.SalesLedgerAccountID == "" {
		return res, fmt.Errorf("company %d: the Sage business has no sales ledger account with nominal code 4000; choose one on the settings page", companyID)
	}
	settings.Sage = s
	cur, err = sess.Token(ctx)
	if err != nil {
		return res, fmt.Errorf("company %d: %w", companyID, err)
	}
	conn = state.Connection{CompanyID: companyID, BusinessID: b.ID, BusinessName: nameOf(b), Token: cur, Settings: settings, Status: "connected"}
	if exp := sage.RefreshExpiry(cur); !exp.IsZero() {
		conn.RefreshExpiry = exp
	}
	if err := d.Store.SaveConnection(ctx, conn); err != nil {
		return res, err
	}
	d.forget(companyID)
	for _, n := range res.Notes {
		if err := d.Store.Log(ctx, state.Entry{CompanyID: companyID, Level: state.LevelInfo, Code: "connect", Message: n}); err != nil {
			return res, err
		}
	}
	if p := d.pipe.Load(); p != nil {
		p.Kick(companyID) // changes waiting for this connection go now
	}
	if err := d.Store.ResolveCode(ctx, companyID, "connection.lost"); err != nil {
		return res, err
	}
	d.log.Info("company connected to Sage", "company_id", companyID, "business", res.BusinessName, "bank_account", res.BankAccount)
	return res, nil
}

func nameOf(b sage.Business) string {
	if b.Name != "" {
		return b.Name
	}
	return b.DisplayedAs
}

func tierOf(b sage.Business) transform.Tier {
	for _, s := range b.Subscriptions {
		if strings.Contains(strings.ToLower(s.DisplayedAs+" "+s.ID), "start") {
			return transform.TierStart
		}
	}
	return transform.TierStandard
}

// TaxRateIDs maps GES VAT rates to the business's tax rate ids: GB_STANDARD (20), GB_LOWER (5),
// GB_ZERO (0) and GB_NO_TAX for outside the scope of VAT; other visible rates by percentage.
func TaxRateIDs(rates []sage.TaxRate) map[string]string {
	out := map[string]string{}
	for _, r := range rates {
		switch r.ID {
		case "GB_STANDARD", "GB_LOWER", "GB_ZERO":
			out[transform.RateKey(&r.Percentage.Decimal)] = r.ID
		case "GB_NO_TAX":
			out[""] = r.ID
		}
	}
	for _, r := range rates {
		k := transform.RateKey(&r.Percentage.Decimal)
		if _, ok := out[k]; !ok && r.ID != "GB_NO_TAX" && r.ID != "GB_EXEMPT" {
			out[k] = r.ID
		}
	}
	return out
}
