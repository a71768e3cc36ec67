package sagetest

import (
	"net/http"
	"regexp"
	"strings"
)

// contactIn is contact in the body of POST /contacts and PUT /contacts/{key}; absent attributes
// are nil. Attributes the spec allows but the sandbox does not keep are validated and dropped.
type contactIn struct {
	Name                        *string    `json:"name"`
	ContactTypeIDs              *[]string  `json:"contact_type_ids"`
	Reference                   *string    `json:"reference"`
	TaxNumber                   *string    `json:"tax_number"`
	Notes                       *string    `json:"notes"`
	CreditDays                  *int       `json:"credit_days"`
	DefaultSalesLedgerAccountID *string    `json:"default_sales_ledger_account_id"`
	DefaultSalesTaxRateID       *string    `json:"default_sales_tax_rate_id"`
	MainAddress                 *addressIn `json:"main_address"`
	DeliveryAddress             *addressIn `json:"delivery_address"`
	MainContactPerson           *personIn  `json:"main_contact_person"`
}

var (
	emailPattern = regexp.MustCompile(`^[^@\s]+@[^@\s]+\.[^@\s]+$`)
	// gbVATPattern is a UK VAT registration number: 9 or 12 digits, or a government department
	// or health authority number, with an optional GB prefix.
	gbVATPattern   = regexp.MustCompile(`^(GB)?([0-9]{9}|[0-9]{12}|GD[0-4][0-9]{2}|HA[5-9][0-9]{2})$`)
	countryPattern = regexp.MustCompile(`^[A-Z]{2}$`)
)

// check validates in against the rules Sage applies beyond the spec. self is the contact being
// updated, nil on create.
func (in *contactIn) check(b *business, self *contact) problems {
	var p problems
	if self == nil || in.Name != nil {
		if blank(in.Name) {
			p.add("name", msgRequired)
		}
	}
	if self == nil || in.ContactTypeIDs != nil {
		switch {
		case in.ContactTypeIDs == nil || len(*in.ContactTypeIDs) == 0:
			p.add("contact_type_ids", msgRequired)
		case len(*in.ContactTypeIDs) > 1:
			p.add("contact_type_ids", "A contact can only have one contact type.")
		default:
			if _, ok := contactTypes[(*in.ContactTypeIDs)[0]]; !ok {
				p.add("contact_type_ids", "is invalid (CUSTOMER or VENDOR)")
			}
		}
	}
	if in.Reference != nil && *in.Reference != "" {
		for _, c := range b.contacts.all() {
			if c != self && strings.EqualFold(c.reference, *in.Reference) {
				p.add("reference", "Reference must be unique")
			}
		}
	}
	if in.TaxNumber != nil && *in.TaxNumber != "" {
		country := ""
		if in.MainAddress != nil && in.MainAddress.CountryID != nil {
			country = *in.MainAddress.CountryID
		} else if self != nil && self.main != nil {
			country = self.main.countryID
		}
		if (country == "" || country == "GB") && !gbVATPattern.MatchString(strings.ReplaceAll(strings.ToUpper(*in.TaxNumber), " ", "")) {
			p.add("tax_number", "is not a valid UK VAT registration number")
		}
	}
	if id := in.DefaultSalesLedgerAccountID; id != nil {
		if l, ok := b.ledgers.get(*id); !ok || !l.visibleInSales() {
			p.add("default_sales_ledger_account_id", "is not a sales ledger account of this business")
		}
	}
	if id := in.DefaultSalesTaxRateID; id != nil {
		if _, ok := findTaxRate(*id); !ok {
			p.add("default_sales_tax_rate_id", "is not a tax rate of this business")
		}
	}
	for name, a := range map[string]*addressIn{"main_address": in.MainAddress, "delivery_address": in.DeliveryAddress} {
		if a != nil && a.CountryID != nil && !countryPattern.MatchString(*a.CountryID) {
			p.add(name+".country_id", "is not a country id (ISO 3166 alpha-2, e.g. GB)")
		}
	}
	if mp := in.MainContactPerson; mp != nil && mp.Email != nil && *mp.Email != "" && !emailPattern.MatchString(*mp.Email) {
		p.add("main_contact_person.email", "is not a valid email address")
	}
	if b.tier == TierStart && in.DeliveryAddress != nil {
		p.add("delivery_address", "Accounting Start contacts have one address only.")
	}
	return p
}

