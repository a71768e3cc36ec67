package sage

import (
	"context"
	"errors"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/oauth2"
)

func TestSession_TokenRefreshWhenDue(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name          string
		expiresIn     time.Duration // from now; 0 means no Expiry
		wantRefreshed bool
	}{
		{name: "ok - fresh token is used", expiresIn: 2 * time.Minute, wantRefreshed: false},
		{name: "ok - token inside the 60 s margin is refreshed", expiresIn: 30 * time.Second, wantRefreshed: true},
		{name: "ok - token exactly 60 s from expiry is refreshed", expiresIn: 60 * time.Second, wantRefreshed: true},
		{name: "ok - expired token is refreshed", expiresIn: -time.Hour, wantRefreshed: true},
		{name: "ok - token without expiry is used until Sage says 401", expiresIn: 0, wantRefreshed: false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newTestEnv(t)
			var exp time.Time
			if tc.expiresIn != 0 {
				exp = e.clock.Now().Add(tc.expiresIn)
			}
			tok := e.sage.seed(exp)
			s := e.client.Session(Connection{CompanyID: 1, BusinessID: testBusiness, Token: tok}, e.store)
			_, err := s.GetContact(context.Background(), "c1")
			require.NoError(t, err)
			reqs := e.sage.Requests()
			require.Len(t, reqs, 1)
			if !tc.wantRefreshed {
				assert.Zero(t, e.sage.Refreshes())
				assert.Empty(t, e.store.Saved())
				assert.Equal(t, "Bearer "+accessToken(1), reqs[0].Header.Get("Authorization"))
				return
			}
			assert.Equal(t, 1, e.sage.Refreshes())
			require.Len(t, e.store.Saved(), 1)
			saved := e.store.Saved()[0]
			assert.Equal(t, refreshToken(2), saved.RefreshToken)
			assert.Equal(t, accessToken(2), saved.AccessToken)
			assert.Equal(t, e.clock.Now().Add(300*time.Second), saved.Expiry)
			assert.Equal(t, e.clock.Now().Add(2678400*time.Second), RefreshExpiry(saved))
			assert.Equal(t, "Bearer "+accessToken(2), reqs[0].Header.Get("Authorization"))
		})
	}
}

// TestSession_RotationPersistedBeforeUse checks the rotated token reaches SaveToken before Sage
// sees the new access token, and that the refresh form carries the client credentials.
func TestSession_RotationPersistedBeforeUse(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	var mu sync.Mutex
	var form map[string][]string
	e.sage.token = func(_ http.ResponseWriter, _ *http.Request, f map[string][]string) bool {
		mu.Lock()
		defer mu.Unlock()
		form = f
		return false
	}
	tok := e.sage.seed(e.clock.Now().Add(10 * time.Second))
	s := e.client.Session(Connection{CompanyID: 7, BusinessID: testBusiness, Token: tok}, e.store)
	_, err := s.GetContact(context.Background(), "c1")
	require.NoError(t, err)

	assert.Equal(t, []string{"save " + refreshToken(2), "use " + accessToken(2)}, e.sage.events.all())
	mu.Lock()
	assert.Equal(t, "refresh_token", first(form, "grant_type"))
	assert.Equal(t, refreshToken(1), first(form, "refresh_token"))
	assert.Equal(t, testClientID, first(form, "client_id"))
	assert.Equal(t, testClientSecret, first(form, "client_secret"))
	mu.Unlock()

	got, err := s.Token(context.Background())
	require.NoError(t, err)
	assert.Equal(t, accessToken(2), got.AccessToken)
	assert.Equal(t, 1, e.sage.Refreshes(), "the saved token is reused, not refreshed again")
}

// TestSession_SaveFailure checks a token that could not be saved is never used, and is saved
// (not refreshed again, which Sage would refuse) by the next call.
func TestSession_SaveFailure(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	storeErr := errors.New("state: database unavailable")
	e.store.err = func(n int) error {
		if n == 1 {
			return storeErr
		}
		return nil
	}
	s := e.client.Session(Connection{CompanyID: 1, BusinessID: testBusiness, Token: e.sage.seed(e.clock.Now())}, e.store)

	_, err := s.GetContact(context.Background(), "c1")
	require.ErrorIs(t, err, storeErr)
	assert.True(t, IsRetryable(err))
	assert.NotErrorIs(t, err, ErrConnectionLost)
	assert.Empty(t, e.sage.Requests(), "no API call before the token is saved")
	assert.Equal(t, 1, e.sage.Refreshes())

	_, err = s.GetContact(context.Background(), "c1")
	require.NoError(t, err)
	assert.Equal(t, 1, e.sage.Refreshes(), "the pending token is saved, not refreshed again")
	require.Len(t, e.store.Saved(), 1)
	assert.Equal(t, refreshToken(2), e.store.Saved()[0].RefreshToken)
	reqs := e.sage.Requests()
	require.Len(t, reqs, 1)
	assert.Equal(t, "Bearer "+accessToken(2), reqs[0].Header.Get("Authorization"))
}

