package web

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"html/template"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/gessync/gessync/state"
)

const (
	sessionCookie     = "gessync_session"
	oauthCookiePrefix = "gessync_oauth_"
	// oauthStateMaxAge is how long a connect flow may take from /connect/sage to the callback.
	oauthStateMaxAge = 10 * time.Minute
)

// guard lets a request through when no admin token is configured, when its path is open, or
// when it carries the token (bearer header or session cookie). /connect/sage also accepts a
// valid signed link. Pages redirect to the sign-in form; everything else answers 401. Requests
// that change something must come from this origin (a browser's Origin header, when sent).
func (s *Server) guard(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead && !sameOrigin(r) {
			writeError(w, http.StatusForbidden, "cross-site request refused")
			return
		}
		p := r.URL.Path
		if s.AdminToken == "" || p == "/oauth/callback" || p == "/signin" || p == "/signout" || slices.Contains(s.OpenPaths, p) {
			next.ServeHTTP(w, r)
			return
		}
		if s.bearerOK(r) || s.sessionOK(r) {
			next.ServeHTTP(w, r)
			return
		}
		if p == "/connect/sage" && s.linkOK(r.URL.Query()) {
			next.ServeHTTP(w, r)
			return
		}
		if (r.Method == http.MethodGet || r.Method == http.MethodHead) && !strings.HasPrefix(p, "/api/") && p != "/status" &&
			strings.Contains(r.Header.Get("Accept"), "text/html") {
			http.Redirect(w, r, "/signin?next="+url.QueryEscape(r.URL.RequestURI()), http.StatusSeeOther)
			return
		}
		w.Header().Set("WWW-Authenticate", `Bearer realm="gessync"`)
		writeError(w, http.StatusUnauthorized, "sign in first: send Authorization: Bearer <GESSYNC_ADMIN_TOKEN>")
	})
}

// sameOrigin is false when a browser says the request comes from another origin.
func sameOrigin(r *http.Request) bool {
	o := r.Header.Get("Origin")
	if o == "" {
		return true // not sent by a browser across sites (curl, the CLI)
	}
	u, err := url.Parse(o)
	return err == nil && u.Host == r.Host
}

func equalSecret(a, b string) bool {
	ha, hb := sha256.Sum256([]byte(a)), sha256.Sum256([]byte(b))
	return hmac.Equal(ha[:], hb[:])
}

func (s *Server) bearerOK(r *http.Request) bool {
	h := r.Header.Get("Authorization")
	tok, ok := strings.CutPrefix(h, "Bearer ")
	return ok && s.AdminToken != "" && equalSecret(strings.TrimSpace(tok), s.AdminToken)
}

func (s *Server) sign(parts ...string) string {
	m := hmac.New(sha256.New, s.key)
	m.Write([]byte(strings.Join(parts, "|")))
	return hex.EncodeToString(m.Sum(nil))
}

func (s *Server) sessionOK(r *http.Request) bool {
	c, err := r.Cookie(sessionCookie)
	if err != nil {
		return false
	}
	exp, sig, ok := strings.Cut(c.Value, ".")
	if !ok {
		return false
	}
	n, err := strconv.ParseInt(exp, 10, 64)
	if err != nil || s.now().Unix() > n {
		return false
	}
	return hmac.Equal([]byte(sig), []byte(s.sign("session", exp)))
}

// ConnectLink returns a link that lets whoever holds it connect company to Sage without the
// admin token, until it expires (ConnectLinkTTL).
func (s *Server) ConnectLink(companyID int64) (string, time.Time) {
	exp := s.now().Add(s.ConnectLinkTTL).Truncate(time.Second)
	e := strconv.FormatInt(exp.Unix(), 10)
	id := strconv.FormatInt(companyID, 10)
	q := url.Values{"company_id": {id}, "expires": {e}, "sig": {s.sign("connect", id, e)}}
	return s.PublicURL + "/connect/sage?" + q.Encode(), exp.UTC()
}

func (s *Server) linkOK(q url.Values) bool {
	id, e, sig := q.Get("company_id"), q.Get("expires"), q.Get("sig")
	n, err := strconv.ParseInt(e, 10, 64)
	if err != nil || sig == "" || s.now().Unix() > n {
		return false
	}
	return hmac.Equal([]byte(sig), []byte(s.sign("connect", id, e)))
}

var signinPage = template.Must(template.New("signin").Parse(`<!doctype html><html lang="en"><head><meta charset="utf-8"><title>gessync: sign in</title>` + style + `</head>
<body><main><h1>gessync</h1><form method="post" action="/signin" class="card">
<p><label for="token">Admin token (GESSYNC_ADMIN_TOKEN)</label><br><input type="password" id="token" name="token" autocomplete="current-password" autofocus size="40"></p>
<input type="hidden" name="next" value="{{.Next}}">
{{if .Err}}<p class="err" role="alert">{{.Err}}</p>{{end}}
<p><button type="submit" id="signin">Sign in</button></p></form></main></body></html>
`))

func safeNext(next string) string {
	if !strings.HasPrefix(next, "/") || strings.HasPrefix(next, "//") || strings.HasPrefix(next, "/\\") {
		return "/"
	}
	return next
}

func (s *Server) signinPage(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	_ = signinPage.Execute(w, map[string]any{"Next": safeNext(r.URL.Query().Get("next"))})
}

