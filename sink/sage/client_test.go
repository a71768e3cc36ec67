package sage

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/url"
	"sync"
	"testing"
	"testing/iotest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/oauth2"
)

func TestNew_Defaults(t *testing.T) {
	t.Parallel()
	c := New(Config{})
	assert.Equal(t, DefaultAPIURL, c.cfg.APIURL)
	assert.Equal(t, DefaultAuthURL, c.cfg.AuthURL)
	assert.Equal(t, DefaultTokenURL, c.cfg.TokenURL)
	assert.Equal(t, DefaultRequestsPerMinute, c.cfg.RequestsPerMinute)
	assert.Equal(t, DefaultMaxAttempts, c.cfg.MaxAttempts)
	assert.Equal(t, DefaultTimeout, c.cfg.Timeout)
	require.NotNil(t, c.apiURL)
	assert.Equal(t, "/v3.1", c.apiURL.Path)
}

func TestClient_AuthCodeURL(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		authURL   string
		wantBase  string
		wantQuery url.Values
	}{
		{
			name:     "ok - default keeps filter=apiv3.1",
			authURL:  "",
			wantBase: "https://www.sageone.com/oauth2/auth/central",
			wantQuery: url.Values{
				"filter": {"apiv3.1"}, "response_type": {"code"}, "client_id": {testClientID},
				"redirect_uri": {testRedirect}, "scope": {"full_access"}, "state": {"st&te=1"},
			},
		},
		{
			name:     "ok - url without query",
			authURL:  "https://auth.example/authorize",
			wantBase: "https://auth.example/authorize",
			wantQuery: url.Values{
				"response_type": {"code"}, "client_id": {testClientID},
				"redirect_uri": {testRedirect}, "scope": {"full_access"}, "state": {"st&te=1"},
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c := New(Config{AuthURL: tc.authURL, ClientID: testClientID, ClientSecret: testClientSecret, RedirectURL: testRedirect})
			got, err := url.Parse(c.AuthCodeURL("st&te=1"))
			require.NoError(t, err)
			assert.Equal(t, tc.wantBase, got.Scheme+"://"+got.Host+got.Path)
			assert.Equal(t, tc.wantQuery, got.Query())
			assert.NotContains(t, got.String(), testClientSecret)
		})
	}
}

func TestClient_Exchange(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name          string
		code          string
		token         func(n int) (status int, body string) // nil: the fake's own logic
		wantErr       error
		wantPermanent bool
		wantRetryable bool
		wantDataCode  string
		wantCalls     int
	}{
		{name: "ok - code exchanged", code: testCode, wantCalls: 1},
		{
			name: "ok - 503 retried",
			code: testCode,
			token: func(n int) (int, string) {
				if n == 1 {
					return http.StatusServiceUnavailable, "<html>down</html>"
				}
				return 0, ""
			},
			wantCalls: 2,
		},
		{name: "error - expired code is permanent", code: "auth-code-SECRET-expired", wantPermanent: true, wantDataCode: "invalid_grant", wantCalls: 1},
		{
			name: "error - 500 every time is retryable",
			code: testCode,
			token: func(int) (int, string) {
				return http.StatusInternalServerError, string(mustRead("documented/error_500_unexpected_error.json"))
			},
			wantRetryable: true,
			wantDataCode:  "UnexpectedError",
			wantCalls:     4,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newTestEnv(t)
			var mu sync.Mutex
			var forms []map[string][]string
			var headers []http.Header
			e.sage.token = func(w http.ResponseWriter, r *http.Request, form map[string][]string) bool {
				mu.Lock()
				defer mu.Unlock()
				forms = append(forms, form)
				headers = append(headers, r.Header.Clone())
				if tc.token != nil {
					if status, body := tc.token(len(forms)); status != 0 {
						writeRaw(w, status, body)
						return true
					}
				}
				return false
			}
			tok, err := e.client.Exchange(context.Background(), tc.code)
			assert.Len(t, forms, tc.wantCalls)
			assertNoLeak(t, e.logs.String())
			if tc.wantPermanent || tc.wantRetryable {
				require.Error(t, err)
				assertNoLeak(t, err.Error())
				var pe *PermanentError
				assert.Equal(t, tc.wantPermanent, errors.As(err, &pe))
				assert.Equal(t, tc.wantRetryable, IsRetryable(err))
				var apiErr *APIError
				require.True(t, errors.As(err, &apiErr))
				assert.Equal(t, tc.wantDataCode, apiErr.DataCode())
				assert.Equal(t, "/token", apiErr.Path)
				return
			}
			require.NoError(t, err)
			form := forms[0]
			assert.Equal(t, "authorization_code", first(form, "grant_type"))
			assert.Equal(t, tc.code, first(form, "code"))
			assert.Equal(t, testRedirect, first(form, "redirect_uri"))
			assert.Equal(t, testClientID, first(form, "client_id"))
			assert.Equal(t, testClientSecret, first(form, "client_secret"))
			assert.Equal(t, "application/x-www-form-urlencoded", headers[0].Get("Content-Type"))
			assert.Empty(t, headers[0].Get("Authorization"))

			assert.Equal(t, accessToken(1), tok.AccessToken)
			assert.Equal(t, refreshToken(1), tok.RefreshToken)
			assert.Equal(t, e.clock.Now().Add(300*time.Second), tok.Expiry)
			assert.Equal(t, e.clock.Now().Add(2678400*time.Second), RefreshExpiry(tok))
			assert.Equal(t, "full_access", tok.Extra("scope"))
			assert.Nil(t, tok.Extra("access_token"))
			assert.Nil(t, tok.Extra("refresh_token"))
		})
	}
}

