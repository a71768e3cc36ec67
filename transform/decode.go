package transform

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/shopspring/decimal"

	"github.com/gessync/gessync/cdc"
)

// ErrMissingColumn is wrapped by a ColumnError for a column that is not in the row at all: the
// publication or GES's schema lacks a column gessync needs. It does not go away by retrying.
var ErrMissingColumn = errors.New("column missing from row")

// ErrUnchangedColumn is wrapped by a ColumnError for a column pgoutput marked as an unchanged
// TOAST value ('u'): the value exists in GES but is not in the message. The caller must read the
// row again (a plain SELECT by id) and decode that instead; it must never treat the value as empty.
var ErrUnchangedColumn = errors.New("column is an unchanged TOAST value not sent by pgoutput")

// ColumnError says that a column the decoder needs is absent from a cdc.Row (wraps
// ErrMissingColumn) or marked Unchanged (wraps ErrUnchangedColumn). Test with errors.Is.
type ColumnError struct {
	Record    Record
	Column    string
	Unchanged bool
}

// Error names the record and the column.
func (e *ColumnError) Error() string {
	if e.Unchanged {
		return fmt.Sprintf("%s: column %s: unchanged TOAST value not in the change; read the row again", e.Record, e.Column)
	}
	return fmt.Sprintf("%s: column %s: missing from the row", e.Record, e.Column)
}

// Unwrap returns ErrUnchangedColumn or ErrMissingColumn.
func (e *ColumnError) Unwrap() error {
	if e.Unchanged {
		return ErrUnchangedColumn
	}
	return ErrMissingColumn
}

// Columns returns the columns the decoder of a GES table ("customers", "invoices",
// "payments") reads, in schema.sql's order; nil for another table. Every one must be in the
// publication with the type schema.sql gives it (cdc.RequiredColumns checks that at startup);
// any other column is ignored.
func Columns(table string) []string {
	return slices.Clone(columns[table])
}

var columns = map[string][]string{
	"customers": {
		"id", "company_id", "account_ref", "customer_type", "title", "first_name", "last_name",
		"company_name", "email", "phone", "mobile", "address_line1", "address_line2", "town",
		"county", "postcode", "country_code", "vat_number", "cis_registered", "cis_rate",
		"payment_terms_days", "notes", "archived", "updated_at",
	},
	"invoices": {
		"id", "company_id", "customer_id", "invoice_number", "status", "issue_date", "due_date",
		"job_reference", "site_address", "vat_reverse_charge", "line_items", "subtotal",
		"vat_total", "total", "cis_deduction", "notes", "void_reason", "updated_at",
	},
	"payments": {
		"id", "company_id", "invoice_id", "amount", "method", "paid_on", "reference", "updated_at",
	},
}

// Bounds on numbers read from GES, far beyond any real invoice but small enough that decimal
// arithmetic on hostile input stays cheap: at most 12 decimal places and magnitude below 10^15.
const (
	maxPlaces = 12
	maxDigits = 15
)

var maxMagnitude = decimal.New(1, maxDigits)

// rowReader reads typed columns from a cdc.Row and keeps the first error.
type rowReader struct {
	rec Record
	row cdc.Row
	err error
}

func newRowReader(table string, r cdc.Row) *rowReader {
	rd := &rowReader{rec: Record{Table: table}, row: r}
	if id, ok := r.ID(); ok {
		rd.rec.ID = id
	}
	return rd
}

// value returns the column's value; ok is false (and rd.err set) when it is missing or unchanged.
func (rd *rowReader) value(col string) (cdc.Value, bool) {
	if rd.err != nil {
		return cdc.Value{}, false
	}
	v, ok := rd.row[col]
	if !ok {
		rd.err = &ColumnError{Record: rd.rec, Column: col}
		return cdc.Value{}, false
	}
	if v.Unchanged {
		rd.err = &ColumnError{Record: rd.rec, Column: col, Unchanged: true}
		return cdc.Value{}, false
	}
	return v, true
}

func (rd *rowReader) invalid(col, reason string) {
	if rd.err == nil {
		rd.err = &InvalidError{
			Record: rd.rec, Field: col, Reason: reason,
			Action: "Check this record in GES; if it looks right there, report it to GES support",
		}
	}
}

// notNull returns the text of a NOT NULL column.
func (rd *rowReader) notNull(col string) (string, bool) {
	v, ok := rd.value(col)
	if !ok {
		return "", false
	}
	if v.Null {
		rd.invalid(col, "is empty (NULL) but GES always sets it")
		return "", false
	}
	return v.Text, true
}

