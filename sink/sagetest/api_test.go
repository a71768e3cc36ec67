package sagetest_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/shopspring/decimal"
	"github.com/stretchr/testify/require"

	"github.com/gessync/gessync/sink/sagetest"
)

func requireMoney(t *testing.T, want string, got sagetest.Decimal, what string) {
	t.Helper()
	require.True(t, decimal.RequireFromString(want).Equal(got.Decimal), "%s: want %s, got %s", what, want, got.String())
}

func TestContacts(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "standard")

	var c sagetest.Contact
	e.must(201, "POST", "/contacts", obj{"contact": obj{
		"name": "Mrs Jane Smith", "contact_type_ids": []string{"CUSTOMER"}, "reference": "SMITH01",
		"main_address":        obj{"address_line_1": "1 High St", "city": "Leeds", "postal_code": "LS1 1AA", "country_id": "GB"},
		"main_contact_person": obj{"name": "Jane Smith", "email": "jane@example.com", "telephone": "0113 000000"},
	}}).json(t, &c)
	require.Regexp(t, "^[0-9a-f]{32}$", c.ID)
	require.Equal(t, "Mrs Jane Smith (SMITH01)", c.DisplayedAs)
	require.Equal(t, "jane@example.com", c.Email, "email comes from main_contact_person")
	require.Equal(t, "CUSTOMER", c.ContactTypes[0].ID)
	require.Equal(t, "LS1 1AA", c.MainAddress.PostalCode)
	require.Equal(t, "GB", c.MainAddress.Country.ID)

	var got sagetest.Contact
	e.must(200, "PUT", "/contacts/"+c.ID, obj{"contact": obj{"notes": "gate code 1234"}}).json(t, &got)
	require.Equal(t, "gate code 1234", got.Notes)
	require.Equal(t, "Mrs Jane Smith", got.Name, "PUT changes only what it carries")

	e.must(200, "GET", "/contacts/"+c.ID, nil).json(t, &got)
	require.Equal(t, c.ID, got.ID)

	// Filters.
	e.contact("Bob Jones")
	count := func(query string) int {
		var page struct {
			Total int `json:"$total"`
		}
		e.must(200, "GET", "/contacts?"+query, nil).json(t, &page)
		return page.Total
	}
	require.Equal(t, 2, count(""))
	require.Equal(t, 1, count("search=smith01"), "search matches the reference")
	require.Equal(t, 1, count("search=jones"), "search matches the name")
	require.Equal(t, 1, count("email=JANE@example.com"))
	require.Equal(t, 0, count("email=nobody@example.com"))

	e.must(204, "DELETE", "/contacts/"+c.ID, nil)
	e.must(404, "GET", "/contacts/"+c.ID, nil)
	require.Equal(t, 1, count(""))
	require.Equal(t, 1, count("deleted_since=2025-01-01T00:00:00Z"))
}

