package sage

import (
	"context"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"golang.org/x/oauth2"
	"golang.org/x/time/rate"
)

// Defaults applied by New to zero Config fields and to options left unset.
const (
	// DefaultAPIURL is Sage Accounting v3.1's API base, one host for every country.
	DefaultAPIURL = "https://api.accounting.sage.com/v3.1"
	// DefaultAuthURL is Sage's authorize endpoint for v3.1 apps.
	DefaultAuthURL = "https://www.sageone.com/oauth2/auth/central?filter=apiv3.1"
	// DefaultTokenURL is Sage's token endpoint (authorization_code and refresh_token grants).
	DefaultTokenURL = "https://oauth.accounting.sage.com/token"
	// DefaultRequestsPerMinute is the per-business limit: 90 % of the ~200 Sage throttles at.
	DefaultRequestsPerMinute = 180
	// DefaultMaxAttempts bounds the attempts of one call on retryable failures.
	DefaultMaxAttempts = 5
	// DefaultTimeout bounds one HTTP attempt, response body included.
	DefaultTimeout = 30 * time.Second

	// DefaultBackoffInitial is the first wait between attempts when Sage gives no Retry-After;
	// each next wait doubles (±50 % jitter) up to DefaultBackoffMax.
	DefaultBackoffInitial = 500 * time.Millisecond
	// DefaultBackoffMax caps the wait between attempts when Sage gives no Retry-After.
	DefaultBackoffMax = 30 * time.Second
	// DefaultMaxRetryAfter is the longest Retry-After the client waits out inside one call. A
	// longer one ends the call with a *RetryableError carrying RetryAfter, so the caller can park
	// the company instead of holding its queue.
	DefaultMaxRetryAfter = 2 * time.Minute

	// refreshMargin is how close to its expiry an access token is refreshed (Sage's live 300 s).
	refreshMargin = 60 * time.Second
	// defaultAccessTTL and defaultRefreshTTL are Sage's documented lifetimes, used only to
	// estimate a refresh token's expiry when the token does not say (RefreshExpiry).
	defaultAccessTTL  = 300 * time.Second
	defaultRefreshTTL = 31 * 24 * time.Hour
)

// Clock is the Client's source of time: token expiry, the rate limiter and waits between
// attempts all read it, so a test can pass a fake that advances instantly.
type Clock interface {
	Now() time.Time
	// After returns a channel that receives the time once d has passed, like time.After.
	After(d time.Duration) <-chan time.Time
}

type realClock struct{}