// text reads a text column; NULL gives "".
func (rd *rowReader) text(col string) string {
	v, ok := rd.value(col)
	if !ok || v.Null {
		return ""
	}
	return v.Text
}

func (rd *rowReader) int64(col string) int64 {
	s, ok := rd.notNull(col)
	if !ok {
		return 0
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		rd.invalid(col, fmt.Sprintf("%q is not a whole number", clip(s)))
		return 0
	}
	return n
}

func (rd *rowReader) int(col string) int {
	s, ok := rd.notNull(col)
	if !ok {
		return 0
	}
	n, err := strconv.ParseInt(s, 10, 32)
	if err != nil {
		rd.invalid(col, fmt.Sprintf("%q is not a whole number", clip(s)))
		return 0
	}
	return int(n)
}

func (rd *rowReader) bool(col string) bool {
	s, ok := rd.notNull(col)
	if !ok {
		return false
	}
	switch s {
	case "t", "true":
		return true
	case "f", "false":
		return false
	}
	rd.invalid(col, fmt.Sprintf("%q is not a boolean (t or f)", clip(s)))
	return false
}

func (rd *rowReader) numeric(col string) decimal.Decimal {
	s, ok := rd.notNull(col)
	if !ok {
		return decimal.Zero
	}
	d, err := parseDecimal(s)
	if err != nil {
		rd.invalid(col, err.Error())
		return decimal.Zero
	}
	return d
}

func (rd *rowReader) numericOrNull(col string) *decimal.Decimal {
	v, ok := rd.value(col)
	if !ok || v.Null {
		return nil
	}
	d, err := parseDecimal(v.Text)
	if err != nil {
		rd.invalid(col, err.Error())
		return nil
	}
	return &d
}

func (rd *rowReader) date(col string) time.Time {
	s, ok := rd.notNull(col)
	if !ok {
		return time.Time{}
	}
	t, err := parseDate(s)
	if err != nil {
		rd.invalid(col, err.Error())
	}
	return t
}

func (rd *rowReader) dateOrNull(col string) *time.Time {
	v, ok := rd.value(col)
	if !ok || v.Null {
		return nil
	}
	t, err := parseDate(v.Text)
	if err != nil {
		rd.invalid(col, err.Error())
		return nil
	}
	return &t
}

func (rd *rowReader) timestamptz(col string) time.Time {
	s, ok := rd.notNull(col)
	if !ok {
		return time.Time{}
	}
	t, err := ParseTimestamptz(s)
	if err != nil {
		rd.invalid(col, err.Error())
	}
	return t
}

// parseDecimal reads a PostgreSQL numeric (or a JSON number) exactly. NaN, infinities, more than
// maxPlaces decimal places and magnitudes of 10^15 or more are refused.
func parseDecimal(s string) (decimal.Decimal, error) {
	if len(s) > 64 {
		return decimal.Zero, fmt.Errorf("%q is not a number GES would store", clip(s))
	}
	d, err := decimal.NewFromString(s)
	if err != nil {
		return decimal.Zero, fmt.Errorf("%q is not a number", clip(s))
	}
	if d.Exponent() < -maxPlaces*4 || d.Exponent() > maxDigits {
		return decimal.Zero, fmt.Errorf("%q is not a number GES would store", clip(s))
	}
	if d.Abs().Cmp(maxMagnitude) >= 0 || !d.Equal(d.Truncate(maxPlaces)) {
		return decimal.Zero, fmt.Errorf("%q is out of range (at most %d digits before and %d after the point)", clip(s), maxDigits, maxPlaces)
	}
	return d, nil
}

// parseDate reads a PostgreSQL date in ISO style ("2026-11-29") as UTC midnight.
func parseDate(s string) (time.Time, error) {
	t, err := time.ParseInLocation(time.DateOnly, s, time.UTC)
	if err != nil {
		return time.Time{}, fmt.Errorf("%q is not a date (YYYY-MM-DD)", clip(s))
	}
	return t, nil
}

// ParseTimestamptz reads a PostgreSQL timestamptz in ISO DateStyle, as pgoutput sends it
// ("2026-11-29 13:56:32.123456+00", "2026-11-29 14:56:32+01", "1900-01-01 00:00:00-00:01:15"),
// and returns it in UTC. "infinity", "-infinity" and BC dates are errors.
func ParseTimestamptz(s string) (time.Time, error) {
	for _, layout := range [...]string{
		"2006-01-02 15:04:05.999999999Z07",
		"2006-01-02 15:04:05.999999999Z07:00",
		"2006-01-02 15:04:05.999999999Z07:00:00",
		"2006-01-02T15:04:05.999999999Z07:00",
	} {
		if t, err := time.Parse(layout, s); err == nil {
			return t.UTC(), nil
		}
	}
	return time.Time{}, fmt.Errorf("%q is not a timestamp with time zone", clip(s))
}