func (s *Server) signin(w http.ResponseWriter, r *http.Request) {
	next := safeNext(r.FormValue("next"))
	if s.AdminToken == "" {
		http.Redirect(w, r, next, http.StatusSeeOther)
		return
	}
	if !equalSecret(r.FormValue("token"), s.AdminToken) {
		s.Logger.Warn("sign-in refused: wrong admin token", "remote", r.RemoteAddr)
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.WriteHeader(http.StatusUnauthorized)
		_ = signinPage.Execute(w, map[string]any{"Next": next, "Err": "That is not the admin token."})
		return
	}
	exp := strconv.FormatInt(s.now().Add(s.SessionTTL).Unix(), 10)
	http.SetCookie(w, &http.Cookie{Name: sessionCookie, Value: exp + "." + s.sign("session", exp), Path: "/",
		MaxAge: int(s.SessionTTL.Seconds()), HttpOnly: true, Secure: s.SecureCookies, SameSite: http.SameSiteLaxMode})
	http.Redirect(w, r, next, http.StatusSeeOther)
}

func (s *Server) signout(w http.ResponseWriter, r *http.Request) {
	http.SetCookie(w, &http.Cookie{Name: sessionCookie, Value: "", Path: "/", MaxAge: -1, HttpOnly: true, Secure: s.SecureCookies, SameSite: http.SameSiteLaxMode})
	http.Redirect(w, r, "/signin", http.StatusSeeOther)
}

// oauthCookie names the cookie that binds one OAuth state to the browser that started it.
func oauthCookie(st string) string {
	h := sha256.Sum256([]byte(st))
	return oauthCookiePrefix + hex.EncodeToString(h[:8])
}

// connect starts Sage's OAuth flow for company_id with a fresh state, stored single-use and set
// in a cookie only this browser sends back to the callback.
func (s *Server) connect(w http.ResponseWriter, r *http.Request) {
	company, err := strconv.ParseInt(r.URL.Query().Get("company_id"), 10, 64)
	if err != nil || company <= 0 {
		writeError(w, http.StatusBadRequest, "company_id must be a GES company id, e.g. /connect/sage?company_id=1")
		return
	}
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		writeError(w, http.StatusInternalServerError, "no randomness")
		return
	}
	st := hex.EncodeToString(b)
	if err := s.States.CreateOAuthState(r.Context(), st, company); err != nil {
		s.Logger.Error("connect", "company_id", company, "err", err)
		writeError(w, http.StatusServiceUnavailable, "could not start connecting: state unavailable")
		return
	}
	http.SetCookie(w, &http.Cookie{Name: oauthCookie(st), Value: st, Path: "/oauth/callback", MaxAge: int(oauthStateMaxAge.Seconds()),
		HttpOnly: true, Secure: s.SecureCookies, SameSite: http.SameSiteLaxMode})
	http.Redirect(w, r, s.OAuth.AuthCodeURL(st), http.StatusFound)
}

var resultPage = template.Must(template.New("r").Parse(`<!doctype html><html lang="en"><head><meta charset="utf-8"><title>gessync: {{.Title}}</title>` + style + `</head>
<body><main><h1>{{.Title}}</h1>{{if .Result}}<p id="connected">GES company {{.Result.CompanyID}} now syncs to the Sage business <b>{{.Result.BusinessName}}</b>; receipts go to <b>{{.Result.BankAccount}}</b>.</p>
{{range .Result.Notes}}<p>{{.}}</p>{{end}}<p><a href="/companies/{{.Result.CompanyID}}">Settings and sync log</a></p>{{end}}{{if .Err}}<p class="err">{{.Err}}</p><p>Start again from the settings page.</p>{{end}}</main></body></html>
`))

func (s *Server) callback(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	fail := func(code int, msg string) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.WriteHeader(code)
		_ = resultPage.Execute(w, map[string]any{"Title": "Sage did not connect", "Err": msg})
	}
	st := q.Get("state")
	if st != "" {
		// The state is spent whatever happens next.
		http.SetCookie(w, &http.Cookie{Name: oauthCookie(st), Value: "", Path: "/oauth/callback", MaxAge: -1, HttpOnly: true, Secure: s.SecureCookies, SameSite: http.SameSiteLaxMode})
	}
	if e := q.Get("error"); e != "" {
		fail(http.StatusBadRequest, "Sage said: "+e)
		return
	}
	if c, err := r.Cookie(oauthCookie(st)); st == "" || err != nil || !equalSecret(c.Value, st) {
		fail(http.StatusBadRequest, "This connection was not started in this browser (or its cookie was blocked or expired).")
		return
	}
	company, err := s.States.ConsumeOAuthState(r.Context(), st, oauthStateMaxAge)
	if err != nil {
		msg := "This connection link is unknown, used already or expired."
		if !errors.Is(err, state.ErrBadState) {
			s.Logger.Error("oauth callback", "err", err)
			msg = "gessync could not check this connection link."
		}
		fail(http.StatusBadRequest, msg)
		return
	}
	tok, err := s.OAuth.Exchange(r.Context(), q.Get("code"))
	if err != nil {
		s.Logger.Error("oauth exchange", "company_id", company, "err", err)
		fail(http.StatusBadGateway, "Sage refused the authorisation code: "+err.Error())
		return
	}
	res, err := s.Daemon.Connect(r.Context(), company, tok)
	s.cache.forget(company)
	if err != nil {
		s.Logger.Error("connect", "company_id", company, "err", err)
		fail(http.StatusBadGateway, fmt.Sprint(err))
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	_ = resultPage.Execute(w, map[string]any{"Title": "Connected to Sage", "Result": res})
}
