package pipeline

import (
	"net/http"
	"testing"

	"github.com/stretchr/testify/assert"

	"github.com/gessync/gessync/sink/sage"
)

// TestExplain turns each refusal Sage is known to give (NOTES.md, the documented fixtures, the
// sandbox's texts) into its plain-words message and action for the sync log, and anything else
// into the generic pair, never an empty one.
func TestExplain(t *testing.T) {
	t.Parallel()
	refusal := func(status int, code, msg, source string) *sage.APIError {
		return &sage.APIError{StatusCode: status, Method: http.MethodPut, Path: "/sales_invoices/abc",
			Items: []sage.ErrorItem{{Severity: "error", DataCode: code, Message: msg, Source: source}}}
	}
	for _, tc := range []struct {
		name, table         string
		err                 *sage.APIError
		message, actionPart string
	}{
		{"ok - number taken", "invoices", refusal(422, "RecordInvalid", "Artefact number must be unique", "invoice_number"),
			"Sage already has an invoice with this number.", "Resync"},
		{"ok - on a submitted VAT return", "invoices", refusal(422, "RecordInvalid", "You cannot edit VAT reconciled transactions.", ""),
			"Sage will not change this invoice: it is on a submitted VAT return.", "credit note"},
		{"ok - payments allocated", "invoices", refusal(422, "RecordInvalid", "You must unallocate credit notes or receipts before editing this invoice", ""),
			"Sage will not change this invoice while payments are allocated to it.", "remove the payment allocation"},
		{"ok - a required field", "invoices", refusal(422, "RecordInvalid", "This field is required.", "line_items.tax_rate_id"),
			`Sage needs a value for "line_items.tax_rate_id" on this invoice.`, "in GES"},
		{"ok - more than is outstanding", "payments", refusal(422, "RecordInvalid", "The allocated amount cannot be greater than the outstanding amount", "allocated_artefacts"),
			"This payment is more than is left to pay on the invoice.", "payment on account"},
		{"ok - subscription lapsed", "customers", refusal(401, "AuthorizationFailure", "No active subscription. (MSE)", ""),
			"Sage no longer accepts this company's connection (expired consent or subscription).", "Reconnect"},
		{"ok - user may not", "customers", refusal(403, "MultiUserAccessDenied", "The current user is not allowed to access that resource with that method.", ""),
			"The Sage user who connected this company may not change this kind of record.", "full access"},
		{"ok - gone from Sage", "payments", refusal(404, "RecordNotFound", "Record not found", ""),
			"This payment no longer exists in Sage.", "Resync"},
		{"ok - other invalid", "customers", refusal(422, "RecordInvalid", "Reference must be unique", "reference"),
			"Sage refused this customer as invalid.", "Sage's words below"},
		{"ok - anything else", "invoices", &sage.APIError{StatusCode: 409, Body: "<html>conflict</html>"},
			"Sage refused this invoice.", "Retry"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			msg, action := Explain(tc.err, tc.table)
			assert.Equal(t, tc.message, msg)
			assert.Contains(t, action, tc.actionPart)
		})
	}
}