// apply copies the attributes present in in onto c.
func (in *contactIn) apply(c *contact) {
	set(&c.name, in.Name)
	set(&c.typeIDs, in.ContactTypeIDs)
	set(&c.reference, in.Reference)
	set(&c.taxNumber, in.TaxNumber)
	set(&c.notes, in.Notes)
	if in.CreditDays != nil {
		v := *in.CreditDays
		c.creditDays = &v
	}
	set(&c.salesLedger, in.DefaultSalesLedgerAccountID)
	set(&c.salesTaxID, in.DefaultSalesTaxRateID)
	c.main = mergeAddress(c.main, in.MainAddress, true)
	c.delivery = mergeAddress(c.delivery, in.DeliveryAddress, false)
	if mp := in.MainContactPerson; mp != nil {
		if c.person == nil {
			c.person = &person{id: newID()}
		}
		set(&c.person.typeIDs, mp.ContactPersonTypeIDs)
		set(&c.person.name, mp.Name)
		set(&c.person.telephone, mp.Telephone)
		set(&c.person.mobile, mp.Mobile)
		set(&c.person.mail, mp.Email)
	}
}

// mergeAddress applies in to a contact's address, creating it on first use.
func mergeAddress(a *address, in *addressIn, main bool) *address {
	if in == nil {
		return a
	}
	if a == nil {
		a = &address{id: newID(), main: main}
	}
	a.merge(in)
	return a
}

// createContact serves POST /contacts: {"contact": {name, contact_type_ids, …}} → 201 Contact.
func createContact(c *call) response {
	return c.idempotent(func() response {
		in, e := decode[contactIn](c)
		if e != nil {
			return *e
		}
		if p := in.check(c.b, nil); len(p) > 0 {
			return invalid(p...)
		}
		ct := &contact{id: newID(), created: c.now, updated: c.now}
		in.apply(ct)
		c.b.contacts.add(ct.id, ct)
		return ok(http.StatusCreated, c.b.renderContact(ct))
	})
}

// updateContact serves PUT /contacts/{key}: the attributes present are changed → 200 Contact.
func updateContact(c *call) response {
	ct, found := c.b.contacts.get(c.id)
	if !found {
		return notFound()
	}
	in, e := decode[contactIn](c)
	if e != nil {
		return *e
	}
	if p := in.check(c.b, ct); len(p) > 0 {
		return invalid(p...)
	}
	in.apply(ct)
	ct.updated = c.now
	return ok(http.StatusOK, c.b.renderContact(ct))
}

// deleteContact serves DELETE /contacts/{key} → 204; a contact with transactions is refused.
func deleteContact(c *call) response {
	ct, found := c.b.contacts.get(c.id)
	if !found {
		return notFound()
	}
	if c.b.contactInUse(ct.id) {
		return invalid(problem("", "This contact cannot be deleted because it has transactions."))
	}
	c.b.contacts.remove(ct.id)
	c.b.tombstone("contacts", ct.id, ct.displayedAs(), c.now)
	return response{status: http.StatusNoContent}
}

// getContact serves GET /contacts/{key} → 200 Contact.
func getContact(c *call) response {
	ct, found := c.b.contacts.get(c.id)
	if !found {
		return notFound()
	}
	return ok(http.StatusOK, c.b.renderContact(ct))
}

// listContacts serves GET /contacts with search (name or reference, case-insensitive
// substring), email (main contact person, case-insensitive), contact_type_id,
// updated_or_created_since and deleted_since.
// typesAre reports whether ids joined by commas equal want, ignoring case, without joining.
func typesAre(ids []string, want string) bool {
	for i, id := range ids {
		if i > 0 {
			if want == "" || want[0] != ',' {
				return false
			}
			want = want[1:]
		}
		if len(want) < len(id) || !strings.EqualFold(want[:len(id)], id) {
			return false
		}
		want = want[len(id):]
	}
	return want == ""
}

func listContacts(c *call) response {
	if resp, ok := c.deletedSince("contacts"); ok {
		return resp
	}
	search, email, typeID := c.query.Get("search"), c.query.Get("email"), c.query.Get("contact_type_id")
	var out []*contact
	for _, ct := range c.b.contacts.all() {
		switch {
		case !c.updatedSince(ct.updated):
		case email != "" && (ct.person == nil || !strings.EqualFold(ct.person.mail, email)):
		case search != "" && !containsFold(ct.name, search) && !containsFold(ct.reference, search):
		case typeID != "" && !typesAre(ct.typeIDs, typeID):
		default:
			out = append(out, ct)
		}
	}
	return pageOf(c, out, c.b.renderContact)
}
