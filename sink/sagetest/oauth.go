package sagetest

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"net/http"
	"net/url"
	"time"
)

// Lifetimes Sage documents for its OAuth artefacts.
const (
	codeTTL          = 60 * time.Second
	accessTokenTTL   = 300 * time.Second
	refreshTokenTTL  = 31 * 24 * time.Hour // 2678400 s
	idempotencyTTL   = 7 * 24 * time.Hour
	rateLimitWindow  = 60 * time.Second
	scopeFullAccess  = "full_access"
	scopeReadOnly    = "readonly"
	kindAccessToken  = "access"
	kindRefreshToken = "refresh"
)

type authCode struct {
	business              *business
	clientID, redirectURI string
	scope                 string
	expires               time.Time
}

type token struct {
	kind     string
	business *business
	gen      int // business.tokenGen when issued
	scope    string
	expires  time.Time
}

// valid reports whether t may be used at now.
func (t *token) valid(now time.Time) bool {
	return t.gen == t.business.tokenGen && now.Before(t.expires)
}

// tokenResponse is the body of a successful POST /token.
type tokenResponse struct {
	AccessToken           string `json:"access_token"`
	TokenType             string `json:"token_type"`
	ExpiresIn             int    `json:"expires_in"`
	RefreshToken          string `json:"refresh_token"`
	RefreshTokenExpiresIn int    `json:"refresh_token_expires_in"`
	Scope                 string `json:"scope"`
	RequestedByID         string `json:"requested_by_id"`
}

func secret() string {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b[:])
}

// issue mints an access and a refresh token for b. Callers hold s.mu.
func (s *Sandbox) issue(b *business, scope string) tokenResponse {
	now := s.opts.Now()
	s.pruneTokens(now)
	access, refresh := secret(), secret()
	s.tokens[access] = &token{kind: kindAccessToken, business: b, gen: b.tokenGen, scope: scope, expires: now.Add(accessTokenTTL)}
	s.tokens[refresh] = &token{kind: kindRefreshToken, business: b, gen: b.tokenGen, scope: scope, expires: now.Add(refreshTokenTTL)}
	return tokenResponse{
		AccessToken: access, TokenType: "bearer", ExpiresIn: int(accessTokenTTL.Seconds()),
		RefreshToken: refresh, RefreshTokenExpiresIn: int(refreshTokenTTL.Seconds()),
		Scope: scope, RequestedByID: b.userID,
	}
}

// pruneTokens forgets tokens and codes that can no longer be used.
func (s *Sandbox) pruneTokens(now time.Time) {
	for k, t := range s.tokens {
		if !t.valid(now) {
			delete(s.tokens, k)
		}
	}
	for k, c := range s.codes {
		if !now.Before(c.expires) {
			delete(s.codes, k)
		}
	}
}

// Mint issues an access token (300 s) and a refresh token (31 days) for the business, as if
// its owner had just connected, without the OAuth redirect. It panics if there is no such
// business.
func (s *Sandbox) Mint(businessID string) (access, refresh string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	b, ok := s.businesses.get(businessID)
	if !ok {
		panic("sagetest: Mint: no business " + businessID)
	}
	t := s.issue(b, scopeFullAccess)
	return t.AccessToken, t.RefreshToken
}

