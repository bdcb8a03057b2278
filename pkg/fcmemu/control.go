package fcmemu

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"
)

// Stats returns the counters and every target's stats.
func (s *Server) Stats() Stats {
	st := s.totals()
	st.Tokens = s.tokens.all()
	return st
}

func (s *Server) totals() Stats {
	t := s.counters.stats()
	return Stats{
		Requests:  t.Requests,
		Delivered: t.Delivered,
		Validated: t.Validated,
		Failed:    t.Failed,
		Projects:  s.projects.all(),
	}
}

// Project returns the counters of one project (zero if it never received a send).
func (s *Server) Project(project string) ProjectStats {
	if st, ok := s.projects.all()[project]; ok {
		return st
	}
	return ProjectStats{Failed: map[ErrorCode]int64{}}
}

// Token returns the stats of one target (zero if it was never seen).
func (s *Server) Token(token string) TokenStats {
	st, _ := s.tokens.get(token)
	return st
}

// Messages returns up to limit of the most recently received requests, oldest first; limit
// <= 0 returns all that are kept.
func (s *Server) Messages(limit int) []Received {
	return s.ring.last(limit, nil)
}

// Reset clears the counters (totals and per project), the per-token stats (and with them the
// flaky counters), the received messages and the quota windows. Settings are kept.
func (s *Server) Reset() {
	s.counters.reset()
	s.projects.reset()
	s.tokens.reset()
	s.ring.reset()
	s.quotas.reset()
	s.log.Info("fcm emulator reset")
}

// Settings returns the settings in force.
func (s *Server) Settings() Settings {
	return s.settings.Load().Settings
}

// SetSettings replaces the settings; an invalid st changes nothing.
func (s *Server) SetSettings(st Settings) error {
	_, err := s.update(func(cur *Settings) error { *cur = st; return nil })
	return err
}

// SetFailAll makes every send fail with code until called with "".
func (s *Server) SetFailAll(code ErrorCode) error {
	_, err := s.update(func(cur *Settings) error { cur.FailAll = code; return nil })
	return err
}

// update applies change to a copy of the settings and stores it if change and validation
// both succeed; otherwise nothing changes.
func (s *Server) update(change func(*Settings) error) (Settings, error) {
	s.settingsMu.Lock()
	defer s.settingsMu.Unlock()
	st := s.settings.Load().Settings
	if err := errors.Join(change(&st), st.validate()); err != nil {
		return s.settings.Load().Settings, err
	}
	s.settings.Store(newLive(st))
	s.log.Info("fcm emulator settings changed",
		"quota_per_minute", st.QuotaPerMinute, "project_quotas", st.ProjectQuotas, "latency", st.Latency.String(),
		"retry_after", st.RetryAfter.String(), "unavailable_retry_after", st.UnavailableRetryAfter.String(),
		"fail_all", st.FailAll)
	return st, nil
}

func (s *Server) handleHealth(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	_, _ = w.Write([]byte("ok\n"))
}

// handleStats serves GET /emulator/stats. ?token=T (repeatable) limits the per-token part to
// those targets (unseen ones report zeros); ?tokens=false leaves it out.
func (s *Server) handleStats(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	st := s.totals()
	switch {
	case q.Has("token"):
		st.Tokens = make(map[string]TokenStats)
		for _, t := range q["token"] {
			st.Tokens[t] = s.Token(t)
		}
	case q.Get("tokens") == "false":
	default:
		st.Tokens = s.tokens.all()
	}
	writeJSON(w, http.StatusOK, st)
}

// receivedView is a Received as /emulator/messages shows it.
type receivedView struct {
	Received
	// Payload is the "message" object of the request; Body the raw body when it was not JSON.
	Payload json.RawMessage `json:"payload,omitempty"`
	Body    string          `json:"body,omitempty"`
}

// handleMessages serves GET /emulator/messages?limit=N&token=T&project=P&payload=false: the
// last N (default 100) received requests, oldest first, optionally only those for target T
// and/or project P; payload=false leaves out each request's message (payload, body), for a
// reader that wants only who received what and when (make bench's receipts).
func (s *Server) handleMessages(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	limit := 100
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n <= 0 {
			writeStatus(w, http.StatusBadRequest, "INVALID_ARGUMENT", fmt.Sprintf("limit %q: want a positive integer", v))
			return
		}
		limit = n
	}
	var keep func(*Received) bool
	if q.Has("token") || q.Has("project") {
		token, project := q.Get("token"), q.Get("project")
		keep = func(rec *Received) bool {
			return (!q.Has("token") || rec.Token == token) && (!q.Has("project") || rec.Project == project)
		}
	}
	recs := s.ring.last(limit, keep)
	if q.Get("payload") == "false" {
		writeJSON(w, http.StatusOK, struct {
			Messages []Received `json:"messages"`
		}{recs})
		return
	}
	views := make([]receivedView, len(recs))
	for i, rec := range recs {
		views[i] = receivedView{Received: rec, Payload: payload(rec.Body)}
		if views[i].Payload == nil {
			views[i].Body = string(rec.Body)
		}
	}
	writeJSON(w, http.StatusOK, struct {
		Messages []receivedView `json:"messages"`
	}{views})
}

