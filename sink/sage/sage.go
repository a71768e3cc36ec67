// Package sage is the Sage Accounting v3.1 client gessync writes through.
//
// It follows the published v3.1 "Accounts" API (https://api.accounting.sage.com/v3.1, spec in
// sink/sagetest/testdata) and Sage's OAuth2 authorization-code flow
// (https://developer.sage.com/accounting/guides/authenticating/authentication):
//
//   - every call carries X-Business, so a token that reaches several businesses never writes
//     to the wrong one;
//   - access tokens (300 s) are refreshed before they expire, one refresh at a time per
//     connection, and the rotated refresh token is handed to a TokenStore and persisted
//     before the new access token is used;
//   - a per-business limiter keeps under Sage's request limit, and 429, 5xx and network
//     failures are retried with backoff, honouring Retry-After;
//   - Sage's error array ([{"$severity","$dataCode","$message","$source"}]) is decoded into an
//     *APIError, returned inside a *RetryableError or a *PermanentError, so callers decide
//     with errors.As whether to try again or to ask a person;
//   - no token ever appears in an error string or a log line.
package sage

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"golang.org/x/oauth2"
)

// ErrorItem is one element of Sage's error body.
type ErrorItem struct {
	Severity string `json:"$severity"`
	DataCode string `json:"$dataCode"`
	Message  string `json:"$message"`
	Source   string `json:"$source"`
}

// APIError is a non-2xx answer from Sage: the HTTP status, the request it answered (method and
// path, never the query's secrets) and Sage's error items.
type APIError struct {
	StatusCode int
	Method     string
	Path       string
	Items      []ErrorItem
	// RetryAfter is the Retry-After header of a 429 or 503, zero when absent.
	RetryAfter time.Duration
	// Body is a short excerpt of a body that was not Sage's error format (an HTML page from a
	// proxy, say), with our secrets removed; empty when Items were decoded.
	Body string
}

// Error reads "sage METHOD /path: STATUS; DataCode (source): message…".
func (e *APIError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "sage %s %s: %d", e.Method, e.Path, e.StatusCode)
	for _, it := range e.Items {
		fmt.Fprintf(&b, "; %s", it.DataCode)
		if it.Source != "" {
			fmt.Fprintf(&b, " (%s)", it.Source)
		}
		if it.Message != "" {
			fmt.Fprintf(&b, ": %s", it.Message)
		}
	}
	if e.Body != "" {
		fmt.Fprintf(&b, "; body: %q", e.Body)
	}
	return b.String()
}

// DataCode returns the first item's $dataCode ("RecordInvalid", "AuthorizationFailure", …) or "".
func (e *APIError) DataCode() string {
	if len(e.Items) == 0 {
		return ""
	}
	return e.Items[0].DataCode
}

// HasMessage reports whether any item's $message contains s.
func (e *APIError) HasMessage(s string) bool {
	for _, it := range e.Items {
		if strings.Contains(it.Message, s) {
			return true
		}
	}
	return false
}

// RetryableError wraps a failure that may succeed if the same request is sent again later:
// network errors, 429, 5xx, and a connection whose consent or subscription is gone
// (ErrConnectionLost) until a person reconnects it. Err is an *APIError, ErrConnectionLost or a
// transport error.
type RetryableError struct {
	Err error
	// RetryAfter is how long Sage asked us to wait, zero when it did not say.
	RetryAfter time.Duration
}

// Error prefixes the cause with "retryable: ".
func (e *RetryableError) Error() string { return "retryable: " + e.Err.Error() }

// Unwrap returns Err, for errors.Is and errors.As.
func (e *RetryableError) Unwrap() error { return e.Err }

// PermanentError wraps a refusal that sending again will not change: a 4xx other than 408/429
// (validation, not found, forbidden). Err is usually an *APIError; it needs a person.
type PermanentError struct{ Err error }

// Error prefixes the cause with "permanent: ".
func (e *PermanentError) Error() string { return "permanent: " + e.Err.Error() }

// Unwrap returns Err, for errors.Is and errors.As.
func (e *PermanentError) Unwrap() error { return e.Err }

// ErrConnectionLost means the connection's tokens no longer work: the refresh token was refused
// (invalid_grant: revoked, rotated elsewhere, or past its 31 days) or Sage answered 401
// AuthorizationFailure after a fresh token ("No active subscription", "Access denied"). The
// company must reconnect; its changes wait.
var ErrConnectionLost = errors.New("sage connection lost: reconnect the company to Sage")

