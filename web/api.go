package web

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/gessync/gessync/daemon"
	"github.com/gessync/gessync/pipeline"
	"github.com/gessync/gessync/sink/sage"
	"github.com/gessync/gessync/state"
)

// Entry is a sync-log entry as the API sends it. Field names are a contract with scripts.
type Entry struct {
	// ID numbers the entry; CompanyID is its GES company.
	ID        int64 `json:"id"`
	CompanyID int64 `json:"company_id"`
	// Table and GESID name the GES record, when the entry is about one.
	Table string `json:"table,omitempty"`
	GESID int64  `json:"ges_id,omitempty"`
	// GESURL links the record in GES (from GESSYNC_GES_URL_TEMPLATE), empty without a template.
	GESURL string `json:"ges_url,omitempty"`
	// LSN is the commit LSN of the change that led to the entry.
	LSN string `json:"lsn,omitempty"`
	// Level is "error" (needs a person), "warning" or "info".
	Level string `json:"level"`
	// Code is a stable key, e.g. "sage.RecordInvalid" or "invalid.name".
	Code string `json:"code,omitempty"`
	// Message is the plain explanation, SageMessage Sage's own words, Action what to do.
	Message     string `json:"message"`
	SageMessage string `json:"sage_message,omitempty"`
	Action      string `json:"action,omitempty"`
	// CreatedAt is when it was (last) written; ResolvedAt when the record synced since.
	CreatedAt  time.Time  `json:"created_at"`
	ResolvedAt *time.Time `json:"resolved_at,omitempty"`
}

// ResyncRequest is the body of POST /api/companies/{id}/resync.
type ResyncRequest struct {
	// Table and ID name the GES record: "customers", "invoices" or "payments", and its id.
	Table string `json:"table"`
	ID    int64  `json:"id"`
	// Force forgets what was last sent, so everything goes again (the Resync button).
	Force bool `json:"force"`
}

// ConnectLink is the answer of POST /api/companies/{id}/connect_link.
type ConnectLink struct {
	// URL connects the company without the admin token until ExpiresAt.
	URL       string    `json:"url"`
	ExpiresAt time.Time `json:"expires_at"`
}

func (s *Server) entryView(e state.Entry) Entry {
	v := Entry{ID: e.ID, CompanyID: e.CompanyID, Table: e.Table, GESID: e.GESID, Level: string(e.Level), Code: e.Code,
		Message: e.Message, SageMessage: e.SageMessage, Action: e.Action, CreatedAt: e.CreatedAt.UTC(), ResolvedAt: e.ResolvedAt}
	if e.LSN != 0 {
		v.LSN = e.LSN.String()
	}
	if e.GESID != 0 {
		v.GESURL = s.gesURL(e.CompanyID, e.Table, e.GESID)
	}
	return v
}

// gesURL fills GESURLTemplate for a record; "" without a template.
func (s *Server) gesURL(company int64, table string, id int64) string {
	if s.GESURLTemplate == "" || table == "" {
		return ""
	}
	return strings.NewReplacer("{table}", url.PathEscape(table), "{id}", strconv.FormatInt(id, 10),
		"{company_id}", strconv.FormatInt(company, 10)).Replace(s.GESURLTemplate)
}

