package transform

import (
	"encoding/json"
	"fmt"
	"math/big"
	"math/rand/v2"
	"testing"

	"github.com/shopspring/decimal"
	"github.com/stretchr/testify/require"

	"github.com/gessync/gessync/sink/sage"
)

// This file checks, for many random invoices, that what PlanInvoice sends to Sage equals GES's
// totals formula (schema.sql) to the penny. The formula is computed here a second time with
// math/big rationals, independently of money.go.

// ratOf converts a decimal exactly.
func ratOf(v decimal.Decimal) *big.Rat {
	r, ok := new(big.Rat).SetString(v.String())
	if !ok {
		panic("ratOf " + v.String())
	}
	return r
}

// gesRound2 is PostgreSQL's round(x, 2): halves away from zero.
func gesRound2(x *big.Rat) *big.Rat {
	scaled := new(big.Rat).Mul(x, big.NewRat(100, 1))
	abs := new(big.Rat).Abs(scaled)
	abs.Add(abs, big.NewRat(1, 2))
	n := new(big.Int).Quo(abs.Num(), abs.Denom()) // floor for non-negative
	if scaled.Sign() < 0 {
		n.Neg(n)
	}
	return new(big.Rat).SetFrac(n, big.NewInt(100))
}

type gesFigures struct {
	nets, vats                    []*big.Rat
	subtotal, vatTotal, total     *big.Rat
	labour, cisDeduction          *big.Rat
	cisApplies                    bool
	linesLabour, linesOtherLedger []bool
}

// gesFormula is schema.sql's comment, line by line.
func gesFormula(inv Invoice, cust Customer) gesFigures {
	g := gesFigures{subtotal: new(big.Rat), vatTotal: new(big.Rat), labour: new(big.Rat), cisDeduction: new(big.Rat)}
	hasLabour := false
	for _, l := range inv.Lines {
		// line net = round(quantity * unit_price - discount, 2)
		net := gesRound2(new(big.Rat).Sub(new(big.Rat).Mul(ratOf(l.Quantity), ratOf(l.UnitPrice)), ratOf(l.Discount)))
		// line VAT = round(line net * vat_rate / 100, 2); 0 under the reverse charge
		vat := new(big.Rat)
		if l.VATRate != nil && !inv.VATReverseCharge {
			vat = gesRound2(new(big.Rat).Quo(new(big.Rat).Mul(net, ratOf(*l.VATRate)), big.NewRat(100, 1)))
		}
		g.nets = append(g.nets, net)
		g.vats = append(g.vats, vat)
		g.subtotal.Add(g.subtotal, net)
		g.vatTotal.Add(g.vatTotal, vat)
		if l.Kind == "labour" {
			hasLabour = true
			g.labour.Add(g.labour, net)
		}
	}
	g.total = new(big.Rat).Add(g.subtotal, g.vatTotal)
	g.cisApplies = cust.CISRegistered && cust.CISRate != nil && hasLabour
	if g.cisApplies {
		g.cisDeduction = gesRound2(new(big.Rat).Quo(new(big.Rat).Mul(g.labour, ratOf(*cust.CISRate)), big.NewRat(100, 1)))
	} else {
		g.labour = new(big.Rat)
	}
	return g
}

// decOfRat converts a rational with a finite 2 dp expansion to a decimal.
func decOfRat(r *big.Rat) decimal.Decimal {
	return decimal.RequireFromString(r.FloatString(2))
}

// randDecimal is n/10^places for a random n in [lo, hi].
func randDecimal(rng *rand.Rand, lo, hi int64, places int32) decimal.Decimal {
	return decimal.New(lo+rng.Int64N(hi-lo+1), -places)
}

