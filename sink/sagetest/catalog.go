package sagetest

import (
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/shopspring/decimal"
)

// ---- businesses (Core API) ----

// businessView is a business as GET /businesses returns it.
type businessView struct {
	ID            string `json:"id"`
	DisplayedAs   string `json:"displayed_as"`
	Path          string `json:"$path"`
	Name          string `json:"name"`
	CreatedAt     string `json:"created_at"`
	UpdatedAt     string `json:"updated_at"`
	Subscriptions []Link `json:"subscriptions"`
}

func (b *business) view() businessView {
	sub := "ACCOUNTING_" + strings.ToUpper(b.tier)
	return businessView{
		ID: b.id, DisplayedAs: b.name, Path: "/businesses/" + b.id, Name: b.name,
		CreatedAt: ts(b.created), UpdatedAt: ts(b.created),
		Subscriptions: []Link{{ID: sub, DisplayedAs: tierNames[b.tier]}},
	}
}

// listBusinesses serves GET /businesses: the businesses the token reaches (its own), in the Core
// API's envelope, which says $items_per_page (not $itemsPerPage) and is never paginated.
func listBusinesses(c *call) response {
	item := pick(c.b.view(), c.query.Get("attributes"))
	return ok(http.StatusOK, struct {
		Total        int     `json:"$total"`
		Page         int     `json:"$page"`
		Next         *string `json:"$next"`
		Back         *string `json:"$back"`
		ItemsPerPage int     `json:"$items_per_page"`
		Items        []any   `json:"$items"`
	}{Total: 1, Page: 1, ItemsPerPage: math.MaxInt32, Items: []any{item}})
}

// getBusiness serves GET /businesses/{key}.
func getBusiness(c *call) response {
	if c.id != c.b.id {
		return notFound()
	}
	return ok(http.StatusOK, c.b.view())
}

// ---- bank accounts ----

type bankAccountIn struct {
	BankAccountTypeID      *string             `json:"bank_account_type_id"`
	NominalCode            *int                `json:"nominal_code"`
	DefaultPaymentMethodID *string             `json:"default_payment_method_id"`
	CurrencyID             *string             `json:"currency_id"`
	BankAccountDetails     *BankAccountDetails `json:"bank_account_details"`
	LedgerAccountID        *string             `json:"ledger_account_id"`
	IsActive               *bool               `json:"is_active"`
}

// createBankAccount serves POST /bank_accounts: {"bank_account": {bank_account_type_id,
// bank_account_details: {account_name, …}, nominal_code, …}} → 201 BankAccount, with a new bank
// ledger account (nominal_code, or the next free from 1200).
func createBankAccount(c *call) response {
	return c.idempotent(func() response {
		in, e := decode[bankAccountIn](c)
		if e != nil {
			return *e
		}
		var pr problems
		typeID := deref(in.BankAccountTypeID)
		if _, ok := bankAccountTypes[typeID]; !ok {
			pr.add("bank_account_type_id", "is not a bank account type (CHECKING, SAVINGS, CREDIT_CARD, CASH_IN_HAND, LOAN, OTHER)")
		}
		nominal := 0
		if in.NominalCode != nil {
			nominal = *in.NominalCode
			if c.b.ledgerByNominal(nominal) != nil {
				pr.add("nominal_code", "Nominal code must be unique")
			}
		}
		method := deref(in.DefaultPaymentMethodID)
		if _, ok := paymentMethodLink(method); method != "" && !ok {
			pr.add("default_payment_method_id", "is not a payment method")
		}
		if in.CurrencyID != nil && *in.CurrencyID != "GBP" {
			pr.add("currency_id", "Multi-currency is not enabled for this business.")
		}
		if in.LedgerAccountID != nil {
			pr.add("ledger_account_id", "is not supported by the sandbox; a new ledger account is created.")
		}
		var details BankAccountDetails
		if in.BankAccountDetails != nil {
			details = *in.BankAccountDetails
			if strings.TrimSpace(details.AccountName) == "" {
				pr.add("bank_account_details.account_name", msgRequired)
			}
		}
		if len(pr) > 0 {
			return invalid(pr...)
		}
		a := c.b.addBankAccount(typeID, details, nominal, method, c.now)
		return ok(http.StatusCreated, c.b.renderBankAccount(a))
	})
}

