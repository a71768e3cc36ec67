package transform

import (
	"fmt"
	"strings"
	"unicode/utf8"

	"github.com/gessync/gessync/sink/sage"
)

// Sage's limits on contact fields (swagger Contact, Address and ContactPerson models).
const (
	maxContactName      = 100
	maxContactReference = 10
	maxContactNotes     = 4000
	maxAddressField     = 50
	maxPostalCode       = 10
	maxPersonField      = 50
	maxTaxNumber        = 255
	maxCreditDays       = 365
)

// PlanCustomer maps a GES customer to POST /contacts (CreateContact, when k.Self is "") or
// PUT /contacts/{k.Self} (UpdateContact). Archived customers are updated like any other: GES
// keeps them and so does Sage.
//
// The contact's name is company_name, else "title first_name last_name" (single-spaced; a title
// alone is not a name); neither gives *InvalidError{Field: "name"}, and so does a name longer
// than Sage's 100 characters. account_ref becomes reference when it fits Sage's 10 characters,
// else it is left out with a note. The address goes to main_address (town → city, county →
// region, country_code → country_id), email, phone and mobile to main_contact_person (ACCOUNTS,
// named after the person, or the company when there is no person); an implausible email is left
// out with a note. vat_number (spaces removed) → tax_number, notes → notes, payment_terms_days →
// credit_days. Values longer than Sage allows are cut with a note; creates carry
// contact_type_ids ["CUSTOMER"] and IdempotencyID.
func PlanCustomer(c Customer, s Settings, k Known) ([]Op, error) {
	rec := Record{Table: "customers", ID: c.ID}
	var notes []string
	f := fitter{&notes}

	person := ""
	if first, last := squash(c.FirstName), squash(c.LastName); first != "" || last != "" {
		person = squash(c.Title + " " + first + " " + last)
	}
	name := squash(c.CompanyName)
	if name == "" {
		name = person
	}
	if name == "" {
		return nil, &InvalidError{
			Record: rec, Field: "name",
			Reason: "This customer has neither a name nor a company name, and Sage needs a name for every contact",
			Action: "Add a name or company name to this customer in GES",
		}
	}
	if n := utf8.RuneCountInString(name); n > maxContactName {
		return nil, &InvalidError{
			Record: rec, Field: "name",
			Reason: fmt.Sprintf("The customer's name is %d characters long but Sage allows at most %d", n, maxContactName),
			Action: fmt.Sprintf("Shorten this customer's name or company name in GES to %d characters or fewer", maxContactName),
		}
	}

	body := sage.ContactRequest{
		Name:  name,
		Notes: f.fit(strings.TrimSpace(c.Notes), maxContactNotes, "The customer's notes"),
	}
	if ref := strings.TrimSpace(c.AccountRef); ref != "" {
		if n := utf8.RuneCountInString(ref); n <= maxContactReference {
			body.Reference = ref
		} else {
			notes = append(notes, fmt.Sprintf(
				"The account ref %q is %d characters long but Sage allows %d characters for a contact reference, so it was not sent",
				ref, n, maxContactReference))
		}
	}
	if vat := strings.ToUpper(strings.Join(strings.Fields(c.VATNumber), "")); vat != "" {
		body.TaxNumber = f.fit(vat, maxTaxNumber, "The customer's VAT number")
	}
	if d := c.PaymentTermsDays; d >= 0 && d <= maxCreditDays {
		body.CreditDays = &d
	} else {
		notes = append(notes, fmt.Sprintf(
			"Payment terms of %d days are outside the 0 to %d days Sage allows, so Sage keeps its own credit days for this customer",
			d, maxCreditDays))
	}

	yes := true
	addr := &sage.Address{
		AddressLine1:  f.fit(squash(c.AddressLine1), maxAddressField, "The first address line"),
		AddressLine2:  f.fit(squash(c.AddressLine2), maxAddressField, "The second address line"),
		City:          f.fit(squash(c.Town), maxAddressField, "The town"),
		Region:        f.fit(squash(c.County), maxAddressField, "The county"),
		IsMainAddress: &yes,
	}
	if pc := strings.ToUpper(squash(c.Postcode)); utf8.RuneCountInString(pc) <= maxPostalCode {
		addr.PostalCode = pc
	} else {
		notes = append(notes, fmt.Sprintf(
			"The postcode %q is longer than the %d characters Sage allows, so it was not sent", pc, maxPostalCode))
	}
	switch cc := strings.ToUpper(strings.TrimSpace(c.CountryCode)); {
	case cc == "UK":
		addr.CountryID = "GB"
	case len(cc) == 2 && isUpperASCII(cc):
		addr.CountryID = cc
	case cc != "":
		notes = append(notes, fmt.Sprintf("The country code %q is not a two-letter country code, so no country was sent", cc))
	}
	body.MainAddress = addr

	cp := &sage.ContactPerson{
		Telephone:            f.fit(strings.TrimSpace(c.Phone), maxPersonField, "The phone number"),
		Mobile:               f.fit(strings.TrimSpace(c.Mobile), maxPersonField, "The mobile number"),
		IsMainContact:        &yes,
		ContactPersonTypeIDs: []string{"ACCOUNTS"},
	}
	if person != "" {
		cp.Name = f.fit(person, maxPersonField, "The contact person's name")
	} else {
		cp.Name = truncate(name, maxPersonField)
	}
	if email := strings.TrimSpace(c.Email); email != "" {
		if PlausibleEmail(email) {
			cp.Email = email
		} else {
			notes = append(notes, fmt.Sprintf(
				"The email %q does not look like an email address, so it was not sent to Sage", clip(email)))
		}
	}
	body.MainContactPerson = cp

	op := Op{Record: rec, Hash: hashContact(body)}
	if k.Self == "" {
		op.Kind = CreateContact
		body.ContactTypeIDs = []string{"CUSTOMER"}
		body.IdempotencyID = IdempotencyID(s.BusinessID, rec)
		if c.CISRegistered {
			notes = append(notes, "GES marks this customer as a CIS contractor; Sage's API cannot record that on a contact, so mark them as CIS registered in Sage")
		}
	} else {
		op.Kind = UpdateContact
		op.SageID = k.Self
	}
	op.Contact = &body
	op.Notes = notes
	return []Op{op}, nil
}

func isUpperASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 'A' || s[i] > 'Z' {
			return false
		}
	}
	return true
}