func (s *Server) api(mux *http.ServeMux) {
	mux.HandleFunc("GET /api/status", s.status)
	mux.HandleFunc("GET /api/companies/{id}/settings", s.withCompany(func(w http.ResponseWriter, r *http.Request, id int64) {
		cs, err := s.Daemon.Settings(r.Context(), id)
		if err != nil {
			s.apiFail(w, err)
			return
		}
		writeJSON(w, http.StatusOK, cs)
	}))
	update := s.withCompany(func(w http.ResponseWriter, r *http.Request, id int64) {
		var u daemon.SettingsUpdate
		dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<16))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&u); err != nil {
			writeError(w, http.StatusBadRequest, "settings body: "+err.Error())
			return
		}
		cs, err := s.Daemon.UpdateSettings(r.Context(), id, u)
		s.cache.forget(id)
		if err != nil {
			s.apiFail(w, err)
			return
		}
		writeJSON(w, http.StatusOK, cs)
	})
	mux.HandleFunc("PATCH /api/companies/{id}/settings", update)
	mux.HandleFunc("PUT /api/companies/{id}/settings", update)
	mux.HandleFunc("GET /api/companies/{id}/businesses", s.withCompany(s.choices(s.cachedList("businesses", s.Daemon.Businesses))))
	mux.HandleFunc("GET /api/companies/{id}/bank_accounts", s.withCompany(s.choices(s.cachedList("bank_accounts", s.Daemon.BankAccounts))))
	mux.HandleFunc("GET /api/companies/{id}/ledger_accounts", s.withCompany(s.choices(s.cachedList("ledger_accounts", s.Daemon.LedgerAccounts))))
	mux.HandleFunc("GET /api/errors", s.apiErrors)
	mux.HandleFunc("POST /api/companies/{id}/resync", s.withCompany(func(w http.ResponseWriter, r *http.Request, id int64) {
		var req ResyncRequest
		if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<16)).Decode(&req); err != nil {
			writeError(w, http.StatusBadRequest, "resync body: "+err.Error())
			return
		}
		if err := s.Daemon.Resync(r.Context(), id, req.Table, req.ID, req.Force); err != nil {
			s.apiFail(w, err)
			return
		}
		writeJSON(w, http.StatusAccepted, map[string]any{"queued": 1})
	}))
	mux.HandleFunc("POST /api/retry", func(w http.ResponseWriter, r *http.Request) {
		var company int64
		if v := r.URL.Query().Get("company_id"); v != "" {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil || n <= 0 {
				writeError(w, http.StatusBadRequest, "company_id must be a GES company id")
				return
			}
			company = n
		}
		n, err := s.Daemon.RetryOpen(r.Context(), company)
		if err != nil {
			s.Logger.Warn("retry", "company_id", company, "queued", n, "err", err)
			writeJSON(w, http.StatusAccepted, map[string]any{"queued": n, "error": err.Error()})
			return
		}
		writeJSON(w, http.StatusAccepted, map[string]any{"queued": n})
	})
	mux.HandleFunc("POST /api/companies/{id}/disconnect", s.withCompany(func(w http.ResponseWriter, r *http.Request, id int64) {
		s.cache.forget(id)
		if err := s.Daemon.Disconnect(r.Context(), id); err != nil {
			s.apiFail(w, err)
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{"company_id": id, "connected": false})
	}))
	mux.HandleFunc("POST /api/companies/{id}/connect_link", s.withCompany(func(w http.ResponseWriter, r *http.Request, id int64) {
		u, exp := s.ConnectLink(id)
		writeJSON(w, http.StatusOK, ConnectLink{URL: u, ExpiresAt: exp})
	}))
}

func (s *Server) withCompany(h func(http.ResponseWriter, *http.Request, int64)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
		if err != nil || id <= 0 {
			writeError(w, http.StatusBadRequest, "the company id must be a positive number")
			return
		}
		h(w, r, id)
	}
}

func (s *Server) choices(list func(ctx context.Context, id int64) ([]daemon.Choice, error)) func(http.ResponseWriter, *http.Request, int64) {
	return func(w http.ResponseWriter, r *http.Request, id int64) {
		cs, err := list(r.Context(), id)
		if err != nil {
			s.apiFail(w, err)
			return
		}
		if cs == nil {
			cs = []daemon.Choice{}
		}
		writeJSON(w, http.StatusOK, cs)
	}
}

func (s *Server) apiErrors(w http.ResponseWriter, r *http.Request) {
	q := state.LogQuery{OpenOnly: r.URL.Query().Get("all") == "", Limit: 200}
	if v := r.URL.Query().Get("company_id"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n <= 0 {
			writeError(w, http.StatusBadRequest, "company_id must be a GES company id")
			return
		}
		q.CompanyID = n
	}
	if v := r.URL.Query().Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n <= 0 || n > 10000 {
			writeError(w, http.StatusBadRequest, "limit must be between 1 and 10000")
			return
		}
		q.Limit = n
	}
	es, err := s.Daemon.Entries(r.Context(), q)
	if err != nil {
		s.apiFail(w, err)
		return
	}
	out := make([]Entry, 0, len(es))
	for _, e := range es {
		out = append(out, s.entryView(e))
	}
	writeJSON(w, http.StatusOK, out)
}

// apiFail answers err with the status that says what the caller can do about it.
func (s *Server) apiFail(w http.ResponseWriter, err error) {
	code, field := failure(err)
	if code >= 500 {
		s.Logger.Error("api", "err", err)
	}
	writeJSON(w, code, apiError{Error: err.Error(), Field: field})
}

func failure(err error) (int, string) {
	var se *daemon.SettingsError
	switch {
	case errors.As(err, &se):
		return http.StatusBadRequest, se.Field
	case errors.Is(err, daemon.ErrNotConnected):
		return http.StatusConflict, ""
	case errors.Is(err, daemon.ErrRowGone):
		return http.StatusNotFound, ""
	case errors.Is(err, pipeline.ErrNotRunning):
		return http.StatusServiceUnavailable, ""
	}
	var re *sage.RetryableError
	var pe *sage.PermanentError
	if errors.As(err, &re) || errors.As(err, &pe) {
		return http.StatusBadGateway, ""
	}
	return http.StatusInternalServerError, ""
}