func TestContactRefusals(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "standard")
	e.must(201, "POST", "/contacts", obj{"contact": obj{"name": "A", "contact_type_ids": []string{"CUSTOMER"}, "reference": "DUP"}})

	tests := []struct {
		name    string
		contact obj
		source  string
		message string
	}{
		{"error - name missing", obj{"contact_type_ids": []string{"CUSTOMER"}}, "name", "This field is required."},
		{"error - name blank", obj{"name": "  ", "contact_type_ids": []string{"CUSTOMER"}}, "name", "This field is required."},
		{"error - contact types missing", obj{"name": "A"}, "contact_type_ids", "This field is required."},
		{"error - reference over 10", obj{"name": "A", "contact_type_ids": []string{"CUSTOMER"}, "reference": "ELEVENCHARS"}, "reference", "is too long (maximum is 10 characters)"},
		{"error - reference taken", obj{"name": "B", "contact_type_ids": []string{"CUSTOMER"}, "reference": "dup"}, "reference", "Reference must be unique"},
		{"error - top-level email is not in the spec", obj{"name": "A", "contact_type_ids": []string{"CUSTOMER"}, "email": "a@b.co"}, "email", "is not a permitted attribute."},
		{"error - invalid email", obj{"name": "A", "contact_type_ids": []string{"CUSTOMER"}, "main_contact_person": obj{"email": "not an email"}}, "main_contact_person.email", "is not a valid email address"},
		{"error - postcode over 10", obj{"name": "A", "contact_type_ids": []string{"CUSTOMER"}, "main_address": obj{"postal_code": "LS1 1AA XYZW"}}, "main_address.postal_code", "is too long (maximum is 10 characters)"},
		{"error - credit_days out of range", obj{"name": "A", "contact_type_ids": []string{"CUSTOMER"}, "credit_days": 400}, "credit_days", ""},
		{"error - bad VAT number", obj{"name": "A", "contact_type_ids": []string{"CUSTOMER"}, "tax_number": "12345"}, "tax_number", "is not a valid UK VAT registration number"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := e.with(t)
			r := e.must(422, "POST", "/contacts", obj{"contact": tt.contact})
			items := r.errors(t)
			require.Len(t, items, 1, string(r.body))
			require.Equal(t, "RecordInvalid", items[0].DataCode)
			require.Equal(t, "error", items[0].Severity)
			require.Equal(t, tt.source, items[0].Source)
			if tt.message != "" {
				require.Equal(t, tt.message, items[0].Message)
			}
		})
	}
	t.Run("error - unknown id", func(t *testing.T) {
		e := e.with(t)
		r := e.must(404, "GET", "/contacts/0123456789abcdef0123456789abcdef", nil)
		require.Equal(t, "RecordNotFound", r.errors(t)[0].DataCode)
	})
	t.Run("error - body is not JSON", func(t *testing.T) {
		e := e.with(t)
		e.must(400, "POST", "/contacts", "{nope")
	})
	t.Run("error - contact with an invoice cannot be deleted", func(t *testing.T) {
		e := e.with(t)
		id := e.contact("Has Invoice")
		e.invoice(id, e.line("Service", "1", "80.00", "16.00"))
		e.must(422, "DELETE", "/contacts/"+id, nil)
	})
}

func TestPagination(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "standard")
	for i := range 5 {
		e.contact(fmt.Sprintf("Customer %d", i))
	}
	type page struct {
		Total        int              `json:"$total"`
		Page         int              `json:"$page"`
		Next         *string          `json:"$next"`
		Back         *string          `json:"$back"`
		ItemsPerPage int              `json:"$itemsPerPage"`
		Items        []map[string]any `json:"$items"`
	}
	var p page
	e.must(200, "GET", "/contacts?items_per_page=2&search=customer", nil).json(t, &p)
	require.Equal(t, 5, p.Total)
	require.Equal(t, 1, p.Page)
	require.Equal(t, 2, p.ItemsPerPage)
	require.Nil(t, p.Back)
	require.NotNil(t, p.Next)
	require.Equal(t, "/contacts?page=2&items_per_page=2&search=customer", *p.Next)
	require.Len(t, p.Items, 2)
	require.ElementsMatch(t, []string{"id", "displayed_as", "$path"}, keys(p.Items[0]), "only the base attributes")

	// $next is relative to the API base and can be followed as is.
	e.must(200, "GET", strings.TrimPrefix(*p.Next, ""), nil).json(t, &p)
	require.Equal(t, 2, p.Page)

	// Past the end: the last page, with $next null.
	e.must(200, "GET", "/contacts?items_per_page=2&page=99&attributes=all", nil).json(t, &p)
	require.Equal(t, 3, p.Page)
	require.Nil(t, p.Next)
	require.NotNil(t, p.Back)
	require.Len(t, p.Items, 1)
	require.Contains(t, p.Items[0], "name", "attributes=all gives the full record")

	p = page{}
	e.must(200, "GET", "/contacts?attributes=name", nil).json(t, &p)
	require.ElementsMatch(t, []string{"id", "displayed_as", "$path", "name"}, keys(p.Items[0]))

	for _, q := range []string{"items_per_page=201", "items_per_page=0", "page=abc", "reference=X", "$itemsPerPage=5"} {
		r := e.must(422, "GET", "/contacts?"+q, nil)
		require.Equal(t, "RecordInvalid", r.errors(t)[0].DataCode, q)
	}
}