func TestSession_ConcurrentCallsRefreshOnce(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	tok := e.sage.seed(e.clock.Now().Add(5 * time.Second))
	// Two Sessions of the same company share the refresh.
	s1 := e.client.Session(Connection{CompanyID: 1, BusinessID: testBusiness, Token: tok}, e.store)
	s2 := e.client.Session(Connection{CompanyID: 1, BusinessID: testBusiness, Token: tok}, e.store)

	const n = 20
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := s1
			if i%2 == 1 {
				s = s2
			}
			_, errs[i] = s.GetContact(context.Background(), "c1")
		}()
	}
	wg.Wait()
	for _, err := range errs {
		require.NoError(t, err)
	}
	assert.Equal(t, 1, e.sage.Refreshes())
	assert.Len(t, e.store.Saved(), 1)
	for _, r := range e.sage.Requests() {
		assert.Equal(t, "Bearer "+accessToken(2), r.Header.Get("Authorization"))
	}
}

// TestSession_StaleConnectionKeepsRotatedToken: a Session built later from the token read
// before our refresh must not send the retired refresh token (Sage would answer invalid_grant).
func TestSession_StaleConnectionKeepsRotatedToken(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	stale := e.sage.seed(e.clock.Now().Add(5 * time.Second))
	s := e.client.Session(Connection{CompanyID: 1, BusinessID: testBusiness, Token: stale}, e.store)
	_, err := s.Token(context.Background())
	require.NoError(t, err)
	require.Equal(t, 1, e.sage.Refreshes())

	e.clock.Advance(10 * time.Minute)
	later := e.client.Session(Connection{CompanyID: 1, BusinessID: testBusiness, Token: stale}, e.store)
	_, err = later.GetContact(context.Background(), "c1")
	require.NoError(t, err)
	assert.Equal(t, 2, e.sage.Refreshes())
	assert.Equal(t, refreshToken(3), e.store.Saved()[1].RefreshToken)
}

func TestSession_InvalidGrant(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	tok := e.sage.seed(e.clock.Now())
	tok.RefreshToken = refreshToken(99) // rotated elsewhere: Sage no longer knows it
	s := e.client.Session(Connection{CompanyID: 1, BusinessID: testBusiness, Token: tok}, e.store)

	_, err := s.CreateContact(context.Background(), ContactRequest{Name: "A"})
	require.ErrorIs(t, err, ErrConnectionLost)
	assert.True(t, IsRetryable(err))
	var apiErr *APIError
	require.ErrorAs(t, err, &apiErr)
	assert.Equal(t, "invalid_grant", apiErr.DataCode())
	assert.Equal(t, http.StatusBadRequest, apiErr.StatusCode)
	assert.Empty(t, e.sage.Requests())
	assert.Empty(t, e.store.Saved())

	_, err = s.GetContact(context.Background(), "c1")
	require.ErrorIs(t, err, ErrConnectionLost)
	assert.Equal(t, 1, e.sage.Refreshes(), "a lost connection does not ask Sage again")

	// The company reconnects: a token from outside revives the connection.
	fresh, err := e.client.Exchange(context.Background(), testCode)
	require.NoError(t, err)
	s = e.client.Session(Connection{CompanyID: 1, BusinessID: testBusiness, Token: fresh}, e.store)
	_, err = s.GetContact(context.Background(), "c1")
	require.NoError(t, err)
}