func getBankAccount(c *call) response {
	a, found := c.b.bankAccts.get(c.id)
	if !found {
		return notFound()
	}
	return ok(http.StatusOK, c.b.renderBankAccount(a))
}

// listBankAccounts serves GET /bank_accounts.
func listBankAccounts(c *call) response {
	if resp, ok := c.deletedSince("bank_accounts"); ok {
		return resp
	}
	var out []BankAccount
	for _, a := range c.b.bankAccts.all() {
		if c.updatedSince(a.updated) {
			out = append(out, c.b.renderBankAccount(a))
		}
	}
	return page(c, out)
}

// ---- tax rates ----

type taxRateView struct {
	ID             string  `json:"id"`
	DisplayedAs    string  `json:"displayed_as"`
	Path           string  `json:"$path"`
	Name           string  `json:"name"`
	Percentage     Decimal `json:"percentage"`
	IsVisible      bool    `json:"is_visible"`
	IsCombinedRate bool    `json:"is_combined_rate"`
	Editable       bool    `json:"editable"`
	Deletable      bool    `json:"deletable"`
}

func (r taxRate) view() taxRateView {
	l := r.link()
	return taxRateView{ID: l.ID, DisplayedAs: l.DisplayedAs, Path: l.Path, Name: r.name,
		Percentage: dec(r.pct), IsVisible: true}
}

// listTaxRates serves GET /tax_rates: GB_STANDARD 20 %, GB_LOWER 5 %, GB_ZERO, GB_EXEMPT,
// GB_NO_TAX (0 %). cis_only=true answers none.
func listTaxRates(c *call) response {
	out := []taxRateView{}
	if c.query.Get("cis_only") != "true" {
		for _, r := range taxRates {
			out = append(out, r.view())
		}
	}
	return page(c, out)
}

func getTaxRate(c *call) response {
	r, found := findTaxRate(c.id)
	if !found {
		return notFound()
	}
	return ok(http.StatusOK, r.view())
}

// ---- ledger accounts ----

type ledgerAccountView struct {
	ID                string   `json:"id"`
	DisplayedAs       string   `json:"displayed_as"`
	Path              string   `json:"$path"`
	CreatedAt         string   `json:"created_at"`
	UpdatedAt         string   `json:"updated_at"`
	Name              string   `json:"name"`
	DisplayName       string   `json:"display_name"`
	NominalCode       int      `json:"nominal_code"`
	LedgerAccountType Link     `json:"ledger_account_type"`
	VisibleScopes     []string `json:"visible_scopes"`
	IncludedInChart   bool     `json:"included_in_chart"`
	VisibleInSales    bool     `json:"visible_in_sales"`
	VisibleInBanking  bool     `json:"visible_in_banking"`
	IsControlAccount  bool     `json:"is_control_account"`
	CISLabour         bool     `json:"cis_labour"`
	CISMaterials      bool     `json:"cis_materials"`
	TaxRate           *Link    `json:"tax_rate,omitempty"`
}

func (l *ledgerAccount) scopes() []string {
	switch {
	case l.visibleInSales():
		return []string{"sales", "reporting", "journals"}
	case l.typeID == "BANK":
		return []string{"bank", "reporting", "journals"}
	case l.typeID == "DIRECT_EXPENSES":
		return []string{"expenses", "other_payment", "reporting", "journals"}
	default:
		return []string{"reporting", "journals"}
	}
}