func keys(m map[string]any) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

func TestInvoiceArithmetic(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "standard")
	cid := e.contact("Jane")

	iv := e.invoice(cid,
		obj{"description": "Boiler service", "ledger_account_id": e.biz.SalesLedgerAccountID, "quantity": 1,
			"unit_price": 85, "tax_rate_id": "GB_STANDARD", "tax_amount": 17},
		obj{"description": "Valve", "ledger_account_id": e.biz.SalesLedgerAccountID, "quantity": "3",
			"unit_price": "4.335", "discount_amount": "1.00", "tax_rate_id": "GB_LOWER", "tax_amount": "0.60"},
		obj{"description": "Callout", "ledger_account_id": e.biz.SalesLedgerAccountID, "unit_price": "10",
			"tax_rate_id": "GB_ZERO"},
	)
	require.Regexp(t, "^[0-9a-f]{32}$", iv.ID)
	require.Equal(t, "SI-1", iv.InvoiceNumber)
	require.Equal(t, "UNPAID", iv.Status.ID)
	require.Equal(t, "2025-03-31", iv.DueDate, "30 days by default")
	require.Len(t, iv.InvoiceLines, 3)
	requireMoney(t, "85.00", iv.InvoiceLines[0].NetAmount, "line 1 net")
	requireMoney(t, "12.01", iv.InvoiceLines[1].NetAmount, "line 2 net: 3 × 4.335 − 1 = 12.005, half up")
	requireMoney(t, "12.61", iv.InvoiceLines[1].TotalAmount, "line 2 total")
	requireMoney(t, "1", iv.InvoiceLines[2].Quantity, "quantity defaults to 1")
	requireMoney(t, "107.01", iv.NetAmount, "net")
	requireMoney(t, "17.60", iv.TaxAmount, "tax")
	requireMoney(t, "124.61", iv.TotalAmount, "total")
	requireMoney(t, "124.61", iv.OutstandingAmount, "outstanding")
	requireMoney(t, "0", iv.TotalPaid, "paid")

	// Money in responses is a string with 2 dp.
	r := e.must(200, "GET", "/sales_invoices/"+iv.ID, nil)
	require.Contains(t, string(r.body), `"total_amount":"124.61"`)
	require.Contains(t, string(r.body), `"tax_amount":"0.00"`)

	// net_amount, when given, wins.
	iv2 := e.invoice(cid, obj{"description": "Fixed", "ledger_account_id": e.biz.SalesLedgerAccountID,
		"quantity": 2, "unit_price": 10, "net_amount": "19.50", "tax_rate_id": "GB_STANDARD", "tax_amount": "3.90"})
	requireMoney(t, "19.50", iv2.NetAmount, "given net")
	require.Equal(t, "SI-2", iv2.InvoiceNumber)
}

