package e2e_test

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestBadRowsBecomePlainLogEntriesAndTheStreamGoesOn(t *testing.T) {
	e := newEnv(t)
	e.start()
	e.connect(1)
	long := strings.Repeat("Replace thermocouple and clean burner jets ", 12)[:500]
	line := func(desc, qty, price, rate string) string {
		return fmt.Sprintf(`[{"description": %q, "quantity": %s, "unit_price": %s, "vat_rate": %s, "kind": "labour"}]`, desc, qty, price, rate)
	}
	e.exec(`INSERT INTO customers (id, company_id, email) VALUES (101, 1, 'nobody@example.com')`)                                                  // no name at all
	e.exec(`INSERT INTO customers (id, company_id, first_name, last_name, email) VALUES (102, 1, 'Invalid', 'Email', 'not an email@@')`)           // invalid email
	e.exec(`INSERT INTO customers (id, company_id, first_name, last_name, account_ref) VALUES (103, 1, 'Long', 'Ref', 'REFERENCE-TOO-LONG-30CH')`) // account_ref > 10
	e.exec(`INSERT INTO customers (id, company_id, first_name, last_name, postcode) VALUES (104, 1, 'Zoë', 'Ó Súilleabháin 🔥', NULL)`)             // emoji, non-Latin, no postcode: valid
	e.exec(`INSERT INTO customers (id, company_id, company_name) VALUES (105, 2, 'Other Company Customer')`)                                       // another company's
	invoices := []struct {
		id              int
		customer        int
		lines           string
		sub, vat, total string
	}{
		{201, 104, line(long, "1", "85.00", "20"), "85.00", "17.00", "102.00"},         // 500-character description
		{202, 104, line("Zero quantity", "0", "10.00", "20"), "0", "0", "0"},           // zero quantity
		{203, 104, line("Negative quantity", "-2", "10.00", "20"), "-20", "-4", "-24"}, // negative quantity
		{204, 104, line("Totals that do not add up", "1", "50.00", "20"), "45.00", "9.00", "54.00"},
		{205, 104, line("Old VAT rate", "1", "100.00", "17.5"), "100.00", "17.50", "117.50"},                // a rate Sage lacks
		{206, 105, line("Wrong company", "1", "10.00", "20"), "10.00", "2.00", "12.00"},                     // another company's customer
		{207, 104, line("Ménage à trois radiateurs – 日本語", "1", "99.99", "20"), "99.99", "20.00", "119.99"}, // valid
	}
	for i, inv := range invoices {
		e.exec(`INSERT INTO invoices (id, company_id, customer_id, invoice_number, status, issue_date, line_items, subtotal, vat_total, total)
			VALUES ($1, 1, $2, $3, 'issued', '2026-11-25', $4, $5, $6, $7)`, inv.id, inv.customer, fmt.Sprintf("BAD-%d", i), inv.lines, inv.sub, inv.vat, inv.total)
	}
	e.caughtUp()

	entries := map[string][]string{}
	rows, err := e.db.Query(context.Background(), `SELECT ges_table || '/' || ges_id, level, message, action FROM gessync.sync_log WHERE company_id = 1`)
	require.NoError(t, err)
	for rows.Next() {
		var rec, level, msg, action string
		require.NoError(t, rows.Scan(&rec, &level, &msg, &action))
		entries[rec] = append(entries[rec], level+": "+msg+" → "+action)
	}
	require.NoError(t, rows.Err())
	for _, tc := range []struct{ rec, level, words string }{
		{"customers/101", "error", "name"},
		{"customers/102", "warning", "email"},
		{"customers/103", "warning", "10 characters"},
		{"invoices/202", "error", "quantity"},
		{"invoices/203", "error", "quantity"},
		{"invoices/204", "warning", "54.00"},
		{"invoices/205", "error", "17.5"},
		{"invoices/206", "error", "another company"},
	} {
		got := strings.Join(entries[tc.rec], "\n")
		require.Contains(t, got, tc.level+": ", "%s: want a %s entry; have %q", tc.rec, tc.level, got)
		require.Contains(t, got, tc.words, tc.rec)
		require.NotContains(t, got, "→ \n", "%s: every entry says what to do", tc.rec)
	}
	b := e.business(0)
	names := map[string]bool{}
	for _, c := range b.Contacts {
		names[c.Name] = true
	}
	require.True(t, names["Zoë Ó Súilleabháin 🔥"], "emoji and non-Latin names sync")
	require.True(t, names["Invalid Email"], "a customer with a bad email syncs without it")
	require.True(t, names["Long Ref"], "a customer with a long account_ref syncs without it")
	require.False(t, names["Other Company Customer"], "never another company's customer")
	numbers := map[string]bool{}
	for _, inv := range b.SalesInvoices {
		numbers[inv.InvoiceNumber] = true
	}
	require.True(t, numbers["BAD-0"], "a 500-character description syncs")
	require.True(t, numbers["BAD-3"], "totals that do not add up sync with the lines' figures, with a warning")
	require.True(t, numbers["BAD-6"], "accented and CJK text syncs")
	require.False(t, numbers["BAD-5"])
}
