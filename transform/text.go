package transform

import (
	"fmt"
	"net/mail"
	"strings"
	"unicode/utf8"
)

// squash trims s and collapses every run of white space (including new lines) to one space.
func squash(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

// truncate returns the first max characters (runes) of s.
func truncate(s string, max int) string {
	if utf8.RuneCountInString(s) <= max {
		return s
	}
	r := []rune(s)
	return string(r[:max])
}

// fitter shortens values to Sage's field limits and records a note for each one shortened.
type fitter struct{ notes *[]string }

// fit returns s cut to max characters, noting it when something was cut. what names the field
// for people ("the customer's town").
func (f fitter) fit(s string, max int, what string) string {
	if utf8.RuneCountInString(s) <= max {
		return s
	}
	*f.notes = append(*f.notes, fmt.Sprintf(
		"%s is %d characters long but Sage allows %d; only the first %d were sent",
		what, utf8.RuneCountInString(s), max, max))
	return truncate(s, max)
}

// PlausibleEmail reports whether s looks like one email address Sage will accept: a single
// addr-spec (no display name, no list), a local part and a domain containing a dot, no spaces,
// at most 100 characters (Sage's limit on contact emails).
func PlausibleEmail(s string) bool {
	if s == "" || len(s) > 100 || strings.ContainsAny(s, " \t\r\n,;<>") {
		return false
	}
	a, err := mail.ParseAddress(s)
	if err != nil || a.Address != s || a.Name != "" {
		return false
	}
	at := strings.LastIndexByte(s, '@')
	if at <= 0 {
		return false
	}
	domain := s[at+1:]
	if !strings.Contains(domain, ".") || strings.HasPrefix(domain, ".") ||
		strings.HasSuffix(domain, ".") || strings.Contains(domain, "..") {
		return false
	}
	return true
}