func TestInvoiceRefusals(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "standard")
	cid := e.contact("Jane")
	e.must(201, "POST", "/sales_invoices", obj{"sales_invoice": obj{"contact_id": cid, "date": "2025-03-01",
		"invoice_number": "GES-1042", "invoice_lines": []obj{e.line("A", "1", "10", "2")}}})

	good := func(change func(si, line obj)) obj {
		line := e.line("Boiler service", "1", "85.00", "17.00")
		si := obj{"contact_id": cid, "date": "2025-03-01", "invoice_lines": []obj{line}}
		change(si, line)
		return obj{"sales_invoice": si}
	}
	tests := []struct {
		name    string
		change  func(si, line obj)
		source  string
		message string
	}{
		{"error - invoice number used", func(si, _ obj) { si["invoice_number"] = "ges-1042" }, "invoice_number", "Artefact number must be unique"},
		{"error - tax_amount missing on a 20% line", func(_, l obj) { delete(l, "tax_amount") }, "invoice_lines[0].tax_amount", "This field is required."},
		{"error - description missing", func(_, l obj) { delete(l, "description") }, "invoice_lines[0].description", "This field is required."},
		{"error - ledger account missing", func(_, l obj) { delete(l, "ledger_account_id") }, "invoice_lines[0].ledger_account_id", "This field is required."},
		{"error - unit price missing", func(_, l obj) { delete(l, "unit_price") }, "invoice_lines[0].unit_price", "This field is required."},
		{"error - contact missing", func(si, _ obj) { delete(si, "contact_id") }, "contact_id", "This field is required."},
		{"error - date missing", func(si, _ obj) { delete(si, "date") }, "date", "This field is required."},
		{"error - lines missing", func(si, _ obj) { delete(si, "invoice_lines") }, "invoice_lines", "This field is required."},
		{"error - reference over 25", func(si, _ obj) { si["reference"] = strings.Repeat("x", 26) }, "reference", "is too long (maximum is 25 characters)"},
		{"error - unknown contact", func(si, _ obj) { si["contact_id"] = "0123456789abcdef0123456789abcdef" }, "contact_id", "The contact could not be found."},
		{"error - not a date", func(si, _ obj) { si["date"] = "01/03/2025" }, "date", ""},
		{"error - money not a number", func(_, l obj) { l["unit_price"] = "ten" }, "invoice_lines[0].unit_price", "must be a number"},
		{"error - tax with 3 dp", func(_, l obj) { l["tax_amount"] = "17.001" }, "invoice_lines[0].tax_amount", "must have at most 2 decimal places"},
		{"error - tax on a zero rate", func(_, l obj) { l["tax_rate_id"] = "GB_ZERO" }, "invoice_lines[0].tax_amount", "must be 0 for tax rate GB_ZERO"},
		{"error - unknown tax rate", func(_, l obj) { l["tax_rate_id"] = "GB_WHATEVER" }, "invoice_lines[0].tax_rate_id", "is not a tax rate of this business"},
		{"error - line total does not add up", func(_, l obj) { l["total_amount"] = "101.00" }, "invoice_lines[0].total_amount", "does not equal net_amount + tax_amount (102.00)"},
		{"error - invoice total does not add up", func(si, _ obj) { si["total_amount"] = 100 }, "total_amount", "does not equal the sum of the invoice lines (102.00)"},
		{"error - bank ledger on a sales line", func(_, l obj) { l["ledger_account_id"] = "0123456789abcdef0123456789abcdef" }, "invoice_lines[0].ledger_account_id", "is not a sales ledger account of this business"},
		{"error - unknown attribute", func(_, l obj) { l["vat"] = 20 }, "invoice_lines[0].vat", "is not a permitted attribute."},
		{"error - reverse charge with VAT", func(si, _ obj) { si["vat_reverse_charge"] = true }, "invoice_lines[0].tax_amount", "must be 0 on a domestic reverse charge invoice"},
		{"error - due before the date", func(si, _ obj) { si["due_date"] = "2025-02-01" }, "due_date", "cannot be before the invoice date"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := e.with(t)
			r := e.must(422, "POST", "/sales_invoices", good(tt.change))
			items := r.errors(t)
			require.Len(t, items, 1, string(r.body))
			require.Equal(t, "RecordInvalid", items[0].DataCode)
			require.Equal(t, tt.source, items[0].Source)
			if tt.message != "" {
				require.Equal(t, tt.message, items[0].Message)
			}
		})
	}
	t.Run("ok - the unchanged body is accepted", func(t *testing.T) {
		e := e.with(t)
		e.must(201, "POST", "/sales_invoices", good(func(obj, obj) {}))
	})
	t.Run("ok - reverse charge with zero VAT", func(t *testing.T) {
		e := e.with(t)
		e.must(201, "POST", "/sales_invoices", good(func(si, l obj) { si["vat_reverse_charge"] = true; l["tax_amount"] = 0 }))
	})
}