func randomInvoice(rng *rand.Rand) (Invoice, Customer, Settings) {
	inv := testInvoice()
	inv.Lines = nil
	n := 1 + rng.IntN(8)
	for i := 0; i < n; i++ {
		l := Line{Description: fmt.Sprintf("Item %d", i+1), Kind: []string{"labour", "materials", "other"}[rng.IntN(3)]}
		// Quantities up to 3 dp, > 0.
		l.Quantity = randDecimal(rng, 1, 20000, int32(rng.IntN(4)))
		// Prices mostly 2 dp, sometimes 0, 3 or 4 dp; a few negative (credit lines).
		places := []int32{2, 2, 2, 0, 3, 4}[rng.IntN(6)]
		l.UnitPrice = randDecimal(rng, 0, 500000, places)
		if rng.IntN(20) == 0 {
			l.UnitPrice = l.UnitPrice.Neg()
		}
		l.Discount = decimal.Zero
		if rng.IntN(3) == 0 {
			l.Discount = randDecimal(rng, 0, 5000, 2)
		}
		switch rng.IntN(7) {
		case 0, 1, 2:
			l.VATRate = dp([]string{"20", "20.00", "20.0"}[rng.IntN(3)])
		case 3:
			l.VATRate = dp([]string{"5", "5.00"}[rng.IntN(2)])
		case 4, 5:
			l.VATRate = dp([]string{"0", "0.00"}[rng.IntN(2)])
		case 6:
			l.VATRate = nil
		}
		inv.Lines = append(inv.Lines, l)
	}
	inv.VATReverseCharge = rng.IntN(5) == 0

	cust := testCustomer()
	if rng.IntN(3) == 0 {
		cust.CISRegistered = true
		cust.CISRate = dp([]string{"0", "20", "30", "20.00"}[rng.IntN(4)])
		if rng.IntN(10) == 0 {
			cust.CISRate = nil
		}
	}
	s := testSettings()
	s.Tier = []Tier{TierStart, TierStandard, TierPlus}[rng.IntN(3)]

	// GES stores its own figures by the formula.
	g := gesFormula(inv, cust)
	inv.Subtotal, inv.VATTotal, inv.Total = decOfRat(g.subtotal), decOfRat(g.vatTotal), decOfRat(g.total)
	inv.CISDeduction = decOfRat(g.cisDeduction)
	return inv, cust, s
}

func requireRat(t *testing.T, want *big.Rat, got *sage.Decimal, what string, args ...any) {
	t.Helper()
	require.NotNil(t, got, what, args)
	require.Zero(t, want.Cmp(ratOf(got.Decimal)), "%s: got %s, want %s %v", what, got.Decimal, want.FloatString(4), args)
}

