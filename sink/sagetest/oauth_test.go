package sagetest_test

import (
	"net/url"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/gessync/gessync/sink/sagetest"
)

const redirectURI = "https://gessync.example/oauth/callback"

func authParams(extra ...string) url.Values {
	v := url.Values{"response_type": {"code"}, "client_id": {"cid"}, "redirect_uri": {redirectURI},
		"scope": {"full_access"}, "state": {"st4te"}}
	for i := 0; i+1 < len(extra); i += 2 {
		v.Set(extra[i], extra[i+1])
	}
	return v
}

func exchange(code string) url.Values {
	return url.Values{"grant_type": {"authorization_code"}, "code": {code}, "redirect_uri": {redirectURI},
		"client_id": {"cid"}, "client_secret": {"secret"}}
}

func refresh(rt string) url.Values {
	return url.Values{"grant_type": {"refresh_token"}, "refresh_token": {rt}, "client_id": {"cid"}, "client_secret": {"secret"}}
}

func withClient(o *sagetest.Options) { o.ClientID, o.ClientSecret = "cid", "secret" }

func TestOAuthFlow(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "standard", withClient)

	status, q := e.authorize(authParams())
	require.Equal(t, 302, status)
	require.Equal(t, "st4te", q.Get("state"))
	code := q.Get("code")
	require.NotEmpty(t, code)

	status, tok := e.tokenRequest(exchange(code))
	require.Equal(t, 200, status, tok)
	require.Equal(t, "bearer", tok["token_type"])
	require.EqualValues(t, 300, tok["expires_in"])
	require.EqualValues(t, 2678400, tok["refresh_token_expires_in"])
	require.Equal(t, "full_access", tok["scope"])
	require.NotEmpty(t, tok["requested_by_id"])
	access, rt := tok["access_token"].(string), tok["refresh_token"].(string)

	// The new connection got a new business "Sandbox Business N" with a current account.
	var list struct {
		Items []struct {
			ID          string `json:"id"`
			DisplayedAs string `json:"displayed_as"`
		} `json:"$items"`
		ItemsPerPage int `json:"$items_per_page"`
	}
	r := e.doAs(access, "", "GET", "/businesses", nil)
	require.Equal(t, 200, r.status, string(r.body))
	r.json(t, &list)
	require.Len(t, list.Items, 1)
	require.Equal(t, "Sandbox Business 2", list.Items[0].DisplayedAs)
	require.NotZero(t, list.ItemsPerPage)
	newBiz := list.Items[0].ID
	require.Regexp(t, "^[0-9a-f]{32}$", newBiz)
	b := e.srv.Dump().Business(newBiz)
	require.Equal(t, "standard", b.Tier)
	require.Len(t, b.BankAccounts, 1)
	require.Equal(t, "CHECKING", b.BankAccounts[0].BankAccountType.ID)
	require.Equal(t, "Current Account", b.BankAccounts[0].BankAccountDetails.AccountName)

	// The code is single use.
	status, body := e.tokenRequest(exchange(code))
	require.Equal(t, 400, status)
	require.Equal(t, "invalid_grant", body["error"])

	// Refresh rotates: a new refresh token, the old one retired.
	status, tok2 := e.tokenRequest(refresh(rt))
	require.Equal(t, 200, status, tok2)
	require.NotEqual(t, rt, tok2["refresh_token"])
	status, body = e.tokenRequest(refresh(rt))
	require.Equal(t, 400, status)
	require.Equal(t, "invalid_grant", body["error"])
	status, _ = e.tokenRequest(refresh(tok2["refresh_token"].(string)))
	require.Equal(t, 200, status)

	// The access token lasts 300 s.
	e.clock.Advance(299 * time.Second)
	require.Equal(t, 200, e.doAs(access, newBiz, "GET", "/contacts", nil).status)
	e.clock.Advance(time.Second)
	r = e.doAs(access, newBiz, "GET", "/contacts", nil)
	require.Equal(t, 401, r.status)
	require.Equal(t, []errItem{{"error", "AuthorizationFailure", "Access denied.", ""}}, r.errors(t))
}