func TestVoidAndDraft(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "standard")
	cid := e.contact("Jane")
	iv := e.invoice(cid, e.line("Service", "1", "85", "17"))

	r := e.must(422, "DELETE", "/sales_invoices/"+iv.ID, nil)
	require.Equal(t, "void_reason", r.errors(t)[0].Source)
	e.must(422, "DELETE", "/sales_invoices/"+iv.ID+"?void_reason="+strings.Repeat("x", 201), nil)

	var voided sagetest.SalesInvoice
	e.must(200, "DELETE", "/sales_invoices/"+iv.ID+"?void_reason=Raised+in+error", nil).json(t, &voided)
	require.Equal(t, "VOID", voided.Status.ID)
	require.Equal(t, "Raised in error", voided.VoidReason)
	e.must(422, "PUT", "/sales_invoices/"+iv.ID, obj{"sales_invoice": obj{"notes": "x"}})
	e.must(422, "DELETE", "/sales_invoices/"+iv.ID+"?void_reason=again", nil)
	require.Equal(t, "VOID", e.srv.Dump().Businesses[0].SalesInvoices[0].Status.ID)

	// A draft is deleted without a reason.
	var draft sagetest.SalesInvoice
	e.must(201, "POST", "/sales_invoices", obj{"sales_invoice": obj{"contact_id": cid, "date": "2025-03-01",
		"status_id": "DRAFT", "invoice_lines": []obj{e.line("A", "1", "10", "2")}}}).json(t, &draft)
	require.Equal(t, "DRAFT", draft.Status.ID)
	r = e.must(422, "POST", "/contact_payments", obj{"contact_payment": obj{
		"transaction_type_id": "CUSTOMER_RECEIPT", "contact_id": cid, "bank_account_id": e.biz.BankAccountID,
		"date": "2025-03-05", "total_amount": "12.00", "allocated_artefacts": []obj{{"artefact_id": draft.ID, "amount": "12.00"}},
	}})
	require.Equal(t, "You can only pay unpaid or part-paid invoices.", r.errors(t)[0].Message)
	var deleted sagetest.SalesInvoice
	e.must(200, "DELETE", "/sales_invoices/"+draft.ID, nil).json(t, &deleted)
	require.NotEmpty(t, deleted.DeletedAt)
	e.must(404, "GET", "/sales_invoices/"+draft.ID, nil)

	// Release turns a draft into an issued invoice.
	e.must(201, "POST", "/sales_invoices", obj{"sales_invoice": obj{"contact_id": cid, "date": "2025-03-01",
		"status_id": "DRAFT", "invoice_lines": []obj{e.line("A", "1", "10", "2")}}}).json(t, &draft)
	var released sagetest.SalesInvoice
	e.must(201, "POST", "/sales_invoices/"+draft.ID+"/release", nil).json(t, &released)
	require.Equal(t, "UNPAID", released.Status.ID)
}

// TestVATReturn: after FileVATReturn, an issued invoice dated within the return can be neither
// edited nor voided, one dated after it can, and payments to either still post.
func TestVATReturn(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "standard")
	cid := e.contact("Jane")
	filed := e.invoice(cid, e.line("Service", "1", "85", "17")) // dated 2025-03-01
	var later sagetest.SalesInvoice
	e.must(201, "POST", "/sales_invoices", obj{"sales_invoice": obj{"contact_id": cid, "date": "2025-04-02",
		"invoice_lines": []obj{e.line("Repair", "1", "50", "10")}}}).json(t, &later)
	require.Error(t, e.srv.FileVATReturn(e.biz.ID, "31/03/2025"), "a malformed date")
	require.Error(t, e.srv.FileVATReturn("no-such-business", "2025-03-31"))
	require.NoError(t, e.srv.FileVATReturn(e.biz.ID, "2025-03-31"))

	r := e.must(422, "PUT", "/sales_invoices/"+filed.ID, obj{"sales_invoice": obj{"notes": "x"}})
	require.Equal(t, "You cannot edit VAT reconciled transactions.", r.errors(t)[0].Message)
	r = e.must(422, "DELETE", "/sales_invoices/"+filed.ID+"?void_reason=Raised+in+error", nil)
	require.Equal(t, "You cannot edit VAT reconciled transactions.", r.errors(t)[0].Message)
	e.must(200, "PUT", "/sales_invoices/"+later.ID, obj{"sales_invoice": obj{"notes": "x"}})
	require.Equal(t, 201, e.receipt(cid, filed.ID, "102.00", "102.00").status)
	require.Equal(t, "PAID", e.getInvoice(filed.ID).Status.ID)
}

