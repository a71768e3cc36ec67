package web

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/gessync/gessync/daemon"
	"github.com/gessync/gessync/state"
)

// Backfiller is the daemon's backfill of a company's existing records.
type Backfiller interface {
	StartBackfill(ctx context.Context, companyID int64, since *time.Time) (daemon.BackfillProgress, error)
	Backfill(ctx context.Context, companyID int64) (daemon.BackfillProgress, error)
	Reconcile(ctx context.Context, companyID int64) ([]daemon.Difference, error)
}

// backfillRoutes serves, when the daemon offers them:
//
//	POST /api/companies/{id}/backfill[?since=YYYY-MM-DD]  start (202 with progress; 409 if running)
//	GET  /api/companies/{id}/backfill                      progress
//	GET  /api/companies/{id}/reconcile                     differences between GES and Sage
func (s *Server) backfillRoutes(mux *http.ServeMux) {
	b, ok := s.Daemon.(Backfiller)
	if !ok {
		return
	}
	mux.HandleFunc("POST /api/companies/{id}/backfill", func(w http.ResponseWriter, r *http.Request) {
		company, ok := companyParam(w, r)
		if !ok {
			return
		}
		var since *time.Time
		if v := r.URL.Query().Get("since"); v != "" {
			t, err := time.Parse(time.DateOnly, v)
			if err != nil {
				writeError(w, http.StatusBadRequest, "since must be a date like 2024-04-06")
				return
			}
			since = &t
		}
		p, err := b.StartBackfill(r.Context(), company, since)
		if errors.Is(err, state.ErrBackfillRunning) {
			writeError(w, http.StatusConflict, err.Error())
			return
		}
		if err != nil {
			writeError(w, http.StatusBadRequest, err.Error())
			return
		}
		writeJSON(w, http.StatusAccepted, p)
	})
	mux.HandleFunc("GET /api/companies/{id}/backfill", func(w http.ResponseWriter, r *http.Request) {
		company, ok := companyParam(w, r)
		if !ok {
			return
		}
		p, err := b.Backfill(r.Context(), company)
		if errors.Is(err, state.ErrNotFound) {
			writeError(w, http.StatusNotFound, fmt.Sprintf("company %d has no backfill", company))
			return
		}
		if err != nil {
			writeError(w, http.StatusInternalServerError, err.Error())
			return
		}
		writeJSON(w, http.StatusOK, p)
	})
	mux.HandleFunc("GET /api/companies/{id}/reconcile", func(w http.ResponseWriter, r *http.Request) {
		company, ok := companyParam(w, r)
		if !ok {
			return
		}
		diffs, err := b.Reconcile(r.Context(), company)
		if err != nil {
			writeError(w, http.StatusBadRequest, err.Error())
			return
		}
		if diffs == nil {
			diffs = []daemon.Difference{}
		}
		writeJSON(w, http.StatusOK, diffs)
	})
}

func companyParam(w http.ResponseWriter, r *http.Request) (int64, bool) {
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	if err != nil || id <= 0 {
		writeError(w, http.StatusBadRequest, "the company id must be a GES company id")
		return 0, false
	}
	return id, true
}