// IsRetryable reports whether err (or anything it wraps) is a *RetryableError.
func IsRetryable(err error) bool {
	var r *RetryableError
	return errors.As(err, &r)
}

// Config configures a Client. Zero values take the documented defaults.
type Config struct {
	// APIURL is the API base, default "https://api.accounting.sage.com/v3.1".
	APIURL string
	// AuthURL is the authorize endpoint, default "https://www.sageone.com/oauth2/auth/central?filter=apiv3.1".
	AuthURL string
	// TokenURL is the token endpoint, default "https://oauth.accounting.sage.com/token".
	TokenURL string
	// ClientID and ClientSecret are the app's OAuth2 credentials.
	ClientID     string
	ClientSecret string
	// RedirectURL is our OAuth callback, matched by Sage character for character.
	RedirectURL string
	// RequestsPerMinute is the per-business client-side limit, default 180: 90 % of the ~200 a minute at which Sage throttles; 429s are retried after Retry-After.
	RequestsPerMinute int
	// MaxAttempts bounds attempts of one call on retryable failures, default 5. The pipeline
	// retries beyond that on its own schedule.
	MaxAttempts int
	// Timeout bounds one HTTP attempt, default 30 s.
	Timeout time.Duration
}

// TokenStore persists a connection's rotated tokens. SaveToken must be durable when it returns:
// the client uses a new access token only after its refresh token is saved, because Sage retires
// the old refresh token on every refresh.
type TokenStore interface {
	SaveToken(ctx context.Context, companyID int64, tok *oauth2.Token) error
}

// Connection names one company's Sage connection: whose tokens, which business.
type Connection struct {
	CompanyID  int64
	BusinessID string // sent as X-Business on every call; empty only before a business is chosen
	Token      *oauth2.Token
}

// The Client (client.go) is built with New(cfg Config, opts ...Option) *Client (options
// WithHTTPClient, WithLogger, WithClock, WithBackoff) and offers:
//
//	AuthCodeURL(state string) string                                  // authorize redirect
//	Exchange(ctx, code string) (*oauth2.Token, error)                 // authorization_code grant
//	Session(conn Connection, store TokenStore) *Session               // calls for one company
//
// RefreshExpiry(tok) and WithRefreshExpiry(tok, t) read and restore when a refresh token
// expires (Sage's refresh_token_expires_in), which oauth2.Token's JSON does not keep.
//
// A *Session (session.go) is safe for concurrent use and serialises token refreshes per company:
//
//	Businesses(ctx) ([]Business, error)                               // GET /businesses
//	BankAccounts(ctx) ([]BankAccount, error)                          // GET /bank_accounts (all pages)
//	CreateBankAccount(ctx, BankAccountRequest) (BankAccount, error)   // POST /bank_accounts
//	TaxRates(ctx) ([]TaxRate, error)                                  // GET /tax_rates (all pages)
//	LedgerAccounts(ctx) ([]LedgerAccount, error)                      // GET /ledger_accounts (all pages)
//	CreateContact(ctx, ContactRequest) (Contact, error)               // POST /contacts
//	UpdateContact(ctx, id string, ContactRequest) (Contact, error)    // PUT /contacts/{id}
//	GetContact(ctx, id string) (Contact, error)
//	DeleteContact(ctx, id string) error
//	CreateSalesInvoice(ctx, SalesInvoiceRequest) (SalesInvoice, error)
//	UpdateSalesInvoice(ctx, id string, SalesInvoiceRequest) (SalesInvoice, error)
//	GetSalesInvoice(ctx, id string) (SalesInvoice, error)             // with show_payments_allocations
//	VoidSalesInvoice(ctx, id, reason string) (SalesInvoice, error)    // DELETE ?void_reason=
//	CreateContactPayment(ctx, ContactPaymentRequest) (ContactPayment, error)
//	UpdateContactPayment(ctx, id string, ContactPaymentRequest) (ContactPayment, error)
//	GetContactPayment(ctx, id string) (ContactPayment, error)
//	DeleteContactPayment(ctx, id string) error
//	ListContacts(ctx, query url.Values) ([]Contact, error)            // all pages, attributes=all
//	ListSalesInvoices(ctx, query url.Values) ([]SalesInvoice, error)  // all pages, attributes=all
//	Token(ctx) (*oauth2.Token, error)                                 // current token, refreshing if due
//	RefreshIfDue(ctx, within time.Duration) error                     // keep quiet connections alive
//	CompanyID() int64; BusinessID() string