func TestPaymentsAndAllocations(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "standard")
	cid := e.contact("Jane")
	iv := e.invoice(cid, e.line("Service", "1", "85", "17")) // 102.00

	var p1 sagetest.ContactPayment
	e.receipt(cid, iv.ID, "50.00", "50.00").json(t, &p1)
	require.Equal(t, "CUSTOMER_RECEIPT", p1.TransactionType.ID)
	require.Equal(t, "BANK_TRANSFER", p1.PaymentMethod.ID, "the bank account's default method")
	require.Len(t, p1.AllocatedArtefacts, 1)
	require.Equal(t, iv.ID, p1.AllocatedArtefacts[0].Artefact.ID)

	got := e.getInvoice(iv.ID)
	require.Equal(t, "PART_PAID", got.Status.ID)
	requireMoney(t, "52.00", got.OutstandingAmount, "outstanding")
	requireMoney(t, "50.00", got.TotalPaid, "paid")
	require.Len(t, got.PaymentsAllocations, 1)
	require.Equal(t, p1.ID, got.PaymentsAllocations[0].ContactPayment.ID)

	// Allocated invoices cannot be edited or voided.
	r := e.must(422, "PUT", "/sales_invoices/"+iv.ID, obj{"sales_invoice": obj{"notes": "x"}})
	require.Equal(t, "You must unallocate credit notes or receipts before editing this invoice", r.errors(t)[0].Message)
	r = e.must(422, "DELETE", "/sales_invoices/"+iv.ID+"?void_reason=x", nil)
	require.Equal(t, "You must unallocate credit notes or receipts before editing this invoice", r.errors(t)[0].Message)

	// Over-allocation is refused.
	r = e.receipt(cid, iv.ID, "60.00", "60.00")
	require.Equal(t, 422, r.status, string(r.body))
	require.Equal(t, "The allocated amount cannot be greater than the outstanding amount", r.errors(t)[0].Message)
	require.Equal(t, "allocated_artefacts[0].amount", r.errors(t)[0].Source)
	// Allocations above the payment's total are refused.
	r = e.receipt(cid, iv.ID, "10.00", "20.00")
	require.Equal(t, 422, r.status)
	require.Equal(t, "total_amount", r.errors(t)[0].Source)

	// An overpayment leaves a payment on account (not on Start).
	var p2 sagetest.ContactPayment
	r = e.receipt(cid, iv.ID, "60.00", "52.00")
	require.Equal(t, 201, r.status, string(r.body))
	r.json(t, &p2)
	require.NotNil(t, p2.PaymentOnAccount)
	requireMoney(t, "8.00", p2.PaymentOnAccount.TotalAmount, "payment on account")
	got = e.getInvoice(iv.ID)
	require.Equal(t, "PAID", got.Status.ID)
	requireMoney(t, "0", got.OutstandingAmount, "outstanding")

	// Deleting a payment restores what it paid.
	e.must(204, "DELETE", "/contact_payments/"+p1.ID, nil)
	got = e.getInvoice(iv.ID)
	require.Equal(t, "PART_PAID", got.Status.ID)
	requireMoney(t, "50.00", got.OutstandingAmount, "outstanding after delete")

	// PUT with an empty allocation list unallocates the payment entirely.
	var p2u sagetest.ContactPayment
	e.must(200, "PUT", "/contact_payments/"+p2.ID, obj{"contact_payment": obj{"allocated_artefacts": []obj{}}}).json(t, &p2u)
	require.Empty(t, p2u.AllocatedArtefacts)
	requireMoney(t, "60.00", p2u.PaymentOnAccount.TotalAmount, "all on account")
	require.Equal(t, "UNPAID", e.getInvoice(iv.ID).Status.ID)

	// The invoice is editable again; then a contact allocation applies the payment on account.
	e.must(200, "PUT", "/sales_invoices/"+iv.ID, obj{"sales_invoice": obj{"reference": "JOB-7"}})
	var al sagetest.ContactAllocation
	e.must(201, "POST", "/contact_allocations", obj{"contact_allocation": obj{
		"transaction_type_id": "CUSTOMER_ALLOCATION", "contact_id": cid,
		"allocated_artefacts": []obj{{"artefact_id": iv.ID, "amount": 40}, {"artefact_id": p2u.PaymentOnAccount.ID, "amount": -40}},
	}}).json(t, &al)
	got = e.getInvoice(iv.ID)
	requireMoney(t, "62.00", got.OutstandingAmount, "after allocation")
	require.Equal(t, "CUSTOMER_ALLOCATION", got.PaymentsAllocations[0].Type)
	r = e.must(422, "POST", "/contact_allocations", obj{"contact_allocation": obj{
		"transaction_type_id": "CUSTOMER_ALLOCATION", "contact_id": cid,
		"allocated_artefacts": []obj{{"artefact_id": iv.ID, "amount": 30}, {"artefact_id": p2u.PaymentOnAccount.ID, "amount": -30}},
	}})
	require.Equal(t, "allocated_artefacts[1].amount", r.errors(t)[0].Source, "only 20.00 left on account")
	e.must(204, "DELETE", "/contact_allocations/"+al.ID, nil)
	requireMoney(t, "102.00", e.getInvoice(iv.ID).OutstandingAmount, "after undoing the allocation")

	// The dump shows it all.
	d := e.srv.Dump().Business(e.biz.ID)
	require.Len(t, d.ContactPayments, 1)
	require.Len(t, d.SalesInvoices, 1)
	requireMoney(t, "60.00", d.BankAccounts[0].Balance, "bank balance")
}

