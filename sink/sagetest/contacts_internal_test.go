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