func TestClient_ExchangeFixture(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	e.sage.token = func(w http.ResponseWriter, _ *http.Request, _ map[string][]string) bool {
		writeRaw(w, http.StatusOK, string(fixture(t, "documented/oauth_token_response.json")))
		return true
	}
	tok, err := e.client.Exchange(context.Background(), testCode)
	require.NoError(t, err)
	assert.Equal(t, "FICTIONAL.ACCESS.TOKEN.eyJhbGciOiJSUzUxMiJ9", tok.AccessToken)
	assert.Equal(t, "FICTIONAL.REFRESH.TOKEN.eyJhbGciOiJSUzUxMiJ9", tok.RefreshToken)
	assert.Equal(t, "bearer", tok.TokenType)
	assert.Equal(t, t0.Add(5*time.Minute), tok.Expiry)
	assert.Equal(t, t0.Add(31*24*time.Hour), RefreshExpiry(tok))
	assert.Equal(t, "00000000-0000-4000-8000-000000000001", tok.Extra("requested_by_id"))
}

func TestRefreshExpiry(t *testing.T) {
	t.Parallel()
	at := time.Date(2025, 4, 1, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		name string
		tok  *oauth2.Token
		want time.Time
	}{
		{name: "ok - nil", tok: nil, want: time.Time{}},
		{name: "ok - unknown", tok: &oauth2.Token{AccessToken: "a"}, want: time.Time{}},
		{name: "ok - set explicitly", tok: WithRefreshExpiry(&oauth2.Token{AccessToken: "a", Expiry: t0}, at), want: at},
		{name: "ok - estimated from access expiry", tok: &oauth2.Token{AccessToken: "a", Expiry: t0}, want: t0.Add(-5 * time.Minute).Add(31 * 24 * time.Hour)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			assert.True(t, tc.want.Equal(RefreshExpiry(tc.tok)), "got %v", RefreshExpiry(tc.tok))
		})
	}
}

func TestDecimal_JSON(t *testing.T) {
	t.Parallel()
	marshal := []struct {
		name string
		in   Decimal
		want string
	}{
		{name: "ok - 0.10 stays 0.10", in: MustDecimal("0.10"), want: "0.10"},
		{name: "ok - 102.00 keeps its zeros", in: MustDecimal("102.00"), want: "102.00"},
		{name: "ok - 12345678.91 exact", in: MustDecimal("12345678.91"), want: "12345678.91"},
		{name: "ok - beyond float64", in: MustDecimal("99999999999999999.99"), want: "99999999999999999.99"},
		{name: "ok - negative", in: MustDecimal("-0.01"), want: "-0.01"},
		{name: "ok - integer", in: MustDecimal("5"), want: "5"},
		{name: "ok - exponent", in: MustDecimal("1E+3"), want: "1000"},
		{name: "ok - zero value", in: Decimal{}, want: "0"},
	}
	for _, tc := range marshal {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b, err := json.Marshal(tc.in)
			require.NoError(t, err)
			assert.Equal(t, tc.want, string(b))
		})
	}

	unmarshal := []struct {
		name    string
		in      string
		want    string
		wantErr bool
	}{
		{name: "ok - number", in: `12.5`, want: "12.5"},
		{name: "ok - string", in: `"-430035.84"`, want: "-430035.84"},
		{name: "ok - string keeps scale", in: `"10.0"`, want: "10.0"},
		{name: "ok - null", in: `null`, want: "0"},
		{name: "ok - empty string", in: `""`, want: "0"},
		{name: "ok - string with escapes", in: `"\u0031\u0032.50"`, want: "12.50"},
		{name: "error - string with an escaped quote", in: `"1\""`, wantErr: true},
		{name: "error - not a number", in: `"abc"`, wantErr: true},
		{name: "error - bool", in: `true`, wantErr: true},
	}
	for _, tc := range unmarshal {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var d Decimal
			err := decodeReply([]byte(tc.in), &d)
			if tc.wantErr {
				require.Error(t, err)
				return
			}
			require.NoError(t, err)
			b, err := json.Marshal(d)
			require.NoError(t, err)
			assert.Equal(t, tc.want, string(b))
		})
	}
}

