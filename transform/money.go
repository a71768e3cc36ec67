package transform

import (
	"math/big"
	"strings"

	"github.com/shopspring/decimal"
)

var hundred = decimal.NewFromInt(100)

// RoundHalfUp rounds d to places decimal places, halves away from zero: the rounding of
// PostgreSQL's round(numeric, int), which GES uses (schema.sql: "VAT rounded per line, half up,
// 2 dp"). RoundHalfUp(2.345, 2) = 2.35 and RoundHalfUp(-2.345, 2) = -2.35.
func RoundHalfUp(d decimal.Decimal, places int32) decimal.Decimal {
	return d.Round(places)
}

// LineNet is a line's net amount in GBP by schema.sql's formula:
// round(quantity × unit_price − discount, 2).
func LineNet(l Line) decimal.Decimal {
	return RoundHalfUp(l.Quantity.Mul(l.UnitPrice).Sub(l.Discount), 2)
}

// LineVAT is a line's VAT in GBP by schema.sql's formula: round(LineNet × vat_rate / 100, 2),
// half up. It is 0 when vat_rate is null (outside the scope of VAT) and when reverseCharge is
// true (domestic reverse charge: the customer accounts for the VAT).
func LineVAT(l Line, reverseCharge bool) decimal.Decimal {
	if reverseCharge || l.VATRate == nil {
		return decimal.Zero
	}
	return RoundHalfUp(LineNet(l).Mul(*l.VATRate).Div(hundred), 2)
}

// Totals are an invoice's subtotal, VAT total and total in GBP by schema.sql's formula:
// net = Σ LineNet, vat = Σ LineVAT (0 under the reverse charge), total = net + vat. These are
// the figures gessync sends to Sage; GES's stored subtotal, vat_total and total are compared
// with them and reported when they differ, never trusted.
func Totals(inv Invoice) (net, vat, total decimal.Decimal) {
	net, vat = decimal.Zero, decimal.Zero
	for _, l := range inv.Lines {
		net = net.Add(LineNet(l))
		vat = vat.Add(LineVAT(l, inv.VATReverseCharge))
	}
	return net, vat, net.Add(vat)
}

// CISApplies reports whether an invoice to cust carries a CIS deduction: cust is CIS registered
// with a known rate and at least one line is labour.
func CISApplies(inv Invoice, cust Customer) bool {
	if !cust.CISRegistered || cust.CISRate == nil {
		return false
	}
	for _, l := range inv.Lines {
		if l.Kind == LineLabour {
			return true
		}
	}
	return false
}

// CISDeduction is the CIS the customer withholds, in GBP, by schema.sql's formula:
// round(Σ LineNet of labour lines × cis_rate / 100, 2) when CISApplies, else 0. labour is the
// sum of the labour lines' nets (Sage's cis_applicable_amount), 0 when CIS does not apply.
func CISDeduction(inv Invoice, cust Customer) (labour, deduction decimal.Decimal) {
	if !CISApplies(inv, cust) {
		return decimal.Zero, decimal.Zero
	}
	labour = decimal.Zero
	for _, l := range inv.Lines {
		if l.Kind == LineLabour {
			labour = labour.Add(LineNet(l))
		}
	}
	return labour, RoundHalfUp(labour.Mul(*cust.CISRate).Div(hundred), 2)
}

// Line kinds of invoices.line_items (schema.sql); they decide CIS treatment.
const (
	// LineLabour is work; a CIS contractor deducts CIS from it.
	LineLabour = "labour"
	// LineMaterials is parts and materials; no CIS is deducted from it.
	LineMaterials = "materials"
	// LineOther is anything else (the default); it posts to the ordinary sales ledger.
	LineOther = "other"
)

// RateKey is the Settings.TaxRates key of a GES vat_rate: the rate in canonical decimal form
// without trailing zeros ("20", "5", "0", "17.5"), or "" for nil (outside the scope of VAT). It
// does not depend on shopspring/decimal's package-level formatting switches.
func RateKey(rate *decimal.Decimal) string {
	if rate == nil {
		return ""
	}
	return canonical(*rate)
}

// canonical writes d in plain notation without trailing zeros.
func canonical(d decimal.Decimal) string {
	coef := new(big.Int).Set(d.Coefficient())
	exp := d.Exponent()
	ten := big.NewInt(10)
	var m big.Int
	for exp < 0 && coef.Sign() != 0 {
		var q big.Int
		q.QuoRem(coef, ten, &m)
		if m.Sign() != 0 {
			break
		}
		coef.Set(&q)
		exp++
	}
	if coef.Sign() == 0 {
		return "0"
	}
	places := int32(0)
	if exp < 0 {
		places = -exp
	}
	return decimal.NewFromBigInt(coef, exp).StringFixed(places)
}

// Money formats a GBP amount for people: "£12.50", "-£3.00".
func Money(d decimal.Decimal) string {
	s := RoundHalfUp(d, 2).StringFixed(2)
	if strings.HasPrefix(s, "-") {
		return "-£" + s[1:]
	}
	return "£" + s
}
