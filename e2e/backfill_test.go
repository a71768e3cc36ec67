package e2e_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/shopspring/decimal"
	"github.com/stretchr/testify/require"

	"github.com/gessync/gessync/daemon"
	"github.com/gessync/gessync/sink/sage"
	"github.com/gessync/gessync/sink/sagetest"
)

// historySize is the company's history: the full size with GESSYNC_E2E_FULL=1, a tenth
// of it otherwise (CI).
func historySize() (customers, invoices, payments int) {
	if os.Getenv("GESSYNC_E2E_FULL") != "" {
		return 2000, 5000, 4000
	}
	return 200, 500, 400
}

// seedHistory writes a GES company with years of history: every invoice has one 20 % line.
func (e *env) seedHistory(company, customers, invoices, payments int) {
	e.exec(fmt.Sprintf(`INSERT INTO customers (id, company_id, account_ref, first_name, last_name, email, address_line1, town, postcode)
		SELECT g, %[1]d, 'C' || lpad(g::text, 6, '0'), 'Customer', 'Number ' || g, 'c' || g || '@example.com', g || ' High Street', 'Leeds', 'LS1 ' || (g %% 9) || 'AA'
		FROM generate_series(1, %[2]d) g`, company, customers))
	e.exec(fmt.Sprintf(`INSERT INTO invoices (id, company_id, customer_id, invoice_number, status, issue_date, line_items, subtotal, vat_total, total)
		SELECT g, %[1]d, 1 + (g %% %[2]d), 'INV-' || g, 'issued', date '2023-01-01' + (g %% 900),
			jsonb_build_array(jsonb_build_object('description', 'Boiler service ' || g, 'quantity', 1, 'unit_price', 40 + (g %% 90), 'vat_rate', 20, 'kind', 'labour')),
			40 + (g %% 90), round((40 + (g %% 90)) * 0.2, 2), round((40 + (g %% 90)) * 1.2, 2)
		FROM generate_series(1, %[3]d) g`, company, customers, invoices))
	e.exec(fmt.Sprintf(`INSERT INTO payments (id, company_id, invoice_id, amount, method, paid_on, reference)
		SELECT g, %[1]d, g, 40 + (g %% 90), 'bank_transfer', date '2023-01-15' + (g %% 900), 'PAY-' || g
		FROM generate_series(1, %[2]d) g`, company, payments))
	e.exec(`SELECT setval('customers_id_seq', 100000); SELECT setval('invoices_id_seq', 100000); SELECT setval('payments_id_seq', 100000)`)
}

// preexisting puts into a new sandbox business the customers whose id is a multiple of 10, with
// all their invoices and payments, as a bookkeeper would have typed them into Sage. It returns
// the business id.
func (e *env) preexisting(customers, invoices, payments int) string {
	e.t.Helper()
	ctx := context.Background()
	info := e.sandbox.CreateBusiness("Hartley Heating (existing ledger)", "standard")
	s := e.handSession(info.ID)
	contacts := map[int]string{}
	for c := 10; c <= customers; c += 10 {
		ct, err := s.CreateContact(ctx, sage.ContactRequest{Name: fmt.Sprintf("Customer Number %d", c), ContactTypeIDs: []string{"CUSTOMER"}, Reference: fmt.Sprintf("C%06d", c)})
		require.NoError(e.t, err)
		contacts[c] = ct.ID
	}
	for i := 1; i <= invoices; i++ {
		contact, ok := contacts[1+i%customers]
		if !ok {
			continue
		}
		net := decimal.NewFromInt(int64(40 + i%90))
		vat := net.Mul(decimal.RequireFromString("0.2")).Round(2)
		inv, err := s.CreateSalesInvoice(ctx, sage.SalesInvoiceRequest{ContactID: contact, Date: time.Date(2023, 1, 1, 0, 0, 0, 0, time.UTC).AddDate(0, 0, i%900).Format(time.DateOnly),
			InvoiceNumber: fmt.Sprintf("INV-%d", i), InvoiceLines: []sage.InvoiceLineRequest{{Description: fmt.Sprintf("Boiler service %d", i), LedgerAccountID: info.SalesLedgerAccountID,
				Quantity: sage.DP(decimal.NewFromInt(1)), UnitPrice: sage.D(net), TaxRateID: "GB_STANDARD", TaxAmount: sage.DP(vat)}}})
		require.NoError(e.t, err)
		if i <= payments {
			_, err := s.CreateContactPayment(ctx, sage.ContactPaymentRequest{TransactionTypeID: "CUSTOMER_RECEIPT", ContactID: contact, BankAccountID: info.BankAccountID,
				Date: time.Date(2023, 1, 15, 0, 0, 0, 0, time.UTC).AddDate(0, 0, i%900).Format(time.DateOnly), TotalAmount: sage.DP(net), Reference: fmt.Sprintf("PAY-%d", i),
				AllocatedArtefacts: []sage.AllocatedArtefactRequest{{ArtefactID: inv.ID, Amount: sage.D(net)}}})
			require.NoError(e.t, err)
		}
	}
	return info.ID
}