func TestRequests_MoneyIsExactNumbers(t *testing.T) {
	t.Parallel()
	req := SalesInvoiceRequest{
		ContactID: "c1",
		Date:      "2025-03-14",
		InvoiceLines: []InvoiceLineRequest{{
			Description:     "Boiler service",
			LedgerAccountID: "la1",
			Quantity:        DP(MustDecimal("1").Decimal),
			UnitPrice:       MustDecimal("0.10"),
			TaxRateID:       "GB_STANDARD",
			TaxAmount:       DP(MustDecimal("0.02").Decimal),
			TotalAmount:     DP(MustDecimal("12345678.91").Decimal),
		}},
		TotalAmount: DP(MustDecimal("12345678.91").Decimal),
	}
	b, err := json.Marshal(map[string]any{"sales_invoice": req})
	require.NoError(t, err)
	s := string(b)
	assert.Contains(t, s, `"unit_price":0.10`)
	assert.Contains(t, s, `"tax_amount":0.02`)
	assert.Contains(t, s, `"total_amount":12345678.91`)
	assert.Contains(t, s, `"quantity":1`)
	assert.NotContains(t, s, `"0.10"`)
}

func TestContactPaymentRequest_AllocatedArtefacts(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		in   []AllocatedArtefactRequest
		want string // substring expected, or "" to expect the key absent
	}{
		{name: "ok - nil leaves the key out", in: nil, want: ""},
		{name: "ok - empty clears allocations", in: []AllocatedArtefactRequest{}, want: `"allocated_artefacts":[]`},
		{name: "ok - one allocation", in: []AllocatedArtefactRequest{{ArtefactID: "inv1", Amount: MustDecimal("55.50")}}, want: `"allocated_artefacts":[{"artefact_id":"inv1","amount":55.50}]`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b, err := json.Marshal(ContactPaymentRequest{Reference: "R1", AllocatedArtefacts: tc.in})
			require.NoError(t, err)
			if tc.want == "" {
				assert.NotContains(t, string(b), "allocated_artefacts")
			} else {
				assert.Contains(t, string(b), tc.want)
			}
			assert.Contains(t, string(b), `"reference":"R1"`)
		})
	}
}

// TestReadBody reads bodies of declared and undeclared length whole, in one allocation of the
// declared length (plus bytes.MinRead) however the reader splits them, and never sizes the
// slice by more than 64 KiB of a declared length the body does not have.
func TestReadBody(t *testing.T) {
	t.Parallel()
	body := bytes.Repeat([]byte("x"), 1500)
	for _, tc := range []struct {
		name string
		r    io.Reader
		cl   int64
		cap  int
	}{
		{name: "ok - declared, read at once", r: bytes.NewReader(body), cl: 1500, cap: 1500 + bytes.MinRead},
		{name: "ok - declared, read a byte at a time", r: iotest.OneByteReader(bytes.NewReader(body)), cl: 1500, cap: 1500 + bytes.MinRead},
		{name: "ok - declared far more than sent", r: bytes.NewReader(body), cl: 30 << 20, cap: -1},
		{name: "ok - undeclared", r: bytes.NewReader(body), cl: -1, cap: -1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, err := readBody(tc.r, tc.cl)
			require.NoError(t, err)
			require.Equal(t, body, got)
			if tc.cap >= 0 {
				assert.Equal(t, tc.cap, cap(got), "one allocation of the declared length")
			} else {
				assert.Less(t, cap(got), 64<<10, "sized by what came, not by the header")
			}
		})
	}
	t.Run("ok - empty", func(t *testing.T) {
		got, err := readBody(bytes.NewReader(nil), 0)
		require.NoError(t, err)
		assert.Empty(t, got)
	})
}
