package daemon

import (
	"context"
	"fmt"
	"net/url"
	"sort"
	"strings"

	"github.com/shopspring/decimal"

	"github.com/gessync/gessync/cdc"
	"github.com/gessync/gessync/state"
	"github.com/gessync/gessync/transform"
)

// Difference is one way a company's Sage business differs from GES.
type Difference struct {
	// Kind is "missing" (in GES, not in Sage), "extra" (in Sage, not from GES), "amount",
	// "status" or "duplicate".
	Kind   string `json:"kind"`
	Table  string `json:"table"`
	GESID  int64  `json:"ges_id,omitempty"`
	SageID string `json:"sage_id,omitempty"`
	Detail string `json:"detail"`
}

func (d Difference) String() string {
	rec := d.Table
	if d.GESID != 0 {
		rec = fmt.Sprintf("%s/%d", d.Table, d.GESID)
	}
	return fmt.Sprintf("%-9s %-16s %s", d.Kind, rec, d.Detail)
}

// Reconcile compares company's GES records with its Sage business (GET /contacts,
// /sales_invoices and /contact_payments, all pages) through the id map: every customer, every
// issued or void invoice and every payment must be in Sage once, with GES's amounts and status,
// and Sage must hold no customer, invoice or receipt that gessync did not post (a record typed
// into Sage by hand shows as extra). A company whose changes are still queued or parked will
// show them as differences until they are sent.
func (d *Daemon) Reconcile(ctx context.Context, companyID int64) ([]Difference, error) {
	conn, err := d.Store.Connection(ctx, companyID)
	if err != nil {
		return nil, err
	}
	if conn.BusinessID == "" {
		return nil, fmt.Errorf("company %d is not connected to Sage", companyID)
	}
	s := d.session(conn)
	contacts, err := s.ListContacts(ctx, url.Values{"contact_type_id": {"CUSTOMER"}})
	if err != nil {
		return nil, err
	}
	invoices, err := s.ListSalesInvoices(ctx, nil)
	if err != nil {
		return nil, err
	}
	receipts, err := s.ListContactPayments(ctx, url.Values{"transaction_type_id": {"CUSTOMER_RECEIPT"}})
	if err != nil {
		return nil, err
	}
	var diffs []Difference
	sageContacts := map[string]bool{}
	for _, c := range contacts {
		sageContacts[c.ID] = true
	}
	type inv struct{ net, tax, total, status string }
	sageInvoices := map[string]inv{}
	numbers := map[string][]string{}
	for _, i := range invoices {
		st := ""
		if i.Status != nil {
			st = i.Status.ID
		}
		sageInvoices[i.ID] = inv{i.NetAmount.StringFixed(2), i.TaxAmount.StringFixed(2), i.TotalAmount.StringFixed(2), st}
		numbers[strings.ToLower(i.InvoiceNumber)] = append(numbers[strings.ToLower(i.InvoiceNumber)], i.ID)
	}
	for n, ids := range numbers {
		if len(ids) > 1 {
			diffs = append(diffs, Difference{Kind: "duplicate", Table: "invoices", Detail: fmt.Sprintf("Sage has %d invoices numbered %q: %s", len(ids), n, strings.Join(ids, ", "))})
		}
	}
	sageReceipts := map[string]decimal.Decimal{}
	for _, p := range receipts {
		sageReceipts[p.ID] = p.TotalAmount.Decimal
	}
	linked := map[string]bool{}

	each := func(table, where string, check func(row cdc.Row, id int64, m state.Mapping, mapped bool)) error {
		maps, err := d.Store.Mappings(ctx, companyID, table)
		if err != nil {
			return err
		}
		byID := map[int64]state.Mapping{}
		for _, m := range maps {
			if m.BusinessID == conn.BusinessID {
				byID[m.GESID] = m
				linked[m.SageID] = true
			}
		}
		after := int64(0)
		for {
			rows, err := d.Rows.Page(ctx, nil, table, companyID, after, 500, where)
			if err != nil {
				return err
			}
			if len(rows) == 0 {
				return nil
			}
			for _, row := range rows {
				id, _ := row.ID()
				m, ok := byID[id]
				check(row, id, m, ok)
				after = id
			}
		}
	}
	err = each("customers", "", func(row cdc.Row, id int64, m state.Mapping, mapped bool) {
		switch {
		case !mapped:
			diffs = append(diffs, Difference{Kind: "missing", Table: "customers", GESID: id, Detail: "no Sage contact"})
		case !sageContacts[m.SageID]:
			diffs = append(diffs, Difference{Kind: "missing", Table: "customers", GESID: id, SageID: m.SageID, Detail: "its Sage contact is gone"})
		}
	})
	if err != nil {
		return nil, err
	}
	err = each("invoices", "status IN ('issued', 'void')", func(row cdc.Row, id int64, m state.Mapping, mapped bool) {
		g, derr := transform.DecodeInvoice(row)
		if derr != nil {
			diffs = append(diffs, Difference{Kind: "missing", Table: "invoices", GESID: id, Detail: "cannot be read: " + derr.Error()})
			return
		}
		si, ok := sageInvoices[m.SageID]
		switch {
		case !mapped:
			diffs = append(diffs, Difference{Kind: "missing", Table: "invoices", GESID: id, Detail: fmt.Sprintf("%s is not in Sage", g.InvoiceNumber)})
		case !ok:
			diffs = append(diffs, Difference{Kind: "missing", Table: "invoices", GESID: id, SageID: m.SageID, Detail: fmt.Sprintf("%s: its Sage invoice is gone", g.InvoiceNumber)})
		case (g.Status == "void") != (si.status == "VOID"):
			diffs = append(diffs, Difference{Kind: "status", Table: "invoices", GESID: id, SageID: m.SageID, Detail: fmt.Sprintf("%s is %s in GES, %s in Sage", g.InvoiceNumber, g.Status, si.status)})
		case g.Status != "void" && (si.net != g.Subtotal.StringFixed(2) || si.tax != g.VATTotal.StringFixed(2) || si.total != g.Total.StringFixed(2)):
			// (A void invoice's lines are out of the books, and Sage will not edit them.)
			diffs = append(diffs, Difference{Kind: "amount", Table: "invoices", GESID: id, SageID: m.SageID,
				Detail: fmt.Sprintf("%s: GES net %s VAT %s total %s; Sage net %s VAT %s total %s", g.InvoiceNumber, g.Subtotal.StringFixed(2), g.VATTotal.StringFixed(2), g.Total.StringFixed(2), si.net, si.tax, si.total)})
		}
	})
	if err != nil {
		return nil, err
	}
	err = each("payments", "", func(row cdc.Row, id int64, m state.Mapping, mapped bool) {
		p, derr := transform.DecodePayment(row)
		if derr != nil {
			diffs = append(diffs, Difference{Kind: "missing", Table: "payments", GESID: id, Detail: "cannot be read: " + derr.Error()})
			return
		}
		amount, ok := sageReceipts[m.SageID]
		switch {
		case !mapped:
			diffs = append(diffs, Difference{Kind: "missing", Table: "payments", GESID: id, Detail: fmt.Sprintf("payment of £%s is not in Sage", p.Amount.StringFixed(2))})
		case !ok:
			diffs = append(diffs, Difference{Kind: "missing", Table: "payments", GESID: id, SageID: m.SageID, Detail: "its Sage receipt is gone"})
		case !amount.Equal(p.Amount) && !(conn.Settings.Sage.Tier == transform.TierStart && amount.LessThan(p.Amount)):
			diffs = append(diffs, Difference{Kind: "amount", Table: "payments", GESID: id, SageID: m.SageID, Detail: fmt.Sprintf("GES £%s, Sage £%s", p.Amount.StringFixed(2), amount.StringFixed(2))})
		}
	})
	if err != nil {
		return nil, err
	}
	for _, c := range contacts {
		if !linked[c.ID] {
			diffs = append(diffs, Difference{Kind: "extra", Table: "customers", SageID: c.ID, Detail: fmt.Sprintf("Sage contact %q is not a GES customer", c.Name)})
		}
	}
	for _, i := range invoices {
		if !linked[i.ID] {
			diffs = append(diffs, Difference{Kind: "extra", Table: "invoices", SageID: i.ID, Detail: fmt.Sprintf("Sage invoice %s is not a GES invoice", i.InvoiceNumber)})
		}
	}
	for _, p := range receipts {
		if !linked[p.ID] {
			diffs = append(diffs, Difference{Kind: "extra", Table: "payments", SageID: p.ID, Detail: fmt.Sprintf("Sage receipt of £%s (%s) is not a GES payment", p.TotalAmount.StringFixed(2), p.Reference)})
		}
	}
	sort.SliceStable(diffs, func(i, j int) bool { return diffs[i].Kind < diffs[j].Kind })
	return diffs, nil
}