func (realClock) Now() time.Time                         { return time.Now() }
func (realClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

// Option changes a Client built by New.
type Option func(*Client)

// WithHTTPClient makes the Client send through hc's Transport (nil Transport means
// http.DefaultTransport). Only the Transport is used: redirects are never followed (a redirect
// must not carry a bearer token elsewhere) and Config.Timeout bounds each attempt.
func WithHTTPClient(hc *http.Client) Option {
	return func(c *Client) {
		if hc != nil && hc.Transport != nil {
			c.base = hc.Transport
		}
	}
}

// WithLogger sets the logger (default: discard). The Client tags it with component=sink.sage and
// logs method, path, status, attempt and wait; never a header, body or token.
func WithLogger(l *slog.Logger) Option {
	return func(c *Client) {
		if l != nil {
			c.log = l
		}
	}
}

// WithClock replaces the wall clock (default time.Now and time.After); for tests.
func WithClock(clk Clock) Option {
	return func(c *Client) {
		if clk != nil {
			c.clock = clk
		}
	}
}

// WithBackoff sets the first and the longest wait between attempts when Sage gives no
// Retry-After (defaults DefaultBackoffInitial and DefaultBackoffMax), and the longest
// Retry-After waited out inside one call (default DefaultMaxRetryAfter). Zero keeps a default.
func WithBackoff(initial, max, maxRetryAfter time.Duration) Option {
	return func(c *Client) {
		if initial > 0 {
			c.backoffInitial = initial
		}
		if max > 0 {
			c.backoffMax = max
		}
		if maxRetryAfter > 0 {
			c.maxRetryAfter = maxRetryAfter
		}
	}
}

// Observer hears about the Client's traffic, for metrics. Its methods must be quick and safe
// for concurrent use; they are never given a header, a body or a token.
type Observer interface {
	// Request is called after every HTTP attempt to Sage (API and token endpoint) with the
	// method, the URL path and the status; status is 0 when no answer came (network error).
	Request(method, path string, status int)
	// Retry is called when a failed attempt is about to be sent again; status as in Request.
	Retry(method, path string, status int)
	// TokenRefresh is called after each refresh-token exchange with Sage, with its error (nil
	// when Sage issued a new token).
	TokenRefresh(err error)
}

type noObserver struct{}

func (noObserver) Request(string, string, int) {}
func (noObserver) Retry(string, string, int)   {}
func (noObserver) TokenRefresh(error)          {}

// WithObserver makes the Client report every attempt, retry and token refresh to o (default:
// nobody).
func WithObserver(o Observer) Option {
	return func(c *Client) {
		if o != nil {
			c.obs = o
		}
	}
}

// Client is the Sage Accounting v3.1 client shared by every company. It holds the app's OAuth2
// credentials, one rate limiter per business and one token state per connection (company), so
// that every Session of a company shares its refresh lock and rotated refresh token. It is safe
// for concurrent use.
type Client struct {
	cfg            Config
	apiURL         *url.URL
	base           http.RoundTripper
	log            *slog.Logger
	clock          Clock
	backoffInitial time.Duration
	backoffMax     time.Duration
	maxRetryAfter  time.Duration
	obs            Observer

	mu       sync.Mutex
	limiters map[string]*rate.Limiter // by business id
	tokens   map[int64]*tokenState    // by company id
}

// New returns a Client for cfg, filling zero fields with the defaults documented on Config.
// A malformed APIURL is reported by the first call, not here.
func New(cfg Config, opts ...Option) *Client {
	if cfg.APIURL == "" {
		cfg.APIURL = DefaultAPIURL
	}
	cfg.APIURL = strings.TrimRight(cfg.APIURL, "/")
	if cfg.AuthURL == "" {
		cfg.AuthURL = DefaultAuthURL
	}
	if cfg.TokenURL == "" {
		cfg.TokenURL = DefaultTokenURL
	}
	if cfg.RequestsPerMinute <= 0 {
		cfg.RequestsPerMinute = DefaultRequestsPerMinute
	}
	if cfg.MaxAttempts <= 0 {
		cfg.MaxAttempts = DefaultMaxAttempts
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	c := &Client{
		cfg:            cfg,
		base:           defaultTransport(),
		log:            slog.New(slog.DiscardHandler),
		clock:          realClock{},
		backoffInitial: DefaultBackoffInitial,
		backoffMax:     DefaultBackoffMax,
		maxRetryAfter:  DefaultMaxRetryAfter,
		obs:            noObserver{},
		limiters:       map[string]*rate.Limiter{},
		tokens:         map[int64]*tokenState{},
	}
	for _, o := range opts {
		o(c)
	}
	c.log = c.log.With("component", "sink.sage")
	if u, err := url.Parse(cfg.APIURL); err == nil && u.Scheme != "" && u.Host != "" {
		c.apiURL = u
	}
	return c
}

// AuthCodeURL returns the Sage authorize URL to send the user to (Sage's OAuth2 authorization
// code flow): AuthURL plus response_type=code, client_id, redirect_uri, scope=full_access and
// state. A query already in AuthURL (the default's filter=apiv3.1) is kept.
func (c *Client) AuthCodeURL(state string) string {
	v := url.Values{}
	v.Set("response_type", "code")
	v.Set("client_id", c.cfg.ClientID)
	v.Set("redirect_uri", c.cfg.RedirectURL)
	v.Set("scope", "full_access")
	v.Set("state", state)
	sep := "?"
	if strings.Contains(c.cfg.AuthURL, "?") {
		sep = "&"
		if strings.HasSuffix(c.cfg.AuthURL, "?") || strings.HasSuffix(c.cfg.AuthURL, "&") {
			sep = ""
		}
	}
	return c.cfg.AuthURL + sep + v.Encode()
}

// Exchange trades an authorization code (valid 60 s, single use) for the connection's first
// token: POST TokenURL, form-encoded grant_type=authorization_code with code, redirect_uri,
// client_id and client_secret in the body. The token's Expiry comes from expires_in (300 s) and
// RefreshExpiry(tok) from refresh_token_expires_in (31 days); Extra keeps Sage's other fields
// (scope, requested_by_id).
//
// A refused code (invalid_grant: expired, reused, or redirect_uri not matching) is a
// *PermanentError wrapping an *APIError whose DataCode is "invalid_grant": the user must
// connect again. 5xx, 429 and network failures are retried, then returned as *RetryableError.
func (c *Client) Exchange(ctx context.Context, code string) (*oauth2.Token, error) {
	form := url.Values{}
	form.Set("grant_type", "authorization_code")
	form.Set("code", code)
	form.Set("redirect_uri", c.cfg.RedirectURL)
	tok, err := c.tokenRequest(ctx, form)
	if err != nil {
		return nil, classifyExchangeError(err)
	}
	return tok, nil
}

// Session returns the calls for one company's Sage connection. conn.Token is the token last
// saved for the company; store receives every rotated token before it is used.
//
// Sessions of the same company (CompanyID) share one token state: a later Session whose token
// carries a refresh token this Client has already rotated away keeps the newer in-memory token,
// while a token from outside (a reconnect) replaces it and clears a lost connection. Session
// waits while a refresh of the same company is in flight.
//
// store may be nil only for a Session that will not need a refresh (the web connect flow right
// after Exchange, say): a due refresh with a nil store fails before asking Sage, so the stored
// refresh token is not spent.
func (c *Client) Session(conn Connection, store TokenStore) *Session {
	st := c.tokenState(conn.CompanyID)
	st.adopt(conn.Token)
	s := &Session{
		c:     c,
		conn:  Connection{CompanyID: conn.CompanyID, BusinessID: conn.BusinessID},
		store: store,
		tok:   st,
		log:   c.log.With("company", conn.CompanyID, "business", conn.BusinessID),
	}
	s.rt = &retryTransport{
		c:    c,
		log:  s.log,
		next: &authTransport{s: s, next: &limitTransport{lim: c.limiter(conn.BusinessID), clock: c.clock, next: &sendTransport{c: c, log: s.log}}},
	}
	return s
}

// tokenState returns the shared token state of a company, creating it on first use.
func (c *Client) tokenState(companyID int64) *tokenState {
	c.mu.Lock()
	defer c.mu.Unlock()
	st, ok := c.tokens[companyID]
	if !ok {
		st = newTokenState()
		c.tokens[companyID] = st
	}
	return st
}

// limiter returns the per-business limiter: RequestsPerMinute spread evenly, with a burst of a
// tenth of a minute's allowance.
func (c *Client) limiter(businessID string) *rate.Limiter {
	c.mu.Lock()
	defer c.mu.Unlock()
	l, ok := c.limiters[businessID]
	if !ok {
		burst := c.cfg.RequestsPerMinute / 10
		if burst < 1 {
			burst = 1
		}
		l = rate.NewLimiter(rate.Limit(float64(c.cfg.RequestsPerMinute)/60), burst)
		c.limiters[businessID] = l
	}
	return l
}

// RefreshExpiry returns when tok's refresh token expires: the time computed from Sage's
// refresh_token_expires_in when this package obtained tok (or set by WithRefreshExpiry), else an
// estimate of 31 days after the access token was issued (Expiry − 300 s), else the zero time.
// A token read back from storage has lost its Extra fields: persist RefreshExpiry(tok) beside
// it and restore it with WithRefreshExpiry.
func RefreshExpiry(tok *oauth2.Token) time.Time {
	if tok == nil {
		return time.Time{}
	}
	switch v := tok.Extra(extraRefreshExpiry).(type) {
	case time.Time:
		return v
	case string:
		if t, err := time.Parse(time.RFC3339Nano, v); err == nil {
			return t
		}
	}
	if tok.Expiry.IsZero() {
		return time.Time{}
	}
	return tok.Expiry.Add(-defaultAccessTTL).Add(defaultRefreshTTL)
}

// WithRefreshExpiry returns a copy of tok whose RefreshExpiry is t. The copy's Extra holds only
// that value: Sage's other response fields are not kept.
func WithRefreshExpiry(tok *oauth2.Token, t time.Time) *oauth2.Token {
	if tok == nil {
		return nil
	}
	return tok.WithExtra(map[string]any{extraRefreshExpiry: t.UTC().Format(time.RFC3339Nano)})
}

// defaultTransport is http.DefaultTransport keeping enough idle connections to Sage's one host
// for many companies calling at once (the default keeps 2, so most calls would dial anew): 200
// companies searching for three contacts at once need ~600. With 256, a limit-off run at 1,750
// changes a second opened 7,604 connections in two minutes and fell behind; with 1,024, 463.
// Idle ones close after 90 s. Over TLS Go speaks HTTP/2 where Sage offers it, and then one
// connection carries them all.
func defaultTransport() http.RoundTripper {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxIdleConns = 1024
	t.MaxIdleConnsPerHost = 1024
	return t
}