// requireSageEqualsGES compares the company's GES records with its Sage business: one contact
// per customer, one invoice per issued invoice with GES's totals, one payment per payment with
// GES's amount; no duplicates, nothing missing, nothing extra.
func requireSageEqualsGES(t *testing.T, e *env, company int, b sagetest.BusinessDump) {
	t.Helper()
	ctx := context.Background()
	refs := map[string]int{}
	for _, c := range b.Contacts {
		refs[c.Reference]++
	}
	rows, err := e.db.Query(ctx, `SELECT account_ref, coalesce(email, '') FROM customers WHERE company_id = $1`, company)
	require.NoError(t, err)
	n := 0
	for rows.Next() {
		var ref, email string
		require.NoError(t, rows.Scan(&ref, &email))
		require.Equal(t, 1, refs[ref], "contacts with reference %s", ref)
		n++
	}
	require.NoError(t, rows.Err())
	require.Len(t, b.Contacts, n, "contacts")
	requireBooksMatch(t, e, company, b)
	pays := map[string]int{}
	amounts := map[string]decimal.Decimal{}
	for _, p := range b.ContactPayments {
		pays[p.Reference]++
		amounts[p.Reference] = p.TotalAmount.Decimal
	}
	rows, err = e.db.Query(ctx, `SELECT reference, amount FROM payments WHERE company_id = $1`, company)
	require.NoError(t, err)
	n = 0
	for rows.Next() {
		var ref string
		var amount decimal.Decimal
		require.NoError(t, rows.Scan(&ref, &amount))
		require.Equal(t, 1, pays[ref], "payments with reference %s", ref)
		require.True(t, amount.Equal(amounts[ref]), "payment %s: GES %s, Sage %s", ref, amount, amounts[ref])
		n++
	}
	require.NoError(t, rows.Err())
	require.Len(t, b.ContactPayments, n, "payments")
}

func (e *env) backfill(company int) daemon.BackfillProgress {
	e.t.Helper()
	resp, err := http.Post(fmt.Sprintf("%s/api/companies/%d/backfill", e.base(), company), "", nil)
	require.NoError(e.t, err)
	defer resp.Body.Close()
	var p daemon.BackfillProgress
	require.NoError(e.t, json.NewDecoder(resp.Body).Decode(&p))
	require.Equal(e.t, http.StatusAccepted, resp.StatusCode)
	return p
}

func (e *env) backfillProgress(company int) daemon.BackfillProgress {
	e.t.Helper()
	var p daemon.BackfillProgress
	resp, err := http.Get(fmt.Sprintf("%s/api/companies/%d/backfill", e.base(), company))
	if err != nil {
		return p
	}
	defer resp.Body.Close()
	_ = json.NewDecoder(resp.Body).Decode(&p)
	return p
}

func (e *env) liveEdits(round int) {
	e.exec(fmt.Sprintf(`UPDATE customers SET email = 'new%[1]d.' || id || '@example.com', updated_at = now() WHERE company_id = 1 AND id %% 37 = %[1]d`, round%37))
	e.exec(fmt.Sprintf(`UPDATE invoices SET line_items = jsonb_set(line_items, '{0,description}', to_jsonb('Edited ' || id)), updated_at = now() WHERE company_id = 1 AND id %% 53 = %[1]d`, round%53))
	e.exec(fmt.Sprintf(`INSERT INTO customers (company_id, account_ref, first_name, last_name) VALUES (1, 'NEW%[1]d', 'Live', 'Customer %[1]d')`, round))
}

var fastSage = []string{"GESSYNC_SAGE_REQUESTS_PER_MINUTE=1000000"}

func TestBackfillJoinsALedgerThatAlreadyHasHistory(t *testing.T) {
	for _, kill := range []bool{false, true} {
		name := "ok - backfill while live edits run"
		if kill {
			name = "ok - killed midway with SIGKILL and restarted"
		}
		t.Run(name, func(t *testing.T) {
			customers, invoices, payments := historySize()
			e := newEnvWith(t, sagetest.Options{RateLimit: -1})
			e.seedHistory(1, customers, invoices, payments)
			business := e.preexisting(customers, invoices, payments)
			e.start(fastSage...)
			e.connectAs(1, "business_id="+business)
			started := time.Now()
			p := e.backfill(1)
			require.Equal(t, int64(customers+invoices+payments), p.Total)
			round := 0
			e.eventually(10*time.Minute, "backfill done", func() bool {
				round++
				if round%25 == 0 {
					e.liveEdits(round / 25)
				}
				cur := e.backfillProgress(1)
				if kill && e.proc() != nil && cur.Done > cur.Total/3 && round > 0 {
					e.kill()
					e.start(fastSage...)
					kill = false
				}
				return cur.Status == "done"
			})
			elapsed := time.Since(started)
			e.liveEdits(round + 1)
			e.caughtUp()
			p = e.backfillProgress(1)
			t.Logf("backfilled %d of %d records in %s: %.1f records/s (daemon's figure %.1f/s)", p.Done, p.Total, elapsed.Round(time.Millisecond), float64(p.Done)/elapsed.Seconds(), p.Rate)
			for _, l := range e.allLog(1) {
				if strings.Contains(l, "invoices/75:") || strings.Contains(l, "customers/76:") {
					t.Log("DEBUG", l)
				}
			}
			if open := e.openLog(1); len(open) > 0 {
				t.Logf("open sync-log errors (%d), first: %v", len(open), open[:min(5, len(open))])
			}
			requireSageEqualsGES(t, e, 1, *e.sandbox.Dump().Business(business))
			var matched int
			require.NoError(t, e.db.QueryRow(context.Background(), `SELECT count(*) FROM gessync.sync_log WHERE company_id = 1 AND code LIKE 'match.%'`).Scan(&matched))
			require.GreaterOrEqual(t, matched, customers/10+invoices/10, "matches recorded in the sync log")
			require.Empty(t, e.openLog(1), "open errors")
		})
	}
}
