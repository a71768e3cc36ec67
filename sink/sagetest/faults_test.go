package sagetest_test

import (
	"net/url"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/gessync/gessync/sink/sagetest"
)

var unexpected = []errItem{{"error", "UnexpectedError", "An unexpected error occurred.", ""}}

func TestFailAll(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "standard")

	r := e.setFaults(obj{"fail_all": true})
	require.Equal(t, 200, r.status, string(r.body))
	for _, tok := range []string{e.token, "bad-token"} {
		r := e.doAs(tok, e.biz.ID, "GET", "/contacts", nil)
		require.Equal(t, 500, r.status)
		require.Equal(t, unexpected, r.errors(t))
	}
	require.True(t, e.srv.Faults().FailAll)
	require.Equal(t, 200, e.setFaults(obj{"fail_all": false}).status)
	e.must(200, "GET", "/contacts", nil)
}

func TestFaultCounters(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "standard")

	t.Run("ok - fail_next fails that many calls", func(t *testing.T) {
		e := e.with(t)
		e.setFaults(obj{"fail_next": 2})
		e.must(500, "GET", "/contacts", nil)
		e.must(500, "GET", "/contacts", nil)
		e.must(200, "GET", "/contacts", nil)
	})
	t.Run("ok - reset_next closes the connection without a reply", func(t *testing.T) {
		e := e.with(t)
		e.srv.SetFaults(sagetest.Faults{FaultSet: sagetest.FaultSet{ResetNext: 1}})
		_, err := e.srv.Client().Get(e.srv.APIURL() + "/contacts")
		require.Error(t, err)
		e.must(200, "GET", "/contacts", nil)
	})
	t.Run("ok - drop_next applies the write and loses the reply", func(t *testing.T) {
		e := e.with(t)
		e.setFaults(obj{"businesses": obj{e.biz.ID: obj{"drop_next": 1}}})
		body := obj{"contact": obj{"name": "Dropped", "contact_type_ids": []string{"CUSTOMER"}, "idempotency_id": "0000000000000000000000000000d10b"}}
		_, err := e.post("/contacts", body)
		require.Error(t, err, "the reply is lost")
		require.Len(t, e.srv.Dump().Business(e.biz.ID).Contacts, 1, "but the write happened")
		// The retry with the same idempotency_id gets the first result.
		var c sagetest.Contact
		e.must(201, "POST", "/contacts", body).json(t, &c)
		require.Equal(t, "Dropped", c.Name)
		require.Len(t, e.srv.Dump().Business(e.biz.ID).Contacts, 1)
		require.Zero(t, e.srv.Faults().Businesses[e.biz.ID].DropNext, "the counter ran down")
	})
	t.Run("ok - latency delays calls", func(t *testing.T) {
		e := e.with(t)
		e.setFaults(obj{"latency": "60ms"})
		start := time.Now()
		e.must(200, "GET", "/contacts", nil)
		require.GreaterOrEqual(t, time.Since(start), 60*time.Millisecond)
		e.setFaults(obj{})
	})
}

func TestBusinessFaultsAndStates(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "standard")
	other := e.srv.CreateBusiness("Other", "standard")
	otherToken, _ := e.srv.Mint(other.ID)

	t.Run("ok - error_rate 1 for one business leaves the other alone", func(t *testing.T) {
		e := e.with(t)
		e.setFaults(obj{"businesses": obj{e.biz.ID: obj{"error_rate": 1}}})
		e.must(500, "GET", "/contacts", nil)
		require.Equal(t, 200, e.doAs(otherToken, other.ID, "GET", "/contacts", nil).status)
		e.setFaults(obj{})
	})
	t.Run("error - read-only user may read but not write", func(t *testing.T) {
		e := e.with(t)
		e.setFaults(obj{"businesses": obj{e.biz.ID: obj{"read_only": true}}})
		e.must(200, "GET", "/contacts", nil)
		r := e.must(403, "POST", "/contacts", obj{"contact": obj{"name": "X", "contact_type_ids": []string{"CUSTOMER"}}})
		require.Equal(t, "MultiUserAccessDenied", r.errors(t)[0].DataCode)
		e.setFaults(obj{})
	})
	t.Run("error - lapsed subscription", func(t *testing.T) {
		e := e.with(t)
		e.setFaults(obj{"businesses": obj{e.biz.ID: obj{"subscription_lapsed": true}}})
		r := e.must(401, "GET", "/contacts", nil)
		require.Equal(t, []errItem{{"error", "AuthorizationFailure", "No active subscription. (MSE)", ""}}, r.errors(t))
		e.setFaults(obj{})
	})
	t.Run("error - revoked tokens", func(t *testing.T) {
		e := e.with(t)
		_, refreshToken := e.srv.Mint(e.biz.ID)
		r := e.setFaults(obj{"businesses": obj{e.biz.ID: obj{"revoke_tokens": true}}})
		require.Equal(t, 200, r.status)
		require.False(t, e.srv.Faults().Businesses[e.biz.ID].RevokeTokens, "an action, not a state")
		e.must(401, "GET", "/contacts", nil)
		status, body := e.tokenRequest(url.Values{"grant_type": {"refresh_token"}, "refresh_token": {refreshToken}})
		require.Equal(t, 400, status)
		require.Equal(t, "invalid_grant", body["error"])
		e.remint()
		e.must(200, "GET", "/contacts", nil)
		require.Equal(t, 200, e.doAs(otherToken, other.ID, "GET", "/contacts", nil).status, "other businesses keep their tokens")
	})
	t.Run("error - bad fault settings", func(t *testing.T) {
		e := e.with(t)
		require.Equal(t, 422, e.setFaults(obj{"error_rate": 2}).status)
		require.Equal(t, 422, e.setFaults(obj{"businesses": obj{"nope": obj{"read_only": true}}}).status)
		require.Equal(t, 400, e.setFaults(obj{"fail_everything": true}).status)
		require.Panics(t, func() { e.srv.SetFaults(sagetest.Faults{FaultSet: sagetest.FaultSet{DropRate: -1}}) })
	})
}

func TestRateLimit(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "standard", func(o *sagetest.Options) { o.RateLimit = 3 })
	for range 3 {
		e.must(200, "GET", "/contacts", nil)
	}
	r := e.must(429, "GET", "/contacts", nil)
	require.Equal(t, "60", r.header.Get("Retry-After"))
	require.Equal(t, "TooManyRequests", r.errors(t)[0].DataCode)

	e.clock.Advance(45 * time.Second)
	r = e.must(429, "GET", "/contacts", nil)
	require.Equal(t, "15", r.header.Get("Retry-After"))

	e.clock.Advance(15 * time.Second)
	e.remint()
	e.must(200, "GET", "/contacts", nil)

	// Another business has its own allowance.
	other := e.srv.CreateBusiness("Other", "standard")
	tok, _ := e.srv.Mint(other.ID)
	require.Equal(t, 200, e.doAs(tok, other.ID, "GET", "/contacts", nil).status)

	off := newEnv(t, "standard", func(o *sagetest.Options) { o.RateLimit = -1 })
	for range 250 {
		off.must(200, "GET", "/tax_rates", nil)
	}
}