func TestStartTier(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "start")
	cid := e.contact("Jane")

	r := e.must(422, "POST", "/sales_invoices", obj{"sales_invoice": obj{"contact_id": cid, "date": "2025-03-01",
		"invoice_lines": []obj{e.line("Radiators", "2", "50", "20")}}})
	require.Equal(t, "invoice_lines[0].quantity", r.errors(t)[0].Source)
	iv := e.invoice(cid, e.line("Radiators", "1", "100", "20"))

	r = e.receipt(cid, iv.ID, "130.00", "120.00")
	require.Equal(t, 422, r.status)
	require.Equal(t, "total_amount", r.errors(t)[0].Source)
	r = e.do("POST", "/contact_payments", obj{"contact_payment": obj{
		"transaction_type_id": "CUSTOMER_RECEIPT", "contact_id": cid, "bank_account_id": e.biz.BankAccountID,
		"date": "2025-03-05", "total_amount": "10.00"}})
	require.Equal(t, 422, r.status, "an unallocated payment is a payment on account")
	require.Equal(t, 201, e.receipt(cid, iv.ID, "120.00", "120.00").status)

	r = e.must(422, "POST", "/contact_allocations", obj{"contact_allocation": obj{
		"transaction_type_id": "CUSTOMER_ALLOCATION", "contact_id": cid,
		"allocated_artefacts": []obj{{"artefact_id": iv.ID, "amount": 1}, {"artefact_id": iv.ID, "amount": -1}}}})
	require.Contains(t, r.errors(t)[0].Message, "Accounting Start")
}

