package sage

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"golang.org/x/oauth2"
)

// extraRefreshExpiry is the Extra key under which this package keeps the absolute expiry of a
// token's refresh token (RFC 3339), computed from Sage's refresh_token_expires_in.
const extraRefreshExpiry = "gessync_refresh_token_expiry"

// ErrNoBusiness means a Session has no BusinessID: the company finished OAuth but no Sage
// business was chosen. Every call except Businesses refuses to run without one (Sage would
// otherwise use the user's lead business, which may be the wrong one). It comes wrapped in a
// *RetryableError together with ErrConnectionLost: the company's changes wait for a person.
var ErrNoBusiness = errors.New("sage connection has no business chosen")

// tokenState is one connection's token, shared by every Session of the company. sem is a
// one-slot semaphore held while the token is read, refreshed or saved, so two goroutines never
// refresh at once and a waiter can give up when its context ends.
type tokenState struct {
	sem chan struct{}

	tok     *oauth2.Token // in use: its refresh token is saved in the TokenStore
	pending *oauth2.Token // refreshed but not yet saved; never used until SaveToken succeeds
	lost    error         // set when Sage refused the refresh token (invalid_grant)
	retired map[[32]byte]struct{}

	smu     sync.Mutex
	secrets []string // recent access and refresh tokens, removed from any error text
}

func newTokenState() *tokenState {
	return &tokenState{sem: make(chan struct{}, 1), retired: map[[32]byte]struct{}{}}
}