func TestPropertyInvoiceTotalsMatchGES(t *testing.T) {
	t.Parallel()
	rng := rand.New(rand.NewPCG(20261129, 1042))
	for iter := 0; iter < 5000; iter++ {
		inv, cust, s := randomInvoice(rng)
		ops, err := PlanInvoice(inv, cust, s, invoiceKnown())
		require.NoError(t, err, "iteration %d", iter)
		require.Len(t, ops, 1)
		op := ops[0]
		// GES's figures follow its formula, so there is nothing to report, apart from a CIS
		// customer without a rate.
		notes := op.Notes
		if cust.CISRegistered && cust.CISRate == nil && hasKind(inv, LineLabour) {
			require.Len(t, notes, 1)
			require.Contains(t, notes[0], "no CIS rate")
			notes = nil
		}
		require.Empty(t, notes, "iteration %d", iter)
		body := op.SalesInvoice

		// Through JSON and back: what Sage reads is what was computed.
		b, err := json.Marshal(body)
		require.NoError(t, err)
		var back sage.SalesInvoiceRequest
		require.NoError(t, json.Unmarshal(b, &back))

		g := gesFormula(inv, cust)
		require.Len(t, back.InvoiceLines, len(inv.Lines))
		sumNet, sumTax, sumTotal := new(big.Rat), new(big.Rat), new(big.Rat)
		for i, l := range back.InvoiceLines {
			src := inv.Lines[i]
			requireRat(t, g.nets[i], l.NetAmount, "line net", iter, i)
			requireRat(t, g.vats[i], l.TaxAmount, "line VAT", iter, i)
			requireRat(t, new(big.Rat).Add(g.nets[i], g.vats[i]), l.TotalAmount, "line total", iter, i)
			if inv.VATReverseCharge {
				require.True(t, l.TaxAmount.IsZero())
			}
			require.Equal(t, s.TaxRates[RateKey(src.VATRate)], l.TaxRateID)
			// Sage's own arithmetic on what it is sent gives the same net.
			qty, price := ratOf(l.Quantity.Decimal), ratOf(l.UnitPrice.Decimal)
			disc := new(big.Rat)
			if l.DiscountAmount != nil {
				disc = ratOf(l.DiscountAmount.Decimal)
			}
			require.Zero(t, g.nets[i].Cmp(gesRound2(new(big.Rat).Sub(new(big.Rat).Mul(qty, price), disc))), "qty × price − discount, iteration %d line %d", iter, i)
			if s.Tier == TierStart {
				require.True(t, l.Quantity.Equal(decimal.NewFromInt(1)))
				require.Nil(t, l.DiscountAmount)
			} else {
				require.True(t, l.Quantity.Equal(src.Quantity))
				require.True(t, l.UnitPrice.Equal(src.UnitPrice))
			}
			switch {
			case g.cisApplies && src.Kind == "labour":
				require.Equal(t, s.CISLabourLedgerAccountID, l.LedgerAccountID)
			case g.cisApplies && src.Kind == "materials":
				require.Equal(t, s.CISMaterialsLedgerAccountID, l.LedgerAccountID)
			default:
				require.Equal(t, s.SalesLedgerAccountID, l.LedgerAccountID)
			}
			sumNet.Add(sumNet, ratOf(l.NetAmount.Decimal))
			sumTax.Add(sumTax, ratOf(l.TaxAmount.Decimal))
			sumTotal.Add(sumTotal, ratOf(l.TotalAmount.Decimal))
		}
		requireRat(t, g.subtotal, back.NetAmount, "invoice net", iter)
		requireRat(t, g.vatTotal, back.TaxAmount, "invoice VAT", iter)
		requireRat(t, g.total, back.TotalAmount, "invoice total", iter)
		require.Zero(t, sumNet.Cmp(g.subtotal))
		require.Zero(t, sumTax.Cmp(g.vatTotal))
		require.Zero(t, sumTotal.Cmp(g.total))
		require.Equal(t, inv.VATReverseCharge, *back.VATReverseCharge)

		if g.cisApplies {
			requireRat(t, ratOf(*cust.CISRate), back.WithholdingTaxRate, "CIS rate", iter)
			requireRat(t, g.cisDeduction, back.WithholdingTaxAmount, "CIS deduction", iter)
			requireRat(t, g.labour, back.CISApplicableAmount, "CIS applicable", iter)
			requireRat(t, new(big.Rat).Sub(g.total, g.cisDeduction), back.TotalAfterCISDeduction, "after CIS", iter)
		} else {
			require.Nil(t, back.WithholdingTaxAmount)
			require.Nil(t, back.WithholdingTaxRate)
			require.Nil(t, back.CISApplicableAmount)
			require.Nil(t, back.TotalAfterCISDeduction)
		}

		// money.go agrees with the independent formula.
		net, vat, total := Totals(inv)
		require.Zero(t, g.subtotal.Cmp(ratOf(net)))
		require.Zero(t, g.vatTotal.Cmp(ratOf(vat)))
		require.Zero(t, g.total.Cmp(ratOf(total)))
	}
}

// TestPropertyStoredTotalsDisagree checks that when GES's stored figures are off by a penny,
// Sage still gets the line figures and a note names both.
func TestPropertyStoredTotalsDisagree(t *testing.T) {
	t.Parallel()
	rng := rand.New(rand.NewPCG(7, 7))
	for iter := 0; iter < 500; iter++ {
		inv, cust, s := randomInvoice(rng)
		net, _, _ := Totals(inv)
		inv.Subtotal = inv.Subtotal.Add(decimal.New(1, -2))
		ops, err := PlanInvoice(inv, cust, s, invoiceKnown())
		require.NoError(t, err)
		require.True(t, ops[0].SalesInvoice.NetAmount.Equal(net))
		require.NotEmpty(t, ops[0].Notes)
		require.Contains(t, ops[0].Notes[0], Money(inv.Subtotal))
		require.Contains(t, ops[0].Notes[0], Money(net))
	}
}