func TestIdempotency(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "standard")
	body := obj{"contact": obj{"name": "Jane", "contact_type_ids": []string{"CUSTOMER"}, "idempotency_id": "c3a8adaa26daf36e02f3c672b69e3323"}}

	first := e.must(201, "POST", "/contacts", body)
	again := e.must(201, "POST", "/contacts", body)
	require.Equal(t, string(first.body), string(again.body))
	require.Len(t, e.srv.Dump().Businesses[0].Contacts, 1)

	changed := obj{"contact": obj{"name": "Janet", "contact_type_ids": []string{"CUSTOMER"}, "idempotency_id": "c3a8adaa26daf36e02f3c672b69e3323"}}
	r := e.must(422, "POST", "/contacts", changed)
	require.Equal(t, "idempotency_id", r.errors(t)[0].Source)

	e.clock.Advance(7*24*time.Hour + time.Second)
	e.remint()
	e.must(201, "POST", "/contacts", body)
	require.Len(t, e.srv.Dump().Businesses[0].Contacts, 2, "after 7 days the id is forgotten")

	// A refused create is not remembered: the corrected request goes through.
	bad := obj{"contact": obj{"contact_type_ids": []string{"CUSTOMER"}, "idempotency_id": "aa"}}
	e.must(422, "POST", "/contacts", bad)
	bad["contact"].(obj)["name"] = "Fixed"
	e.must(201, "POST", "/contacts", bad)
}

func TestCatalog(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "standard")
	var rates struct {
		Items []struct {
			ID         string           `json:"id"`
			Percentage sagetest.Decimal `json:"percentage"`
		} `json:"$items"`
	}
	e.must(200, "GET", "/tax_rates?attributes=all", nil).json(t, &rates)
	got := map[string]string{}
	for _, r := range rates.Items {
		got[r.ID] = r.Percentage.String()
	}
	require.Equal(t, map[string]string{"GB_STANDARD": "20", "GB_LOWER": "5", "GB_ZERO": "0", "GB_EXEMPT": "0", "GB_NO_TAX": "0"}, got)

	var ledgers struct {
		Items []struct {
			ID           string `json:"id"`
			Name         string `json:"name"`
			NominalCode  int    `json:"nominal_code"`
			CISLabour    bool   `json:"cis_labour"`
			CISMaterials bool   `json:"cis_materials"`
		} `json:"$items"`
	}
	e.must(200, "GET", "/ledger_accounts?attributes=all&items_per_page=200", nil).json(t, &ledgers)
	byCode := map[int]string{}
	var labour, materials bool
	for _, l := range ledgers.Items {
		require.Regexp(t, "^[0-9a-f]{32}$", l.ID)
		byCode[l.NominalCode] = l.Name
		labour, materials = labour || l.CISLabour, materials || l.CISMaterials
	}
	require.Equal(t, "Sales Type A", byCode[4000])
	require.Equal(t, "Current Account", byCode[1200])
	require.True(t, labour && materials)
	e.must(200, "GET", "/ledger_accounts?visible_in=sales", nil)

	var methods struct {
		Items []struct {
			ID string `json:"id"`
		} `json:"$items"`
	}
	e.must(200, "GET", "/payment_methods", nil).json(t, &methods)
	require.Len(t, methods.Items, 5)

	var ba sagetest.BankAccount
	e.must(201, "POST", "/bank_accounts", obj{"bank_account": obj{"bank_account_type_id": "CASH_IN_HAND",
		"bank_account_details": obj{"account_name": "Petty Cash"}}}).json(t, &ba)
	require.Equal(t, 1210, ba.NominalCode)
	require.Equal(t, "CASH", ba.DefaultPaymentMethod.ID)
	e.must(422, "POST", "/bank_accounts", obj{"bank_account": obj{"bank_account_type_id": "CHECKING", "nominal_code": 1200}})

	e.must(200, "GET", "/financial_settings", nil)
	e.must(501, "GET", "/products", nil)
	e.must(404, "GET", "/nonsense", nil)
}