func (s *Server) handleReset(w http.ResponseWriter, _ *http.Request) {
	s.Reset()
	w.WriteHeader(http.StatusNoContent)
}

// settingsJSON is the wire form of Settings; durations are Go duration strings.
type settingsJSON struct {
	QuotaPerMinute        int            `json:"quota_per_minute"`
	ProjectQuotas         map[string]int `json:"project_quotas"`
	Latency               string         `json:"latency"`
	RetryAfter            string         `json:"retry_after"`
	UnavailableRetryAfter string         `json:"unavailable_retry_after"`
	FailAll               ErrorCode      `json:"fail_all"`
}

func toJSON(st Settings) settingsJSON {
	return settingsJSON{
		QuotaPerMinute:        st.QuotaPerMinute,
		ProjectQuotas:         orEmpty(st.ProjectQuotas),
		Latency:               st.Latency.String(),
		RetryAfter:            st.RetryAfter.String(),
		UnavailableRetryAfter: st.UnavailableRetryAfter.String(),
		FailAll:               st.FailAll,
	}
}

// orEmpty returns m, or an empty map for nil so the JSON shows {} rather than null.
func orEmpty(m map[string]int) map[string]int {
	if m == nil {
		return map[string]int{}
	}
	return m
}

// settingsPatch is the body of PUT /emulator/config: absent fields are left as they are;
// project_quotas, when present, replaces every per-project quota ({} removes them all).
type settingsPatch struct {
	QuotaPerMinute        *int            `json:"quota_per_minute"`
	ProjectQuotas         *map[string]int `json:"project_quotas"`
	Latency               *string         `json:"latency"`
	RetryAfter            *string         `json:"retry_after"`
	UnavailableRetryAfter *string         `json:"unavailable_retry_after"`
	FailAll               *ErrorCode      `json:"fail_all"`
}

// apply changes st by p, reporting every unparsable field at once.
func (p settingsPatch) apply(st *Settings) error {
	var errs []error
	duration := func(name string, v *string, dst *time.Duration) {
		if v == nil {
			return
		}
		d, err := time.ParseDuration(*v)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", name, err))
			return
		}
		*dst = d
	}
	if p.QuotaPerMinute != nil {
		st.QuotaPerMinute = *p.QuotaPerMinute
	}
	if p.ProjectQuotas != nil {
		st.ProjectQuotas = *p.ProjectQuotas
		if len(st.ProjectQuotas) == 0 {
			st.ProjectQuotas = nil
		}
	}
	duration("latency", p.Latency, &st.Latency)
	duration("retry_after", p.RetryAfter, &st.RetryAfter)
	duration("unavailable_retry_after", p.UnavailableRetryAfter, &st.UnavailableRetryAfter)
	if p.FailAll != nil {
		st.FailAll = *p.FailAll
	}
	return errors.Join(errs...)
}

func (s *Server) handleGetConfig(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, toJSON(s.Settings()))
}

func (s *Server) handlePutConfig(w http.ResponseWriter, r *http.Request) {
	var p settingsPatch
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 64<<10))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&p); err != nil {
		writeStatus(w, http.StatusBadRequest, "INVALID_ARGUMENT", fmt.Sprintf("decode config: %v", err))
		return
	}
	st, err := s.update(p.apply)
	if err != nil {
		writeStatus(w, http.StatusBadRequest, "INVALID_ARGUMENT", err.Error())
		return
	}
	writeJSON(w, http.StatusOK, toJSON(st))
}

func (s *Server) handleNotFound(w http.ResponseWriter, r *http.Request) {
	writeStatus(w, http.StatusNotFound, "NOT_FOUND", fmt.Sprintf("%s %s is not served by the FCM emulator.", r.Method, r.URL.Path))
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header()["Content-Type"] = jsonContentType
	w.WriteHeader(status)
	// An encode error here means the client went away; there is no one left to tell.
	_ = json.NewEncoder(w).Encode(v)
}

// writeStatus answers with a google.rpc.Status that has no FCM detail, as Google front ends
// do for requests that never reach FCM.
func writeStatus(w http.ResponseWriter, code int, status, message string) {
	writeJSON(w, code, struct {
		Error errorStatus `json:"error"`
	}{errorStatus{Code: code, Message: message, Status: status}})
}
