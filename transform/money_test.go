package transform

import (
	"testing"

	"github.com/shopspring/decimal"
	"github.com/stretchr/testify/require"
)

func TestRoundHalfUp(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ in, want string }{
		{"2.345", "2.35"},
		{"2.3449999", "2.34"},
		{"-2.345", "-2.35"}, // away from zero, as PostgreSQL round(numeric)
		{"0.005", "0.01"},
		{"0.004", "0.00"},
		{"1", "1.00"},
		{"50.025", "50.03"},
		{"10.006", "10.01"},
	} {
		got := RoundHalfUp(d(tc.in), 2)
		require.True(t, d(tc.want).Equal(got), "%s → %s, want %s", tc.in, got, tc.want)
	}
}

func TestLineMoney(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name          string
		line          Line
		reverseCharge bool
		net, vat      string
	}{
		{name: "ok - standard rate", line: Line{Quantity: d("1"), UnitPrice: d("85.00"), VATRate: dp("20")}, net: "85.00", vat: "17.00"},
		{name: "ok - net rounded half up", line: Line{Quantity: d("1.5"), UnitPrice: d("33.35"), VATRate: dp("20")}, net: "50.03", vat: "10.01"},
		{name: "ok - discount off the net", line: Line{Quantity: d("3"), UnitPrice: d("9.99"), Discount: d("2.97"), VATRate: dp("5")}, net: "27.00", vat: "1.35"},
		{name: "ok - VAT half up on the rounded net", line: Line{Quantity: d("1"), UnitPrice: d("0.10"), VATRate: dp("5")}, net: "0.10", vat: "0.01"},
		{name: "ok - 3 dp quantity", line: Line{Quantity: d("0.333"), UnitPrice: d("10.00"), VATRate: dp("20")}, net: "3.33", vat: "0.67"},
		{name: "ok - zero rate", line: Line{Quantity: d("2"), UnitPrice: d("10"), VATRate: dp("0")}, net: "20.00", vat: "0.00"},
		{name: "ok - outside the scope", line: Line{Quantity: d("2"), UnitPrice: d("10")}, net: "20.00", vat: "0.00"},
		{name: "ok - reverse charge", line: Line{Quantity: d("2"), UnitPrice: d("10"), VATRate: dp("20")}, reverseCharge: true, net: "20.00", vat: "0"},
		{name: "ok - negative net (credit line)", line: Line{Quantity: d("1"), UnitPrice: d("-10.005"), VATRate: dp("20")}, net: "-10.01", vat: "-2.00"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			require.True(t, d(tc.net).Equal(LineNet(tc.line)), "net %s", LineNet(tc.line))
			require.True(t, d(tc.vat).Equal(LineVAT(tc.line, tc.reverseCharge)), "vat %s", LineVAT(tc.line, tc.reverseCharge))
		})
	}
}

func TestTotalsAndCIS(t *testing.T) {
	t.Parallel()
	inv := testInvoice()
	net, vat, total := Totals(inv)
	require.Equal(t, []string{"110", "22", "132"}, []string{canonical(net), canonical(vat), canonical(total)})

	inv.VATReverseCharge = true
	net, vat, total = Totals(inv)
	require.Equal(t, []string{"110", "0", "110"}, []string{canonical(net), canonical(vat), canonical(total)})

	labour, deduction := CISDeduction(inv, cisCustomer())
	require.Equal(t, []string{"85", "17"}, []string{canonical(labour), canonical(deduction)})
	labour, deduction = CISDeduction(inv, testCustomer())
	require.True(t, labour.IsZero() && deduction.IsZero())

	c := cisCustomer()
	c.CISRate = dp("30")
	inv.Lines[0].UnitPrice = d("85.05") // 25.515 → 25.52
	_, deduction = CISDeduction(inv, c)
	require.Equal(t, "25.52", canonical(deduction))
}

func TestRateKey(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"20": "20", "20.00": "20", "5.0": "5", "0": "0", "0.00": "0", "17.50": "17.5", "2E1": "20", "-0.0": "0", "12.5": "12.5",
	} {
		v := d(in)
		require.Equal(t, want, RateKey(&v), in)
	}
	require.Equal(t, "", RateKey(nil))
	// Independent of shopspring/decimal's package-level switches.
	require.Equal(t, "20", RateKey(ptr(decimal.New(2000, -2))))
}

func TestMoney(t *testing.T) {
	t.Parallel()
	require.Equal(t, "£12.50", Money(d("12.5")))
	require.Equal(t, "£0.00", Money(d("0")))
	require.Equal(t, "-£3.00", Money(d("-3")))
	require.Equal(t, "£1234567.89", Money(d("1234567.891")))
}
