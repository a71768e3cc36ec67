package sage

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/oauth2"
)

// echo is everything a careless server might copy into an error page: the Authorization header
// and the body (a token form carries client_secret, code and refresh_token).
func echo(r *http.Request, body []byte) string {
	return fmt.Sprintf("you sent Authorization=%q body=%q", r.Header.Get("Authorization"), string(body))
}

// TestNoSecretsInErrorsOrLogs drives every failure path against servers that echo the request
// back, and fails if a token, the client secret or the authorization code appears in an error
// string or a log line (logged at Debug).
func TestNoSecretsInErrorsOrLogs(t *testing.T) {
	t.Parallel()
	formBody := func(form map[string][]string) []byte { return []byte(url.Values(form).Encode()) }
	tests := []struct {
		name  string
		setup func(e *testEnv)
		call  func(e *testEnv) error
	}{
		{
			name: "error - 422 whose message echoes the request",
			setup: func(e *testEnv) {
				e.sage.api = func(w http.ResponseWriter, r *http.Request, rec recorded, _ int) {
					b, _ := json.Marshal([]ErrorItem{{Severity: "error", DataCode: "RecordInvalid", Message: echo(r, rec.Body), Source: r.Header.Get("Authorization")}})
					writeRaw(w, 422, string(b))
				}
			},
			call: func(e *testEnv) error {
				_, err := e.session().CreateContact(context.Background(), ContactRequest{Name: "A"})
				return err
			},
		},
		{
			name: "error - 500 HTML page echoing the request, retried to the end",
			setup: func(e *testEnv) {
				e.sage.api = func(w http.ResponseWriter, r *http.Request, rec recorded, _ int) {
					writeRaw(w, 500, "<html>"+strings.Repeat("x", 150)+echo(r, rec.Body)+"</html>")
				}
			},
			call: func(e *testEnv) error {
				_, err := e.session().GetContact(context.Background(), "c1")
				return err
			},
		},
		{
			name: "error - 401 echo after a refresh",
			setup: func(e *testEnv) {
				e.sage.acceptAnyBearer = true
				e.sage.api = func(w http.ResponseWriter, r *http.Request, rec recorded, _ int) {
					writeRaw(w, 401, echo(r, rec.Body))
				}
			},
			call: func(e *testEnv) error {
				_, err := e.session().GetContact(context.Background(), "c1")
				return err
			},
		},
		{
			name: "error - refresh answered with a non-JSON echo of the form",
			setup: func(e *testEnv) {
				e.sage.token = func(w http.ResponseWriter, r *http.Request, form map[string][]string) bool {
					writeRaw(w, 400, echo(r, formBody(form)))
					return true
				}
			},
			call: func(e *testEnv) error {
				tok := e.sage.seed(e.clock.Now())
				s := e.client.Session(Connection{CompanyID: 1, BusinessID: testBusiness, Token: tok}, e.store)
				_, err := s.GetContact(context.Background(), "c1")
				return err
			},
		},
		{
			name: "error - invalid_grant whose description echoes the form",
			setup: func(e *testEnv) {
				e.sage.token = func(w http.ResponseWriter, r *http.Request, form map[string][]string) bool {
					writeJSON(w, 400, map[string]string{"error": "invalid_grant", "error_description": echo(r, formBody(form))})
					return true
				}
			},
			call: func(e *testEnv) error {
				tok := e.sage.seed(e.clock.Now())
				s := e.client.Session(Connection{CompanyID: 1, BusinessID: testBusiness, Token: tok}, e.store)
				_, err := s.GetContact(context.Background(), "c1")
				require.ErrorIs(t, err, ErrConnectionLost)
				return err
			},
		},
		{
			name: "error - exchange refused with an echo of the form",
			setup: func(e *testEnv) {
				e.sage.token = func(w http.ResponseWriter, r *http.Request, form map[string][]string) bool {
					writeRaw(w, 400, echo(r, formBody(form)))
					return true
				}
			},
			call: func(e *testEnv) error {
				_, err := e.client.Exchange(context.Background(), testCode)
				return err
			},
		},
		{
			name:  "error - store error quoting the token",
			setup: func(e *testEnv) {},
			call: func(e *testEnv) error {
				e.store.err = func(int) error {
					return errors.New("duplicate key value (refresh_token)=(" + refreshToken(2) + ") access " + accessToken(2))
				}
				tok := e.sage.seed(e.clock.Now())
				s := e.client.Session(Connection{CompanyID: 1, BusinessID: testBusiness, Token: tok}, e.store)
				_, err := s.GetContact(context.Background(), "c1")
				return err
			},
		},
		{
			name:  "error - network failure",
			setup: func(e *testEnv) {},
			call: func(e *testEnv) error {
				s := e.session()
				e.sage.srv.Close()
				_, err := s.GetContact(context.Background(), "c1")
				return err
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newTestEnv(t)
			tc.setup(e)
			err := tc.call(e)
			require.Error(t, err)
			assertNoLeak(t, err.Error())
			assertNoLeak(t, fmt.Sprintf("%v %+v %#v", err, err, err))
			for e := error(err); e != nil; e = errors.Unwrap(e) {
				if _, ok := e.(*redactedError); ok {
					break // its cause is kept for errors.Is/As, not for printing
				}
				assertNoLeak(t, e.Error())
			}
			assertNoLeak(t, e.logs.String())
			assert.NotEmpty(t, e.logs.String(), "the failure was logged")
		})
	}
}

// TestNoSecretsInTokenExtra checks the access and refresh tokens are not copied into Extra,
// where a careless log of the token's extras would print them.
func TestNoSecretsInTokenExtra(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	tok, err := e.client.Exchange(context.Background(), testCode)
	require.NoError(t, err)
	for _, k := range []string{"access_token", "refresh_token"} {
		assert.Nil(t, tok.Extra(k))
	}
	assert.Equal(t, "bearer", tok.TokenType)
	assert.WithinDuration(t, e.clock.Now().Add(31*24*time.Hour), RefreshExpiry(tok), 0)
	var _ *oauth2.Token = tok
}