func TestOAuthRefusals(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "standard", withClient)
	code := func(e *env, extra ...string) string {
		status, q := e.authorize(authParams(extra...))
		require.Equal(t, 302, status)
		return q.Get("code")
	}

	t.Run("error - code older than 60 s", func(t *testing.T) {
		e := e.with(t)
		c := code(e)
		e.clock.Advance(61 * time.Second)
		status, body := e.tokenRequest(exchange(c))
		require.Equal(t, 400, status)
		require.Equal(t, "invalid_grant", body["error"])
	})
	t.Run("error - redirect_uri differs by one character", func(t *testing.T) {
		e := e.with(t)
		form := exchange(code(e))
		form.Set("redirect_uri", redirectURI+"/")
		status, body := e.tokenRequest(form)
		require.Equal(t, 400, status)
		require.Equal(t, "invalid_grant", body["error"])
	})
	t.Run("error - wrong client secret", func(t *testing.T) {
		e := e.with(t)
		form := exchange(code(e))
		form.Set("client_secret", "nope")
		status, body := e.tokenRequest(form)
		require.Equal(t, 401, status)
		require.Equal(t, "invalid_client", body["error"])
	})
	t.Run("error - unknown client on authorize", func(t *testing.T) {
		e := e.with(t)
		status, _ := e.authorize(authParams("client_id", "other"))
		require.Equal(t, 400, status)
	})
	t.Run("error - refresh token after 31 days", func(t *testing.T) {
		e := e.with(t)
		status, tok := e.tokenRequest(exchange(code(e)))
		require.Equal(t, 200, status)
		e.clock.Advance(31*24*time.Hour + time.Second)
		status, body := e.tokenRequest(refresh(tok["refresh_token"].(string)))
		require.Equal(t, 400, status)
		require.Equal(t, "invalid_grant", body["error"])
	})
	t.Run("ok - deny redirects with access_denied", func(t *testing.T) {
		e := e.with(t)
		status, q := e.authorize(authParams("deny", "1"))
		require.Equal(t, 302, status)
		require.Equal(t, "access_denied", q.Get("error"))
		require.Empty(t, q.Get("code"))
	})
	t.Run("ok - business_id reconnects an existing business", func(t *testing.T) {
		e := e.with(t)
		before := len(e.srv.Dump().Businesses)
		status, tok := e.tokenRequest(exchange(code(e, "business_id", e.biz.ID)))
		require.Equal(t, 200, status)
		require.Len(t, e.srv.Dump().Businesses, before)
		r := e.doAs(tok["access_token"].(string), "", "GET", "/contacts", nil)
		require.Equal(t, 200, r.status)
	})
	t.Run("ok - tier and bank_accounts=none shape the new business", func(t *testing.T) {
		e := e.with(t)
		status, tok := e.tokenRequest(exchange(code(e, "tier", "start", "bank_accounts", "none")))
		require.Equal(t, 200, status)
		var page struct {
			Total int `json:"$total"`
		}
		r := e.doAs(tok["access_token"].(string), "", "GET", "/bank_accounts", nil)
		require.Equal(t, 200, r.status)
		r.json(t, &page)
		require.Zero(t, page.Total)
		d := e.srv.Dump()
		require.Equal(t, "start", d.Businesses[len(d.Businesses)-1].Tier)
	})
}

func TestTokenReachesOnlyItsBusiness(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "standard")
	other := e.srv.CreateBusiness("Other Ltd", "plus")

	r := e.doAs(e.token, other.ID, "GET", "/contacts", nil)
	require.Equal(t, 403, r.status)
	// Without X-Business the token's own (lead) business is used.
	e.contact("Lead Customer")
	var page struct {
		Total int `json:"$total"`
	}
	e.doAs(e.token, "", "GET", "/contacts", nil).json(t, &page)
	require.Equal(t, 1, page.Total)

	for _, tok := range []string{"", "not-a-token"} {
		r := e.doAs(tok, e.biz.ID, "GET", "/contacts", nil)
		require.Equal(t, 401, r.status)
		require.Equal(t, "AuthorizationFailure", r.errors(t)[0].DataCode)
	}
}
