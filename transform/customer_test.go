package transform

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/gessync/gessync/sink/sage"
)

func TestPlanCustomer(t *testing.T) {
	t.Parallel()
	yes := true
	rec := Record{Table: "customers", ID: 17}
	wantBody := func() sage.ContactRequest {
		return sage.ContactRequest{
			IdempotencyID:  IdempotencyID(testSettings().BusinessID, rec),
			Name:           "Mrs Jane Smith",
			ContactTypeIDs: []string{"CUSTOMER"},
			Reference:      "SMITH01",
			Notes:          "Side gate code 1234",
			CreditDays:     ptr(30),
			MainAddress: &sage.Address{
				AddressLine1: "12 Acacia Avenue", AddressLine2: "Flat 2", City: "Leeds",
				Region: "West Yorkshire", PostalCode: "LS1 4AB", CountryID: "GB", IsMainAddress: &yes,
			},
			MainContactPerson: &sage.ContactPerson{
				Name: "Mrs Jane Smith", Email: "jane.smith@example.co.uk", Telephone: "01632 960123",
				Mobile: "07700 900123", IsMainContact: &yes, ContactPersonTypeIDs: []string{"ACCOUNTS"},
			},
		}
	}
	tests := []struct {
		name      string
		cust      func() Customer
		known     Known
		wantKind  Kind
		want      func() sage.ContactRequest
		wantNotes []string // substrings, one per note, in order
		wantField string
	}{
		{name: "ok - create from a person", cust: testCustomer, wantKind: CreateContact, want: wantBody},
		{
			name: "ok - update carries no create-only fields", cust: testCustomer, known: Known{Self: "contact-17"},
			wantKind: UpdateContact,
			want: func() sage.ContactRequest {
				b := wantBody()
				b.IdempotencyID, b.ContactTypeIDs = "", nil
				return b
			},
		},
		{
			name: "ok - archived customer is still updated",
			cust: func() Customer { c := testCustomer(); c.Archived = true; return c }, known: Known{Self: "contact-17"},
			wantKind: UpdateContact,
			want: func() sage.ContactRequest {
				b := wantBody()
				b.IdempotencyID, b.ContactTypeIDs = "", nil
				return b
			},
		},
		{
			name:     "ok - company name wins, contact person is the person",
			cust:     func() Customer { c := testCustomer(); c.CompanyName = "  Acme   Lettings Ltd "; return c },
			wantKind: CreateContact,
			want: func() sage.ContactRequest {
				b := wantBody()
				b.Name = "Acme Lettings Ltd"
				return b
			},
		},
		{
			name: "ok - company without a person names the contact person after the company",
			cust: func() Customer {
				c := testCustomer()
				c.CompanyName, c.Title, c.FirstName, c.LastName = "Acme Lettings Ltd", "Mr", "", ""
				return c
			},
			wantKind: CreateContact,
			want: func() sage.ContactRequest {
				b := wantBody()
				b.Name, b.MainContactPerson.Name = "Acme Lettings Ltd", "Acme Lettings Ltd"
				return b
			},
		},
		{
			name: "ok - person name is trimmed and single-spaced, missing parts skipped",
			cust: func() Customer {
				c := testCustomer()
				c.Title, c.FirstName, c.LastName = "", "  Jane\t", " van  der Berg "
				return c
			},
			wantKind: CreateContact,
			want: func() sage.ContactRequest {
				b := wantBody()
				b.Name, b.MainContactPerson.Name = "Jane van der Berg", "Jane van der Berg"
				return b
			},
		},
		{
			name:     "ok - account ref over 10 characters is left out with a note",
			cust:     func() Customer { c := testCustomer(); c.AccountRef = "SMITHJANE001"; return c },
			wantKind: CreateContact,
			want: func() sage.ContactRequest {
				b := wantBody()
				b.Reference = ""
				return b
			},
			wantNotes: []string{"Sage allows 10 characters"},
		},
		{
			name:     "ok - account ref of exactly 10 characters is sent",
			cust:     func() Customer { c := testCustomer(); c.AccountRef = "SMITHJANE1"; return c },
			wantKind: CreateContact,
			want: func() sage.ContactRequest {
				b := wantBody()
				b.Reference = "SMITHJANE1"
				return b
			},
		},
		{
			name:     "ok - implausible email is left out with a note",
			cust:     func() Customer { c := testCustomer(); c.Email = "jane at example dot com"; return c },
			wantKind: CreateContact,
			want: func() sage.ContactRequest {
				b := wantBody()
				b.MainContactPerson.Email = ""
				return b
			},
			wantNotes: []string{"does not look like an email address"},
		},
		{
			name:     "ok - two emails are not one plausible address",
			cust:     func() Customer { c := testCustomer(); c.Email = "a@example.com; b@example.com"; return c },
			wantKind: CreateContact,
			want: func() sage.ContactRequest {
				b := wantBody()
				b.MainContactPerson.Email = ""
				return b
			},
			wantNotes: []string{"does not look like an email address"},
		},
		{
			name:     "ok - VAT number without spaces, tax number set",
			cust:     func() Customer { c := testCustomer(); c.VATNumber = "gb 123 4567 89"; return c },
			wantKind: CreateContact,
			want: func() sage.ContactRequest {
				b := wantBody()
				b.TaxNumber = "GB123456789"
				return b
			},
		},
		{
			name: "ok - empty optional fields are omitted",
			cust: func() Customer {
				c := testCustomer()
				c.AccountRef, c.Email, c.Phone, c.Mobile, c.AddressLine2, c.County, c.Notes = "", "", "", "", "", "", ""
				return c
			},
			wantKind: CreateContact,
			want: func() sage.ContactRequest {
				b := wantBody()
				b.Reference, b.Notes = "", ""
				b.MainContactPerson.Email, b.MainContactPerson.Telephone, b.MainContactPerson.Mobile = "", "", ""
				b.MainAddress.AddressLine2, b.MainAddress.Region = "", ""
				return b
			},
		},
		{
			name:     "ok - UK country code becomes GB, payment terms 0 days are sent",
			cust:     func() Customer { c := testCustomer(); c.CountryCode = "uk"; c.PaymentTermsDays = 0; return c },
			wantKind: CreateContact,
			want: func() sage.ContactRequest {
				b := wantBody()
				b.CreditDays = ptr(0)
				return b
			},
		},
		{
			name:     "ok - payment terms beyond Sage's 365 days are left out with a note",
			cust:     func() Customer { c := testCustomer(); c.PaymentTermsDays = 400; return c },
			wantKind: CreateContact,
			want: func() sage.ContactRequest {
				b := wantBody()
				b.CreditDays = nil
				return b
			},
			wantNotes: []string{"outside the 0 to 365 days"},
		},
		{
			name:     "ok - CIS contractor create notes that Sage's contact must be marked by hand",
			cust:     func() Customer { c := testCustomer(); c.CISRegistered = true; c.CISRate = dp("20"); return c },
			wantKind: CreateContact, want: wantBody,
			wantNotes: []string{"CIS"},
		},
		{
			name: "error - no name and no company name",
			cust: func() Customer {
				c := testCustomer()
				c.Title, c.FirstName, c.LastName, c.CompanyName = "Mr", " ", "", "  "
				return c
			},
			wantField: "name",
		},
		{
			name:      "error - name longer than Sage allows",
			cust:      func() Customer { c := testCustomer(); c.CompanyName = strings.Repeat("A", 101); return c },
			wantField: "name",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ops, err := PlanCustomer(tc.cust(), testSettings(), tc.known)
			if tc.wantField != "" {
				ie := requireInvalid(t, err, tc.wantField)
				require.Equal(t, rec, ie.Record)
				if tc.wantField == "name" && !strings.Contains(ie.Reason, "characters") {
					require.Equal(t, "Add a name or company name to this customer in GES", ie.Action)
				}
				require.Nil(t, ops)
				return
			}
			require.NoError(t, err)
			require.Len(t, ops, 1)
			op := ops[0]
			require.Equal(t, tc.wantKind, op.Kind)
			require.Equal(t, rec, op.Record)
			require.Equal(t, tc.known.Self, op.SageID)
			require.Nil(t, op.SalesInvoice)
			require.Nil(t, op.ContactPayment)
			require.Equal(t, tc.want(), *op.Contact)
			require.Len(t, op.Hash, 64)
			require.Len(t, op.Notes, len(tc.wantNotes), "notes: %q", op.Notes)
			for i, n := range tc.wantNotes {
				require.Contains(t, op.Notes[i], n)
			}
		})
	}
}