func (l *ledgerAccount) view() ledgerAccountView {
	lk := l.link()
	v := ledgerAccountView{
		ID: l.id, DisplayedAs: lk.DisplayedAs, Path: lk.Path, CreatedAt: ts(l.created), UpdatedAt: ts(l.created),
		Name: l.name, DisplayName: l.name, NominalCode: l.nominal,
		LedgerAccountType: Link{ID: l.typeID, DisplayedAs: ledgerTypeNames[l.typeID], Path: "/ledger_account_types/" + l.typeID},
		VisibleScopes:     l.scopes(), IncludedInChart: true, VisibleInSales: l.visibleInSales(),
		VisibleInBanking: l.typeID == "BANK", IsControlAccount: l.nominal == 1100 || l.nominal == 2200,
		CISLabour: l.cisLabour, CISMaterials: l.cisMats,
	}
	if l.visibleInSales() {
		r, _ := findTaxRate("GB_STANDARD")
		lk := r.link()
		v.TaxRate = &lk
	}
	return v
}

// listLedgerAccounts serves GET /ledger_accounts with visible_in (sales, bank, …),
// ledger_account_type_id, search (name or nominal code) and show_control_accounts.
func listLedgerAccounts(c *call) response {
	q := c.query
	out := []ledgerAccountView{}
	for _, l := range c.b.ledgers.all() {
		v := l.view()
		switch s := q.Get("search"); {
		case q.Get("visible_in") != "" && !containsScope(v.VisibleScopes, q.Get("visible_in")):
		case q.Get("ledger_account_type_id") != "" && l.typeID != q.Get("ledger_account_type_id"):
		case s != "" && !containsFold(l.name, s) && !strings.Contains(strconv.Itoa(l.nominal), s):
		case v.IsControlAccount && q.Get("show_control_accounts") == "false":
		default:
			out = append(out, v)
		}
	}
	return page(c, out)
}

func containsScope(scopes []string, want string) bool {
	for _, s := range scopes {
		if s == want || (want == "banking" && s == "bank") {
			return true
		}
	}
	return false
}

func getLedgerAccount(c *call) response {
	l, found := c.b.ledgers.get(c.id)
	if !found {
		return notFound()
	}
	return ok(http.StatusOK, l.view())
}

// ---- payment methods ----

// listPaymentMethods serves GET /payment_methods: ALTERNATIVE_PAYMENT, BANK_TRANSFER, CASH, CHECK,
// CREDIT_DEBIT.
func listPaymentMethods(c *call) response {
	out := []Link{}
	for _, m := range paymentMethods {
		l, _ := paymentMethodLink(m.id)
		out = append(out, l)
	}
	return page(c, out)
}

func getPaymentMethod(c *call) response {
	l, found := paymentMethodLink(c.id)
	if !found {
		return notFound()
	}
	return ok(http.StatusOK, l)
}

// ---- financial settings ----

// getFinancialSettings serves GET /financial_settings: a VAT-registered (standard scheme, accrual)
// GBP business whose year ends on 31 December.
func getFinancialSettings(c *call) response {
	year := c.now.Year()
	return ok(http.StatusOK, map[string]any{
		"$path":                   "/financial_settings",
		"year_end_date":           time.Date(year, 12, 31, 0, 0, 0, 0, time.UTC).Format(time.DateOnly),
		"accounting_type":         "accrual",
		"base_currency":           gbp,
		"multi_currency_enabled":  false,
		"use_live_exchange_rates": false,
		"mtd_activation_status":   "mtd_unavailable",
		"mtd_connected":           false,
		"tax_scheme":              Link{ID: "STANDARD", DisplayedAs: "Standard", Path: "/tax_schemes/STANDARD"},
		"tax_number":              "GB123456789",
		"default_irpf_rate":       dec(decimal.Zero),
		"updated_at":              ts(c.b.created),
		"postponed_accounting":    false,
		"destination_vat":         false,
	})
}
