package sagetest

import "testing"

func TestTypesAreComparesTheJoinedIDs(t *testing.T) {
	for _, tt := range []struct {
		ids  []string
		want string
		ok   bool
	}{
		{[]string{"CUSTOMER"}, "CUSTOMER", true},
		{[]string{"CUSTOMER"}, "customer", true},
		{[]string{"CUSTOMER", "VENDOR"}, "CUSTOMER,VENDOR", true},
		{[]string{"CUSTOMER", "VENDOR"}, "CUSTOMER", false},
		{[]string{"CUSTOMER"}, "CUSTOMER,VENDOR", false},
		{[]string{"VENDOR"}, "CUSTOMER", false},
		{nil, "", true},
		{[]string{"CUSTOMER"}, "CUST", false},
	} {
		if got := typesAre(tt.ids, tt.want); got != tt.ok {
			t.Errorf("typesAre(%q, %q) = %v, want %v", tt.ids, tt.want, got, tt.ok)
		}
	}
}

// A contact search matches whatever the case, in ASCII and beyond it.
func TestContainsFold(t *testing.T) {
	for _, c := range []struct {
		s, sub string
		want   bool
	}{
		{"Jane Bench 1234", "bench 12", true},
		{"Jane Bench 1234", "BENCH 1234", true},
		{"Jane Bench 1234", "bench 12345", false},
		{"BM1234", "bm12", true},
		{"Zoë Smith", "SMITH", true},
		{"Zoë Smith", "zoË", true},
		{"ÉCOLE Heating", "école", true},
		{"Smith", "Smyth", false},
		{"Smith", "", true},
		{"", "a", false},
	} {
		if got := containsFold(c.s, c.sub); got != c.want {
			t.Errorf("containsFold(%q, %q) = %v; want %v", c.s, c.sub, got, c.want)
		}
	}
}
