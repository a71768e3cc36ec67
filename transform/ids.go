package transform

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"strconv"

	"github.com/gessync/gessync/sink/sage"
)

// IdempotencyID is the idempotency_id gessync puts inside every create body (Sage v3.1,
// NOTES.md §8: a 32-character hyphenless id; a repeat within 7 days returns the first result).
// It is the first 16 bytes of SHA-256("gessync/v1/" + businessID + "/" + table + "/" + id) in
// lowercase hex, so a retried create of the same GES record in the same business is the same
// request, whichever process or restart sends it.
func IdempotencyID(businessID string, rec Record) string {
	sum := sha256.Sum256([]byte("gessync/v1/" + businessID + "/" + rec.Table + "/" + strconv.FormatInt(rec.ID, 10)))
	return hex.EncodeToString(sum[:16])
}

// IdempotencyIDReplacing is IdempotencyID for a create of rec that replaces replaces, a Sage
// record of it that is gone (deleted in Sage): the same shape, from "…/replacing/" + replaces,
// so it differs from the first create's, which Sage keeps for 7 days.
func IdempotencyIDReplacing(businessID string, rec Record, replaces string) string {
	sum := sha256.Sum256([]byte("gessync/v1/" + businessID + "/" + rec.Table + "/" + strconv.FormatInt(rec.ID, 10) + "/replacing/" + replaces))
	return hex.EncodeToString(sum[:16])
}

// hashJSON is the SHA-256 hex of v's JSON encoding (deterministic: struct fields in order).
func hashJSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		// The request types hold only strings, bools, ints and decimals: Marshal cannot fail.
		panic("transform: hashing request: " + err.Error())
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// hashContact hashes what a contact body says, leaving out the create-only fields
// (idempotency_id, contact_type_ids), so that a create and a later update with the same content
// have the same Hash.
func hashContact(c sage.ContactRequest) string {
	c.IdempotencyID = ""
	c.ContactTypeIDs = nil
	return hashJSON(struct {
		Contact sage.ContactRequest `json:"contact"`
	}{c})
}

// hashSalesInvoice hashes a sales invoice body without its idempotency_id.
func hashSalesInvoice(s sage.SalesInvoiceRequest) string {
	s.IdempotencyID = ""
	return hashJSON(struct {
		SalesInvoice sage.SalesInvoiceRequest `json:"sales_invoice"`
	}{s})
}

// hashContactPayment hashes a contact payment body without its idempotency_id.
func hashContactPayment(p sage.ContactPaymentRequest) string {
	p.IdempotencyID = ""
	return hashJSON(struct {
		ContactPayment sage.ContactPaymentRequest `json:"contact_payment"`
	}{p})
}

// hashRemoval hashes a void or delete: its kind, the Sage id and the void reason.
func hashRemoval(k Kind, sageID, voidReason string) string {
	return hashJSON(struct {
		Kind       string `json:"kind"`
		SageID     string `json:"sage_id"`
		VoidReason string `json:"void_reason,omitempty"`
	}{k.String(), sageID, voidReason})
}