// DecodeCustomer decodes a customers row (schema.sql) from pgoutput's text format. Nullable text
// columns give "" for NULL. A needed column that is missing or an unchanged TOAST value (notes,
// typically) gives a *ColumnError; a malformed value gives an *InvalidError whose Field is the
// column. Columns not listed by Columns("customers") are ignored.
func DecodeCustomer(r cdc.Row) (Customer, error) {
	rd := newRowReader("customers", r)
	c := Customer{
		ID:               rd.int64("id"),
		CompanyID:        rd.int64("company_id"),
		AccountRef:       rd.text("account_ref"),
		CustomerType:     rd.text("customer_type"),
		Title:            rd.text("title"),
		FirstName:        rd.text("first_name"),
		LastName:         rd.text("last_name"),
		CompanyName:      rd.text("company_name"),
		Email:            rd.text("email"),
		Phone:            rd.text("phone"),
		Mobile:           rd.text("mobile"),
		AddressLine1:     rd.text("address_line1"),
		AddressLine2:     rd.text("address_line2"),
		Town:             rd.text("town"),
		County:           rd.text("county"),
		Postcode:         rd.text("postcode"),
		CountryCode:      strings.TrimSpace(rd.text("country_code")), // char(2) is blank-padded
		VATNumber:        rd.text("vat_number"),
		CISRegistered:    rd.bool("cis_registered"),
		CISRate:          rd.numericOrNull("cis_rate"),
		PaymentTermsDays: rd.int("payment_terms_days"),
		Notes:            rd.text("notes"),
		Archived:         rd.bool("archived"),
		UpdatedAt:        rd.timestamptz("updated_at"),
	}
	if rd.err != nil {
		return Customer{}, rd.err
	}
	return c, nil
}

// DecodeInvoice decodes an invoices row (schema.sql) from pgoutput's text format, including the
// line_items jsonb (see DecodeLineItems). Errors are as for DecodeCustomer; line_items is the
// column most often sent as an unchanged TOAST value.
func DecodeInvoice(r cdc.Row) (Invoice, error) {
	rd := newRowReader("invoices", r)
	inv := Invoice{
		ID:               rd.int64("id"),
		CompanyID:        rd.int64("company_id"),
		CustomerID:       rd.int64("customer_id"),
		InvoiceNumber:    rd.text("invoice_number"),
		Status:           rd.text("status"),
		IssueDate:        rd.dateOrNull("issue_date"),
		DueDate:          rd.dateOrNull("due_date"),
		JobReference:     rd.text("job_reference"),
		SiteAddress:      rd.text("site_address"),
		VATReverseCharge: rd.bool("vat_reverse_charge"),
		Subtotal:         rd.numeric("subtotal"),
		VATTotal:         rd.numeric("vat_total"),
		Total:            rd.numeric("total"),
		CISDeduction:     rd.numeric("cis_deduction"),
		Notes:            rd.text("notes"),
		VoidReason:       rd.text("void_reason"),
		UpdatedAt:        rd.timestamptz("updated_at"),
	}
	if s, ok := rd.notNull("line_items"); ok {
		lines, err := DecodeLineItems(s)
		if err != nil {
			rd.invalid("line_items", err.Error())
		}
		inv.Lines = lines
	}
	if rd.err != nil {
		return Invoice{}, rd.err
	}
	return inv, nil
}

// DecodePayment decodes a payments row (schema.sql) from pgoutput's text format. Errors are as
// for DecodeCustomer.
func DecodePayment(r cdc.Row) (Payment, error) {
	rd := newRowReader("payments", r)
	p := Payment{
		ID:        rd.int64("id"),
		CompanyID: rd.int64("company_id"),
		InvoiceID: rd.int64("invoice_id"),
		Amount:    rd.numeric("amount"),
		Method:    rd.text("method"),
		PaidOn:    rd.date("paid_on"),
		Reference: rd.text("reference"),
		UpdatedAt: rd.timestamptz("updated_at"),
	}
	if rd.err != nil {
		return Payment{}, rd.err
	}
	return p, nil
}