func (st *tokenState) lock(ctx context.Context) error {
	select {
	case st.sem <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (st *tokenState) unlock() { <-st.sem }

// adopt takes tok as the connection's token unless it is the one in use or one this process
// already rotated away (a stale copy read from storage before our last refresh).
func (st *tokenState) adopt(tok *oauth2.Token) {
	if tok == nil {
		return
	}
	st.sem <- struct{}{}
	defer st.unlock()
	switch {
	case st.tok != nil && tok.RefreshToken == st.tok.RefreshToken && (tok.RefreshToken != "" || tok.AccessToken == st.tok.AccessToken):
		return // the generation in use (or the same refused one: still lost)
	case st.pending != nil && tok.RefreshToken == st.pending.RefreshToken:
		return
	case tok.RefreshToken != "":
		if _, old := st.retired[sha256.Sum256([]byte(tok.RefreshToken))]; old {
			return // a stale copy from before our last refresh
		}
	}
	st.tok, st.pending, st.lost = copyToken(tok), nil, nil
	st.remember(tok)
}

// remember adds tok's secrets to the redaction list, keeping the last few generations.
func (st *tokenState) remember(tok *oauth2.Token) {
	st.smu.Lock()
	defer st.smu.Unlock()
	for _, s := range []string{tok.AccessToken, tok.RefreshToken} {
		if s != "" {
			st.secrets = append(st.secrets, s)
		}
	}
	if n := len(st.secrets); n > 16 {
		st.secrets = append([]string(nil), st.secrets[n-16:]...)
	}
}

func (st *tokenState) secretList() []string {
	st.smu.Lock()
	defer st.smu.Unlock()
	return append([]string(nil), st.secrets...)
}

// retire records that refreshToken was exchanged, so a stale copy is never adopted again. Only
// a hash is kept.
func (st *tokenState) retire(refreshToken string) {
	if refreshToken != "" {
		st.retired[sha256.Sum256([]byte(refreshToken))] = struct{}{}
	}
}

func copyToken(t *oauth2.Token) *oauth2.Token {
	if t == nil {
		return nil
	}
	c := *t
	return &c
}

// Token returns the connection's current token, refreshing it first when the access token is
// within 60 s of its expiry (Sage access tokens live 300 s). The returned token is a copy.
// Errors are those of RefreshIfDue.
func (s *Session) Token(ctx context.Context) (*oauth2.Token, error) {
	return s.token(ctx, "", 0)
}

// RefreshIfDue refreshes the connection's token when its refresh token expires within `within`
// (see RefreshExpiry; an unknown expiry counts as due) or its access token within 60 s. The
// daemon calls it for quiet companies, well before the 31 days after which Sage refuses the
// refresh token and the company has to reconnect.
//
// Refreshes of one company are serialised; a refresh, once sent, is completed and saved even if
// ctx ends. The new token is handed to TokenStore.SaveToken and used only after SaveToken
// returned nil. Errors, all *RetryableError:
//   - wrapping ErrConnectionLost (and the *APIError) when Sage answers invalid_grant: the
//     refresh token was revoked, rotated elsewhere or expired; later calls fail the same way
//     without asking Sage until a new token is given to Client.Session;
//   - wrapping the TokenStore's error when saving failed: the new token is kept in memory and
//     saved again by the next call before it is used;
//   - wrapping an *APIError or a network error when the token endpoint failed otherwise.
func (s *Session) RefreshIfDue(ctx context.Context, within time.Duration) error {
	if within <= 0 {
		within = time.Nanosecond
	}
	_, err := s.token(ctx, "", within)
	return err
}

// token returns the token to use. replace, when non-empty, is an access token Sage just
// refused with 401: it is refreshed unless another goroutine already replaced it. within > 0
// also refreshes when the refresh token expires within that long.
func (s *Session) token(ctx context.Context, replace string, within time.Duration) (*oauth2.Token, error) {
	st := s.tok
	if err := st.lock(ctx); err != nil {
		return nil, err
	}
	defer st.unlock()

	if st.pending != nil {
		if err := s.savePending(ctx); err != nil {
			return nil, err
		}
	}
	if st.lost != nil {
		return nil, st.lost
	}
	if st.tok == nil {
		return nil, &RetryableError{Err: fmt.Errorf("sage token for company %d: none stored: %w", s.conn.CompanyID, ErrConnectionLost)}
	}
	now := s.c.clock.Now()
	due := st.tok.AccessToken == "" ||
		(replace != "" && replace == st.tok.AccessToken) ||
		(!st.tok.Expiry.IsZero() && !now.Add(refreshMargin).Before(st.tok.Expiry))
	if within > 0 {
		exp := RefreshExpiry(st.tok)
		due = due || exp.IsZero() || !now.Add(within).Before(exp)
	}
	if !due {
		return copyToken(st.tok), nil
	}
	if err := s.refreshLocked(ctx); err != nil {
		return nil, err
	}
	return copyToken(st.tok), nil
}

// refreshLocked exchanges the refresh token, then saves and adopts the new token. The caller
// holds st.sem.
func (s *Session) refreshLocked(ctx context.Context) error {
	st := s.tok
	old := st.tok
	if old.RefreshToken == "" {
		return &RetryableError{Err: fmt.Errorf("refreshing sage token for company %d: no refresh token: %w", s.conn.CompanyID, ErrConnectionLost)}
	}
	if s.store == nil {
		return &RetryableError{Err: fmt.Errorf("refreshing sage token for company %d: no token store to save the rotated token", s.conn.CompanyID)}
	}
	// Once sent, a refresh retires the old refresh token at Sage: finish it and keep the
	// answer even if the caller gives up.
	rctx := context.WithoutCancel(ctx)
	form := url.Values{}
	form.Set("grant_type", "refresh_token")
	form.Set("refresh_token", old.RefreshToken)
	tok, err := s.c.tokenRequest(rctx, form, st.secretList()...)
	s.c.obs.TokenRefresh(err)
	if err != nil {
		var apiErr *APIError
		if errors.As(err, &apiErr) && apiErr.DataCode() == "invalid_grant" {
			st.lost = &RetryableError{Err: fmt.Errorf("refreshing sage token for company %d: %w: %w", s.conn.CompanyID, ErrConnectionLost, apiErr)}
			s.log.Warn("sage refused the refresh token; the company must reconnect")
			return st.lost
		}
		var re *RetryableError
		switch {
		case errors.As(err, &re):
			return &RetryableError{Err: fmt.Errorf("refreshing sage token for company %d: %w", s.conn.CompanyID, re.Err), RetryAfter: re.RetryAfter}
		case apiErr != nil:
			return &RetryableError{Err: fmt.Errorf("refreshing sage token for company %d: %w", s.conn.CompanyID, apiErr), RetryAfter: apiErr.RetryAfter}
		}
		return &RetryableError{Err: fmt.Errorf("refreshing sage token for company %d: %w", s.conn.CompanyID, err)}
	}
	if tok.RefreshToken == "" {
		tok.RefreshToken = old.RefreshToken // Sage did not rotate: keep the one we have
	}
	st.remember(tok)
	st.pending = tok
	return s.savePending(ctx)
}

// savePending hands the pending token to the TokenStore and, once saved, makes it current.
func (s *Session) savePending(ctx context.Context) error {
	st := s.tok
	if s.store == nil {
		return &RetryableError{Err: fmt.Errorf("saving sage token for company %d: no token store", s.conn.CompanyID)}
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.c.cfg.Timeout)
	defer cancel()
	if err := s.store.SaveToken(sctx, s.conn.CompanyID, copyToken(st.pending)); err != nil {
		s.log.Warn("saving the rotated sage token failed; it stays unused until saved", "error", redact(err.Error(), st.secretList()))
		return &RetryableError{Err: fmt.Errorf("saving sage token for company %d: %w", s.conn.CompanyID, redactErr(err, st.secretList()))}
	}
	if st.tok != nil && st.tok.RefreshToken != st.pending.RefreshToken {
		st.retire(st.tok.RefreshToken)
	}
	st.tok, st.pending = st.pending, nil
	s.log.Info("sage token refreshed and saved", "expiry", st.tok.Expiry, "refresh_expiry", RefreshExpiry(st.tok))
	return nil
}

// tokenResponse is the JSON body of a successful POST to Sage's token endpoint.
type tokenResponse struct {
	AccessToken           string      `json:"access_token"`
	TokenType             string      `json:"token_type"`
	RefreshToken          string      `json:"refresh_token"`
	ExpiresIn             json.Number `json:"expires_in"`
	RefreshTokenExpiresIn json.Number `json:"refresh_token_expires_in"`
}

// tokenRequest posts form (plus client_id and client_secret) to TokenURL and decodes the token.
// Failures are an *APIError for a non-2xx answer (classified by the caller), a *RetryableError
// for an exhausted network failure, or a decoding error. secrets are removed from error text.
func (c *Client) tokenRequest(ctx context.Context, form url.Values, secrets ...string) (*oauth2.Token, error) {
	form.Set("client_id", c.cfg.ClientID)
	form.Set("client_secret", c.cfg.ClientSecret)
	secrets = append(secrets, c.cfg.ClientSecret, form.Get("code"), form.Get("refresh_token"))
	path := "/token"
	if u, err := url.Parse(c.cfg.TokenURL); err == nil && u.Path != "" {
		path = u.Path
	}
	body := []byte(form.Encode())
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.cfg.TokenURL, bytes.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("sage POST %s: building request: %w", path, redactErr(err, secrets))
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")
	rt := &retryTransport{c: c, log: c.log, next: &sendTransport{c: c, log: c.log}}
	resp, err := rt.RoundTrip(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("sage POST %s: %w", path, ctx.Err())
		}
		return nil, &RetryableError{Err: fmt.Errorf("sage POST %s: %w", path, redactErr(err, secrets))}
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, &RetryableError{Err: fmt.Errorf("sage POST %s: reading response: %w", path, redactErr(err, secrets))}
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return nil, newAPIError(http.MethodPost, path, resp, data, c.clock.Now(), secrets)
	}
	var tr tokenResponse
	if err := json.Unmarshal(data, &tr); err != nil || tr.AccessToken == "" {
		if err == nil {
			err = errors.New("no access_token")
		}
		return nil, &RetryableError{Err: fmt.Errorf("sage POST %s: decoding token response: %s", path, redact(err.Error(), secrets))}
	}
	now := c.clock.Now()
	tok := &oauth2.Token{AccessToken: tr.AccessToken, TokenType: tr.TokenType, RefreshToken: tr.RefreshToken}
	if n, err := tr.ExpiresIn.Int64(); err == nil && n > 0 {
		tok.ExpiresIn = n
		tok.Expiry = now.Add(time.Duration(n) * time.Second)
	}
	extra := map[string]any{}
	var raw map[string]any
	if json.Unmarshal(data, &raw) == nil {
		for k, v := range raw {
			if k != "access_token" && k != "refresh_token" && !strings.HasPrefix(k, "id_token") {
				extra[k] = v
			}
		}
	}
	if n, err := tr.RefreshTokenExpiresIn.Int64(); err == nil && n > 0 {
		extra[extraRefreshExpiry] = now.Add(time.Duration(n) * time.Second).UTC().Format(time.RFC3339Nano)
	}
	return tok.WithExtra(extra), nil
}

// classifyExchangeError turns a tokenRequest failure of the authorization-code grant into a
// *RetryableError (429, 5xx, network) or a *PermanentError (a refused code or client).
func classifyExchangeError(err error) error {
	var apiErr *APIError
	if errors.As(err, &apiErr) {
		if retryableStatus(apiErr.StatusCode) {
			return &RetryableError{Err: fmt.Errorf("exchanging sage authorization code: %w", apiErr), RetryAfter: apiErr.RetryAfter}
		}
		return &PermanentError{Err: fmt.Errorf("exchanging sage authorization code: %w", apiErr)}
	}
	var re *RetryableError
	if errors.As(err, &re) {
		return &RetryableError{Err: fmt.Errorf("exchanging sage authorization code: %w", re.Err), RetryAfter: re.RetryAfter}
	}
	return fmt.Errorf("exchanging sage authorization code: %w", err)
}
