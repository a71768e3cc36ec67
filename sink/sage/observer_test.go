package sage

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// recordingObserver keeps what an Observer was told, as lines.
type recordingObserver struct {
	mu     sync.Mutex
	events []string
}

func (o *recordingObserver) add(s string) {
	o.mu.Lock()
	o.events = append(o.events, s)
	o.mu.Unlock()
}

func (o *recordingObserver) Request(method, path string, status int) {
	o.add(fmt.Sprintf("request %s %s %d", method, path, status))
}

func (o *recordingObserver) Retry(method, path string, status int) {
	o.add(fmt.Sprintf("retry %s %s %d", method, path, status))
}

func (o *recordingObserver) TokenRefresh(err error) {
	o.add(fmt.Sprintf("refresh ok=%v", err == nil))
}

func (o *recordingObserver) all() []string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]string(nil), o.events...)
}

func TestObserverHearsAttemptsRetriesAndRefreshes(t *testing.T) {
	e := newTestEnv(t)
	obs := &recordingObserver{}
	WithObserver(obs)(e.client)
	e.sage.api = func(w http.ResponseWriter, r *http.Request, rec recorded, n int) {
		if n == 1 {
			w.Header().Set("Retry-After", "1")
			writeJSON(w, http.StatusTooManyRequests, []ErrorItem{{Severity: "error", DataCode: "TooManyRequests", Message: "slow down"}})
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{"id": "c1"})
	}
	// A token 30 s from expiry is refreshed before the call.
	tok := e.sage.seed(e.clock.Now().Add(30 * time.Second))
	s := e.client.Session(Connection{CompanyID: 1, BusinessID: testBusiness, Token: tok}, e.store)
	_, err := s.GetContact(context.Background(), "c1")
	require.NoError(t, err)
	require.Equal(t, []string{
		"request POST /token 200",
		"refresh ok=true",
		"request GET /v3.1/contacts/c1 429",
		"retry GET /v3.1/contacts/c1 429",
		"request GET /v3.1/contacts/c1 200",
	}, obs.all())
}