func TestSession_Unauthorized(t *testing.T) {
	t.Parallel()
	t.Run("ok - 401 refreshes once and retries", func(t *testing.T) {
		t.Parallel()
		e := newTestEnv(t)
		s := e.session()
		e.sage.revokeAccess() // Sage forgot the access token before its expiry
		c, err := s.UpdateContact(context.Background(), "c1", ContactRequest{Name: "B"})
		require.NoError(t, err)
		assert.Equal(t, "x", c.ID)
		assert.Equal(t, 1, e.sage.Refreshes())
		reqs := e.sage.Requests()
		require.Len(t, reqs, 2)
		assert.Equal(t, "Bearer "+accessToken(1), reqs[0].Header.Get("Authorization"))
		assert.Equal(t, "Bearer "+accessToken(2), reqs[1].Header.Get("Authorization"))
		assert.Equal(t, string(reqs[0].Body), string(reqs[1].Body))
	})
	t.Run("error - still 401 after a fresh token", func(t *testing.T) {
		t.Parallel()
		e := newTestEnv(t)
		e.sage.acceptAnyBearer = true
		e.sage.api = func(w http.ResponseWriter, _ *http.Request, _ recorded, _ int) {
			writeRaw(w, http.StatusUnauthorized, string(mustRead("documented/error_401_authorization_failure_no_subscription.json")))
		}
		s := e.session()
		_, err := s.GetSalesInvoice(context.Background(), "si1")
		require.ErrorIs(t, err, ErrConnectionLost)
		assert.True(t, IsRetryable(err))
		var apiErr *APIError
		require.ErrorAs(t, err, &apiErr)
		assert.Equal(t, "AuthorizationFailure", apiErr.DataCode())
		assert.True(t, apiErr.HasMessage("No active subscription"))
		assert.Equal(t, 1, e.sage.Refreshes())
		assert.Len(t, e.sage.Requests(), 2)
	})
	t.Run("ok - a 401 after another goroutine refreshed does not refresh again", func(t *testing.T) {
		t.Parallel()
		e := newTestEnv(t)
		s := e.session()
		used, err := s.Token(context.Background())
		require.NoError(t, err)
		require.NoError(t, s.RefreshIfDue(context.Background(), 365*24*time.Hour))
		require.Equal(t, 1, e.sage.Refreshes())
		got, err := s.token(context.Background(), used.AccessToken, 0)
		require.NoError(t, err)
		assert.Equal(t, accessToken(2), got.AccessToken)
		assert.Equal(t, 1, e.sage.Refreshes())
	})
}

func TestSession_RefreshIfDue(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name          string
		tok           func(now time.Time) *oauth2.Token
		within        time.Duration
		wantRefreshed bool
	}{
		{
			name: "ok - refresh token far from expiry",
			tok: func(now time.Time) *oauth2.Token {
				return WithRefreshExpiry(&oauth2.Token{Expiry: now.Add(time.Hour)}, now.Add(20*24*time.Hour))
			},
			within: 7 * 24 * time.Hour, wantRefreshed: false,
		},
		{
			name: "ok - refresh token expiring within the window",
			tok: func(now time.Time) *oauth2.Token {
				return WithRefreshExpiry(&oauth2.Token{Expiry: now.Add(time.Hour)}, now.Add(3*24*time.Hour))
			},
			within: 7 * 24 * time.Hour, wantRefreshed: true,
		},
		{
			name:   "ok - refresh expiry estimated from an old access token",
			tok:    func(now time.Time) *oauth2.Token { return &oauth2.Token{Expiry: now.Add(-28 * 24 * time.Hour)} },
			within: 7 * 24 * time.Hour, wantRefreshed: true,
		},
		{
			name:   "ok - unknown expiry counts as due",
			tok:    func(time.Time) *oauth2.Token { return &oauth2.Token{} },
			within: time.Hour, wantRefreshed: true,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newTestEnv(t)
			seeded := e.sage.seed(time.Time{})
			tok := tc.tok(e.clock.Now())
			tok.AccessToken, tok.RefreshToken = seeded.AccessToken, seeded.RefreshToken
			s := e.client.Session(Connection{CompanyID: 1, BusinessID: testBusiness, Token: tok}, e.store)
			require.NoError(t, s.RefreshIfDue(context.Background(), tc.within))
			if tc.wantRefreshed {
				assert.Equal(t, 1, e.sage.Refreshes())
				require.Len(t, e.store.Saved(), 1)
				assert.Equal(t, e.clock.Now().Add(31*24*time.Hour), RefreshExpiry(e.store.Saved()[0]))
			} else {
				assert.Zero(t, e.sage.Refreshes())
			}
		})
	}
}

func TestSession_NilStoreNeverRefreshes(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	s := e.client.Session(Connection{CompanyID: 1, BusinessID: testBusiness, Token: e.sage.seed(e.clock.Now())}, nil)
	_, err := s.GetContact(context.Background(), "c1")
	require.Error(t, err)
	assert.True(t, IsRetryable(err))
	assert.Zero(t, e.sage.Refreshes(), "without a store the refresh token must not be spent")
}

func TestSession_NoToken(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	s := e.client.Session(Connection{CompanyID: 1, BusinessID: testBusiness}, e.store)
	_, err := s.GetContact(context.Background(), "c1")
	require.ErrorIs(t, err, ErrConnectionLost)
	assert.Empty(t, e.sage.Requests())
}