// authorize serves GET /oauth2/auth/central
// (?response_type=code&client_id=&redirect_uri=&scope=&state=): the user approves at once and
// is redirected (302) to redirect_uri with code and state.
//
// Sandbox-only parameters: business_id connects an existing business instead of creating
// "Sandbox Business N"; tier=start|standard|plus and bank_accounts=none shape the new one;
// deny=1 refuses consent (redirect with error=access_denied).
func (s *Sandbox) authorize(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	q := r.URL.Query()
	if q.Get("response_type") != "code" {
		http.Error(w, "response_type must be code", http.StatusBadRequest)
		return
	}
	if s.opts.ClientID != "" && q.Get("client_id") != s.opts.ClientID {
		http.Error(w, "unknown client_id", http.StatusBadRequest)
		return
	}
	redirect, err := url.Parse(q.Get("redirect_uri"))
	if err != nil || !redirect.IsAbs() || redirect.Host == "" {
		http.Error(w, "redirect_uri must be an absolute URL", http.StatusBadRequest)
		return
	}
	scope := q.Get("scope")
	if scope == "" {
		scope = scopeFullAccess
	}
	if scope != scopeFullAccess && scope != scopeReadOnly {
		http.Error(w, "scope must be full_access or readonly", http.StatusBadRequest)
		return
	}
	back := redirect.Query()
	if q.Get("state") != "" {
		back.Set("state", q.Get("state"))
	}
	if q.Get("deny") != "" {
		back.Set("error", "access_denied")
		redirect.RawQuery = back.Encode()
		http.Redirect(w, r, redirect.String(), http.StatusFound)
		return
	}

	s.mu.Lock()
	var b *business
	if id := q.Get("business_id"); id != "" {
		var ok bool
		if b, ok = s.businesses.get(id); !ok {
			s.mu.Unlock()
			http.Error(w, "unknown business_id", http.StatusBadRequest)
			return
		}
	} else {
		if b, err = s.createBusiness("", q.Get("tier"), q.Get("bank_accounts") == "none"); err != nil {
			s.mu.Unlock()
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
	}
	code := secret()
	s.codes[code] = &authCode{
		business: b, clientID: q.Get("client_id"), redirectURI: q.Get("redirect_uri"), scope: scope,
		expires: s.opts.Now().Add(codeTTL),
	}
	s.mu.Unlock()

	back.Set("code", code)
	redirect.RawQuery = back.Encode()
	http.Redirect(w, r, redirect.String(), http.StatusFound)
}

// token serves POST /token (application/x-www-form-urlencoded): grant_type
// authorization_code (code, redirect_uri) or refresh_token (refresh_token), with client_id and
// client_secret in the form or in HTTP Basic auth. Errors are 400 {"error":"invalid_grant"} and
// the like.
func (s *Sandbox) token(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "no-store")
	if r.Method != http.MethodPost {
		writeJSON(w, http.StatusMethodNotAllowed, oauthError("invalid_request"))
		return
	}
	if err := r.ParseForm(); err != nil {
		writeJSON(w, http.StatusBadRequest, oauthError("invalid_request"))
		return
	}
	clientID, clientSecret, basic := r.BasicAuth()
	if !basic {
		clientID, clientSecret = r.PostForm.Get("client_id"), r.PostForm.Get("client_secret")
	}
	if s.opts.ClientID != "" && (!equal(clientID, s.opts.ClientID) || !equal(clientSecret, s.opts.ClientSecret)) {
		writeJSON(w, http.StatusUnauthorized, oauthError("invalid_client"))
		return
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.opts.Now()
	switch r.PostForm.Get("grant_type") {
	case "authorization_code":
		code := r.PostForm.Get("code")
		c, ok := s.codes[code]
		if !ok {
			writeJSON(w, http.StatusBadRequest, oauthError("invalid_grant"))
			return
		}
		delete(s.codes, code) // single use, even when the exchange fails
		if !now.Before(c.expires) || c.redirectURI != r.PostForm.Get("redirect_uri") ||
			(c.clientID != "" && c.clientID != clientID) {
			writeJSON(w, http.StatusBadRequest, oauthError("invalid_grant"))
			return
		}
		writeJSON(w, http.StatusOK, s.issue(c.business, c.scope))
	case "refresh_token":
		rt := r.PostForm.Get("refresh_token")
		t, ok := s.tokens[rt]
		if !ok || t.kind != kindRefreshToken || !t.valid(now) {
			writeJSON(w, http.StatusBadRequest, oauthError("invalid_grant"))
			return
		}
		delete(s.tokens, rt) // rotation: the old refresh token is retired at once
		writeJSON(w, http.StatusOK, s.issue(t.business, t.scope))
	case "":
		writeJSON(w, http.StatusBadRequest, oauthError("invalid_request"))
	default:
		writeJSON(w, http.StatusBadRequest, oauthError("unsupported_grant_type"))
	}
}

func oauthError(code string) map[string]string { return map[string]string{"error": code} }

func equal(a, b string) bool { return subtle.ConstantTimeCompare([]byte(a), []byte(b)) == 1 }