// rawLine is one element of line_items before its values are checked.
type rawLine struct {
	Description json.RawMessage `json:"description"`
	Quantity    json.RawMessage `json:"quantity"`
	UnitPrice   json.RawMessage `json:"unit_price"`
	Discount    json.RawMessage `json:"discount"`
	VATRate     json.RawMessage `json:"vat_rate"`
	Kind        json.RawMessage `json:"kind"`
}

// DecodeLineItems decodes invoices.line_items (a JSON array, schema.sql) into Lines, in order.
// Numbers are read exactly (json.Decoder.UseNumber into decimal, never float64); a number written
// as a JSON string ("85.00") is accepted too. Defaults: description "" when absent or null
// (PlanInvoice refuses it), discount 0, kind "other", vat_rate absent or null → nil (outside the
// scope of VAT). quantity and unit_price are required. Errors name the line, counting from 1.
func DecodeLineItems(s string) ([]Line, error) {
	dec := json.NewDecoder(strings.NewReader(s))
	dec.UseNumber()
	var raws []rawLine
	if err := dec.Decode(&raws); err != nil {
		return nil, fmt.Errorf("is not a JSON array of line objects: %s", plainJSONError(err))
	}
	if dec.More() {
		return nil, errors.New("has data after the JSON array")
	}
	if raws == nil {
		return nil, errors.New("is null instead of a JSON array")
	}
	lines := make([]Line, 0, len(raws))
	for i, raw := range raws {
		l, err := decodeLine(raw)
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", i+1, err)
		}
		lines = append(lines, l)
	}
	return lines, nil
}

func decodeLine(raw rawLine) (Line, error) {
	var l Line
	var err error
	if l.Description, err = jsonString(raw.Description, "description"); err != nil {
		return Line{}, err
	}
	kind, err := jsonString(raw.Kind, "kind")
	if err != nil {
		return Line{}, err
	}
	l.Kind = strings.ToLower(strings.TrimSpace(kind))
	if l.Kind == "" {
		l.Kind = "other"
	}
	q, err := jsonNumber(raw.Quantity, "quantity")
	if err != nil {
		return Line{}, err
	}
	if q == nil {
		return Line{}, errors.New("quantity is missing")
	}
	l.Quantity = *q
	p, err := jsonNumber(raw.UnitPrice, "unit_price")
	if err != nil {
		return Line{}, err
	}
	if p == nil {
		return Line{}, errors.New("unit_price is missing")
	}
	l.UnitPrice = *p
	d, err := jsonNumber(raw.Discount, "discount")
	if err != nil {
		return Line{}, err
	}
	if d != nil {
		l.Discount = *d
	}
	if l.VATRate, err = jsonNumber(raw.VATRate, "vat_rate"); err != nil {
		return Line{}, err
	}
	return l, nil
}

func isNull(raw json.RawMessage) bool {
	t := bytes.TrimSpace(raw)
	return len(t) == 0 || bytes.Equal(t, []byte("null"))
}

// jsonString reads a JSON string; absent or null gives "".
func jsonString(raw json.RawMessage, name string) (string, error) {
	if isNull(raw) {
		return "", nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return "", fmt.Errorf("%s is not text", name)
	}
	return s, nil
}

// jsonNumber reads a JSON number (or a string holding one) exactly; absent or null gives nil.
// raw is one JSON value, as json.Unmarshal leaves a RawMessage field; a number's text goes to
// parseDecimal as written, never through float64.
func jsonNumber(raw json.RawMessage, name string) (*decimal.Decimal, error) {
	if isNull(raw) {
		return nil, nil
	}
	raw = bytes.TrimSpace(raw)
	var s string
	switch c := raw[0]; {
	case c == '"':
		if err := json.Unmarshal(raw, &s); err != nil {
			return nil, fmt.Errorf("%s is not a number", name)
		}
		s = strings.TrimSpace(s)
	case c == '-' || ('0' <= c && c <= '9'):
		s = string(raw)
	default:
		return nil, fmt.Errorf("%s is not a number", name)
	}
	d, err := parseDecimal(s)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return &d, nil
}

// plainJSONError shortens encoding/json's messages for the sync log.
func plainJSONError(err error) string {
	if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
		return "malformed JSON (it ends too early)"
	}
	var se *json.SyntaxError
	if errors.As(err, &se) {
		return fmt.Sprintf("malformed JSON at byte %d", se.Offset)
	}
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		return fmt.Sprintf("a %s where a %s was expected", te.Value, te.Type.Kind())
	}
	return err.Error()
}

// clip shortens s for an error message.
func clip(s string) string {
	const max = 40
	if r := []rune(s); len(r) > max {
		return string(r[:max]) + "…"
	}
	return s
}