func TestPlanCustomerLongFieldsAreCut(t *testing.T) {
	t.Parallel()
	c := testCustomer()
	c.Notes = strings.Repeat("é", 4001)
	c.Town = strings.Repeat("x", 51)
	c.Postcode = "LS1 4AB LS2"
	ops, err := PlanCustomer(c, testSettings(), Known{})
	require.NoError(t, err)
	body := ops[0].Contact
	require.Equal(t, strings.Repeat("é", 4000), body.Notes)
	require.Equal(t, strings.Repeat("x", 50), body.MainAddress.City)
	require.Empty(t, body.MainAddress.PostalCode)
	require.Len(t, ops[0].Notes, 3)
}

func TestPlanCustomerHash(t *testing.T) {
	t.Parallel()
	s := testSettings()
	create, err := PlanCustomer(testCustomer(), s, Known{})
	require.NoError(t, err)
	update, err := PlanCustomer(testCustomer(), s, Known{Self: "contact-17"})
	require.NoError(t, err)
	require.Equal(t, create[0].Hash, update[0].Hash, "a create and an update with the same content hash alike")

	other := s
	other.BusinessID = "another-business"
	again, err := PlanCustomer(testCustomer(), other, Known{})
	require.NoError(t, err)
	require.Equal(t, create[0].Hash, again[0].Hash, "the idempotency id is not part of the hash")
	require.NotEqual(t, create[0].Contact.IdempotencyID, again[0].Contact.IdempotencyID)

	c := testCustomer()
	c.Phone = "01632 960999"
	changed, err := PlanCustomer(c, s, Known{Self: "contact-17"})
	require.NoError(t, err)
	require.NotEqual(t, update[0].Hash, changed[0].Hash)

	c = testCustomer()
	c.UpdatedAt = c.UpdatedAt.Add(1)
	c.Archived = true
	touched, err := PlanCustomer(c, s, Known{Self: "contact-17"})
	require.NoError(t, err)
	require.Equal(t, update[0].Hash, touched[0].Hash, "fields Sage does not get do not change the hash")
}

func TestPlausibleEmail(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]bool{
		"jane.smith@example.co.uk":         true,
		"j+boiler@example.com":             true,
		"":                                 false,
		"jane":                             false,
		"jane@localhost":                   false,
		"@example.com":                     false,
		"jane@@example.com":                false,
		"Jane <jane@example.com>":          false,
		"jane@example..com":                false,
		"jane@example.com.":                false,
		"jane @example.com":                false,
		"a@b.co,c@d.co":                    false,
		strings.Repeat("a", 95) + "@x.com": false,
	} {
		require.Equal(t, want, PlausibleEmail(in), in)
	}
}
