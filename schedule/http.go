package schedule

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/backflowhq/backflow/state"
)

// SyncStatus is one element of GET /syncs.
type SyncStatus struct {
	Name     string `json:"name"`
	Schedule string `json:"schedule"`
	// NextRun is null for a manual sync and once shutdown has begun.
	NextRun *time.Time `json:"next_run"`
	// Running is true while a run is executing or waiting for a slot.
	Running bool `json:"running"`
	// Current describes that run; absent when idle.
	Current *RunStatus `json:"current,omitempty"`
	// Lease is who holds the sync's lease, read from the state with the history: a run
	// of this process or of another replica sharing the state. Absent when none does.
	Lease *state.Holder `json:"lease,omitempty"`
	// RunningElsewhere is true when the lease holder is not a run of this process:
	// another replica (or a `backflow sync`) runs the sync.
	RunningElsewhere bool `json:"running_elsewhere,omitempty"`
	// Runs are the kept run reports, newest first ([] when none).
	Runs []json.RawMessage `json:"runs"`
}

// RunStatus is a run that has been triggered and has not finished.
type RunStatus struct {
	RunID   string `json:"run_id"`
	Trigger string `json:"trigger"` // schedule | api
	Full    bool   `json:"full"`
	// State is "waiting" (for one of the max_concurrent_runs slots) or "running".
	State     string     `json:"state"`
	QueuedAt  time.Time  `json:"queued_at"`
	StartedAt *time.Time `json:"started_at,omitempty"`
}

// TriggerResponse is the body of a 202 from POST /syncs/{name}/run.
type TriggerResponse struct {
	Sync string `json:"sync"`
	// Run is "started", or "queued" when every slot is taken and the run waits for one.
	Run   string `json:"run"`
	RunID string `json:"run_id"`
	Full  bool   `json:"full"`
}

// errorResponse is the body of every 4xx/5xx this API writes itself.
type errorResponse struct {
	Sync  string `json:"sync,omitempty"`
	Error string `json:"error"`
	RunID string `json:"run_id,omitempty"` // 409: the run in progress
}

func (s *Server) newHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.Handle("GET /metrics", promhttp.InstrumentMetricHandler(s.metrics.reg,
		promhttp.HandlerFor(s.metrics.reg, promhttp.HandlerOpts{Registry: s.metrics.reg})))
	mux.HandleFunc("GET /syncs", s.handleList)
	mux.HandleFunc("GET /syncs/{name}", s.handleGet)
	mux.HandleFunc("POST /syncs/{name}/run", s.handleRun)
	s.addUIRoutes(mux)
	return mux
}

// Status returns what GET /syncs shows, in config order.
func (s *Server) Status() []SyncStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]SyncStatus, 0, len(s.syncs))
	for _, st := range s.syncs {
		out = append(out, s.statusLocked(st))
	}
	return out
}

func (s *Server) statusLocked(st *syncState) SyncStatus {
	ss := SyncStatus{Name: st.name, Schedule: st.sched.String(), Runs: make([]json.RawMessage, 0, len(st.history))}
	if !st.next.IsZero() {
		t := st.next.UTC()
		ss.NextRun = &t
	}
	if c := st.cur; c != nil {
		ss.Running = true
		rs := &RunStatus{RunID: c.id, Trigger: c.trigger, Full: c.full, State: "waiting", QueuedAt: c.queuedAt.UTC()}
		if !c.startedAt.IsZero() {
			t := c.startedAt.UTC()
			rs.State, rs.StartedAt = "running", &t
		}
		ss.Current = rs
	}
	if h := st.holder; h != nil {
		hc := *h
		ss.Lease = &hc
		ss.RunningElsewhere = st.cur == nil || h.RunID != st.cur.id
	}
	for _, e := range st.history {
		ss.Runs = append(ss.Runs, e.report)
	}
	return ss
}

func (s *Server) handleList(w http.ResponseWriter, r *http.Request) {
	s.loadHistory(r.Context())
	writeJSON(w, http.StatusOK, s.Status())
}

func (s *Server) handleGet(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	st, ok := s.byName[name]
	if !ok {
		writeJSON(w, http.StatusNotFound, errorResponse{Error: fmt.Sprintf("unknown sync %q", name)})
		return
	}
	s.loadHistory(r.Context())
	s.mu.Lock()
	ss := s.statusLocked(st)
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, ss)
}

func (s *Server) handleRun(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	st, ok := s.byName[name]
	if !ok {
		writeJSON(w, http.StatusNotFound, errorResponse{Error: fmt.Sprintf("unknown sync %q", name)})
		return
	}
	full := false
	if v := r.URL.Query().Get("full"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			writeJSON(w, http.StatusBadRequest, errorResponse{Sync: name, Error: fmt.Sprintf("full: %q is not true or false", v)})
			return
		}
		full = b
	}
	id, queued, err := s.trigger(st, full, TriggerAPI, time.Time{})
	switch {
	case errors.Is(err, ErrRunning):
		writeJSON(w, http.StatusConflict, errorResponse{Sync: name, Error: "already running", RunID: id})
	case errors.Is(err, ErrStopping):
		w.Header().Set("Retry-After", "30")
		writeJSON(w, http.StatusServiceUnavailable, errorResponse{Sync: name, Error: "shutting down"})
	case err != nil:
		writeJSON(w, http.StatusInternalServerError, errorResponse{Sync: name, Error: err.Error()})
	default:
		resp := TriggerResponse{Sync: name, Run: "started", RunID: id, Full: full}
		if queued {
			resp.Run = "queued"
		}
		w.Header().Set("Location", "/syncs/"+name)
		writeJSON(w, http.StatusAccepted, resp)
	}
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		http.Error(w, `{"error":"encoding the response"}`, http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_, _ = w.Write(append(b, '\n'))
}
