// Package ges holds the contract with GES: its table definitions (schema.sql, copied from
// ../shared/ges/schema.sql), used by the tests and the demo to build a GES database, and a
// small realistic sample of UK gas-engineer customers, invoices and payments.
package ges

import _ "embed"

// Schema is GES's schema.sql: companies, customers, invoices, payments.
//
//go:embed schema.sql
var Schema string

// Sample is sample.sql: two fictional UK gas engineers with customers, invoices (issued and draft)
// and payments, for the demo.
//
//go:embed sample.sql
var Sample string
