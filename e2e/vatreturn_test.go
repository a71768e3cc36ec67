package e2e_test

import (
	"testing"

	"github.com/stretchr/testify/require"
)

// TestVATReturnRefusal: once the accountant has filed a VAT return in Sage, Sage refuses to
// edit or void the invoices on it. The engineer reads why in plain words and what to do; the
// other invoices keep syncing; and putting the invoice back in GES as it was filed clears the
// error without a call, as the advice says.
func TestVATReturnRefusal(t *testing.T) {
	e := newEnv(t)
	e.start()
	e.connect(1)
	e.exec(`INSERT INTO customers (id, company_id, title, first_name, last_name, account_ref) VALUES (10, 1, 'Ms', 'Priya', 'Shah', 'SHAH01')`)
	filed := `'[{"description":"Boiler service","quantity":1,"unit_price":100.00,"vat_rate":20,"kind":"labour"}]'`
	e.exec(`INSERT INTO invoices (id, company_id, customer_id, invoice_number, status, issue_date, line_items, subtotal, vat_total, total) VALUES
		(100, 1, 10, 'VR-100', 'issued', '2026-10-15', ` + filed + `, 100.00, 20.00, 120.00),
		(101, 1, 10, 'VR-101', 'issued', '2026-11-20', '[{"description":"Call-out","quantity":1,"unit_price":50.00,"vat_rate":20,"kind":"labour"}]', 50.00, 10.00, 60.00)`)
	e.caughtUp()
	require.Empty(t, e.openLog(1))
	require.NoError(t, e.sandbox.FileVATReturn(e.business(0).ID, "2026-10-31"))

	// An edit of the filed invoice and of a later one.
	e.exec(`UPDATE invoices SET line_items = '[{"description":"Boiler service","quantity":1,"unit_price":150.00,"vat_rate":20,"kind":"labour"}]',
		subtotal = 150.00, vat_total = 30.00, total = 180.00, updated_at = now() WHERE id = 100`)
	e.exec(`UPDATE invoices SET line_items = '[{"description":"Call-out","quantity":1,"unit_price":60.00,"vat_rate":20,"kind":"labour"}]',
		subtotal = 60.00, vat_total = 12.00, total = 72.00, updated_at = now() WHERE id = 101`)
	e.caughtUp()
	require.Equal(t, []string{"error invoices/100: Sage will not change this invoice: it is on a submitted VAT return."}, e.openLog(1))
	require.Contains(t, e.allLog(1)[0], "Raise a credit note in Sage for the difference, or correct the invoice in GES back to what was filed.")
	require.Contains(t, e.allLog(1)[0], "You cannot edit VAT reconciled transactions.", "Sage's own words are kept")
	sage := byNumber(e.business(0))
	require.Equal(t, "120.00", sage["VR-100"].TotalAmount.StringFixed(2), "Sage keeps what was filed")
	require.Equal(t, "72.00", sage["VR-101"].TotalAmount.StringFixed(2), "the invoice after the return syncs")

	// Voiding it is refused the same way.
	e.exec(`UPDATE invoices SET status = 'void', void_reason = 'Raised in error', updated_at = now() WHERE id = 100`)
	e.caughtUp()
	require.Equal(t, []string{"error invoices/100: Sage will not change this invoice: it is on a submitted VAT return."}, e.openLog(1))
	require.NotEqual(t, "VOID", e.business(0).SalesInvoices[0].Status.ID)

	// Back as filed: nothing to send, and the error is resolved.
	e.exec(`UPDATE invoices SET status = 'issued', void_reason = NULL, line_items = ` + filed + `,
		subtotal = 100.00, vat_total = 20.00, total = 120.00, updated_at = now() WHERE id = 100`)
	e.caughtUp()
	require.Empty(t, e.openLog(1), "put back as filed, the invoice needs no one")
	sage = byNumber(e.business(0))
	require.Equal(t, "120.00", sage["VR-100"].TotalAmount.StringFixed(2))
	require.NotEqual(t, "VOID", sage["VR-100"].Status.ID)
}
