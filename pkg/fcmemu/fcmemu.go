// Package fcmemu is a local stand-in for the Firebase Cloud Messaging HTTP v1 API.
//
// It answers POST /v1/projects/{project}/messages:send the way FCM does, down to the error
// body the Go Admin SDK parses, so messaging.IsUnregistered and the other helpers classify its
// errors exactly as they classify FCM's. It serves any number of projects, each with its
// own counters and, as FCM has, its own per-minute quota. Failures are injected
// deterministically: by token prefix (see tokenRule), by the per-project quota, by added
// latency and by a switch that fails every send. What it received is kept for assertions, through Go methods for in-process tests
// and under /emulator/ over HTTP for everything else. services/fcm-emulator/README.md is the
// user documentation.
//
// Point the SDK at it with
//
//	firebase.NewApp(ctx, &firebase.Config{ProjectID: "demo"},
//		option.WithEndpoint(url+"/v1"), option.WithoutAuthentication())
package fcmemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Defaults for a zero Config.
const (
	DefaultRetryAfter = 30 * time.Second
	DefaultMessageLog = 10_000
)

// maxBody bounds a send request's body; FCM's own payload limit is far below it.
const maxBody = 1 << 20

// Config configures a Server; the zero value is a working emulator with no failures injected
// beyond the token prefixes. Invalid values are logged and replaced by their defaults.
type Config struct {
	// QuotaPerMinute limits each project's sends in each clock minute, as FCM's per-project
	// quota does; 0 means unlimited.
	QuotaPerMinute int
	// ProjectQuotas overrides QuotaPerMinute for the projects it names (0: unlimited).
	ProjectQuotas map[string]int
	// Latency is added to every send before it is answered.
	Latency time.Duration
	// RetryAfter is the Retry-After sent with injected QUOTA_EXCEEDED errors (default 30s).
	RetryAfter time.Duration
	// UnavailableRetryAfter, when positive, is sent as Retry-After with UNAVAILABLE errors.
	// The SDK retries 503 itself, waiting at least this long; above its 2-minute cap it does
	// not retry at all. 0 sends no Retry-After, and the SDK waits 0, 1, 2 and 4 s.
	UnavailableRetryAfter time.Duration
	// FailAll, when set, fails every send with this error until cleared.
	FailAll ErrorCode
	// MessageLog is how many received requests Messages keeps (default 10,000).
	MessageLog int
	// Logger gets control-plane events at info and one line per send at debug (nil: discard).
	Logger *slog.Logger
	// Now is the clock for quota windows and receive times (nil: time.Now).
	Now func() time.Time
}

// Settings are the knobs that can be changed while the emulator runs.
type Settings struct {
	QuotaPerMinute        int
	ProjectQuotas         map[string]int // nil when no project has its own quota
	Latency               time.Duration
	RetryAfter            time.Duration
	UnavailableRetryAfter time.Duration
	FailAll               ErrorCode
}

func (st Settings) validate() error {
	var errs []error
	if st.QuotaPerMinute < 0 {
		errs = append(errs, fmt.Errorf("quota per minute %d: must not be negative", st.QuotaPerMinute))
	}
	for p, q := range st.ProjectQuotas {
		if !validProject(p) {
			errs = append(errs, fmt.Errorf("project quota for %q: not a project id (letters, digits, -, _, .)", p))
		}
		if q < 0 {
			errs = append(errs, fmt.Errorf("project quota for %q: %d must not be negative", p, q))
		}
	}
	if st.Latency < 0 {
		errs = append(errs, fmt.Errorf("latency %s: must not be negative", st.Latency))
	}
	if st.RetryAfter < time.Second {
		errs = append(errs, fmt.Errorf("retry after %s: must be at least 1s", st.RetryAfter))
	}
	if st.UnavailableRetryAfter < 0 {
		errs = append(errs, fmt.Errorf("unavailable retry after %s: must not be negative", st.UnavailableRetryAfter))
	}
	if st.FailAll != "" {
		if _, err := parseErrorCode(string(st.FailAll)); err != nil {
			errs = append(errs, fmt.Errorf("fail all: %w", err))
		}
	}
	return errors.Join(errs...)
}

// live is Settings prepared for the hot path.
type live struct {
	Settings
	retryAfter            []string // Retry-After header value for QUOTA_EXCEEDED
	unavailableRetryAfter []string // for UNAVAILABLE; nil: no header
}

// quotaOf returns the per-minute quota of project (0: unlimited).
func (l *live) quotaOf(project string) int {
	if q, ok := l.ProjectQuotas[project]; ok {
		return q
	}
	return l.QuotaPerMinute
}

func newLive(st Settings) *live {
	st.ProjectQuotas = maps.Clone(st.ProjectQuotas) // callers may keep changing theirs
	l := &live{Settings: st, retryAfter: retryAfterHeader(st.RetryAfter)}
	if st.UnavailableRetryAfter > 0 {
		l.unavailableRetryAfter = retryAfterHeader(st.UnavailableRetryAfter)
	}
	return l
}

// retryAfterHeader renders d as Retry-After seconds, rounded up, at least 1.
func retryAfterHeader(d time.Duration) []string {
	secs := max(int64((d+time.Second-1)/time.Second), 1)
	return []string{strconv.FormatInt(secs, 10)}
}

// Server is the emulator; it is an http.Handler and safe for concurrent use.
type Server struct {
	log *slog.Logger
	now func() time.Time
	mux *http.ServeMux

	settingsMu sync.Mutex // serialises writers; readers load settings
	settings   atomic.Pointer[live]

	counters counters
	projects projectMap
	tokens   *tokenMap
	ring     *ring
	quotas   quotas

	seq      atomic.Uint64
	instance string
	canned   [len(wires)][]byte // error bodies with FCM's usual messages
}

// New returns an emulator configured by cfg.
func New(cfg Config) *Server {
	s := &Server{
		log:      cfg.Logger,
		now:      cfg.Now,
		tokens:   newTokenMap(),
		instance: strconv.FormatUint(rand.Uint64(), 16),
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.now == nil {
		s.now = time.Now
	}
	size := cfg.MessageLog
	if size <= 0 {
		size = DefaultMessageLog
	}
	s.ring = newRing(size)
	for i, code := range errorCodes {
		s.canned[i] = encodeError(code, "", "")
	}

	st := Settings{
		QuotaPerMinute:        cfg.QuotaPerMinute,
		ProjectQuotas:         cfg.ProjectQuotas,
		Latency:               cfg.Latency,
		RetryAfter:            cfg.RetryAfter,
		UnavailableRetryAfter: cfg.UnavailableRetryAfter,
		FailAll:               cfg.FailAll,
	}
	if st.RetryAfter == 0 {
		st.RetryAfter = DefaultRetryAfter
	}
	if err := st.validate(); err != nil {
		s.log.Warn("fcm emulator: invalid config, using defaults", "err", err)
		st = Settings{RetryAfter: DefaultRetryAfter}
	}
	s.settings.Store(newLive(st))

	s.mux = http.NewServeMux()
	// The emulator depends on nothing: it is live and ready whenever it answers.
	s.mux.HandleFunc("GET /livez", s.handleHealth)
	s.mux.HandleFunc("GET /readyz", s.handleHealth)
	s.mux.HandleFunc("GET /healthz", s.handleHealth)
	s.mux.HandleFunc("GET /emulator/stats", s.handleStats)
	s.mux.HandleFunc("GET /emulator/messages", s.handleMessages)
	s.mux.HandleFunc("POST /emulator/reset", s.handleReset)
	s.mux.HandleFunc("GET /emulator/config", s.handleGetConfig)
	s.mux.HandleFunc("PUT /emulator/config", s.handlePutConfig)
	s.mux.HandleFunc("/", s.handleNotFound)
	return s
}

// ServeHTTP serves the FCM send endpoint, the /emulator/ control endpoints and /livez, /readyz and /healthz.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	// The send endpoint bypasses the mux: it is the hot path.
	if project, ok := sendProject(r.URL.Path); ok {
		if r.Method != http.MethodPost {
			w.Header().Set("Allow", http.MethodPost)
			writeStatus(w, http.StatusMethodNotAllowed, "METHOD_NOT_ALLOWED", "Use POST.")
			return
		}
		s.send(w, r, project)
		return
	}
	s.mux.ServeHTTP(w, r)
}

// sendProject returns the project of a send path /v1/projects/{project}/messages:send.
func sendProject(path string) (string, bool) {
	rest, ok := strings.CutPrefix(path, "/v1/projects/")
	if !ok {
		return "", false
	}
	project, ok := strings.CutSuffix(rest, "/messages:send")
	if !ok || !validProject(project) {
		return "", false
	}
	return project, true
}

// validProject reports whether p is a plausible project id. Project ids are letters, digits
// and hyphens; allowing no more keeps the id safe to splice into the JSON answer.
func validProject(p string) bool {
	if p == "" {
		return false
	}
	for i := 0; i < len(p); i++ {
		c := p[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_' || c == '.') {
			return false
		}
	}
	return true
}

var jsonContentType = []string{"application/json; charset=UTF-8"}

// failure is the error a send is answered with; code "" means none (yet).
type failure struct {
	code       ErrorCode
	message    string   // "" for FCM's usual message
	field      string   // the offending field of a validation error
	retryAfter []string // overrides the configured Retry-After
}

var errTooBig = fmt.Errorf("request payload size exceeds the limit: %d bytes", maxBody)

// send answers one messages:send request. The order of checks is part of the contract
// (README): read body, latency, malformed body, fail-all, quota, validation, token rules.
func (s *Server) send(w http.ResponseWriter, r *http.Request, project string) {
	// Reading the body first lets net/http watch the connection, so that the request's
	// context ends when the client gives up during the latency.
	body, err := readBody(r)
	cur := s.settings.Load()
	if cur.Latency > 0 && !sleep(r.Context(), cur.Latency) {
		return // the client gave up; nothing is recorded
	}
	pc := s.projects.get(project)
	s.counters.requests.Add(1)
	pc.requests.Add(1)
	rec := Received{Project: project, ReceivedAt: s.now(), Body: body}

	var req sendRequest
	if err == nil {
		err = json.Unmarshal(body, &req)
	}
	if err != nil {
		s.answer(w, &rec, pc, cur, failure{code: InvalidArgument, message: "Invalid JSON payload received. " + err.Error(), field: "message"})
		return
	}
	rec.ValidateOnly = req.ValidateOnly
	if req.Message != nil {
		rec.Message = *req.Message
		rec.Token, _ = req.Message.target()
	}

	var f failure
	switch {
	case cur.FailAll != "":
		f.code = cur.FailAll
	case cur.quotaOf(project) > 0:
		if ok, wait := s.quotas.take(project, rec.ReceivedAt, cur.quotaOf(project)); !ok {
			f = failure{code: QuotaExceeded, retryAfter: retryAfterHeader(wait)}
		}
	}
	if f.code == "" {
		if v := validate(req.Message); v != nil {
			f = failure{code: InvalidArgument, message: v.message, field: v.field}
		}
	}
	if rec.Token != "" {
		f.code = s.tokens.record(rec.Token, f.code, req.ValidateOnly)
	}
	s.answer(w, &rec, pc, cur, f)
}

// answer writes the response for f, counts it in the totals and in pc, the project's
// counters, and logs rec.
func (s *Server) answer(w http.ResponseWriter, rec *Received, pc *counters, cur *live, f failure) {
	h := w.Header()
	h["Content-Type"] = jsonContentType
	if f.code == "" {
		rec.Status = http.StatusOK
		rec.MessageID = s.newName(rec.Project)
		if rec.ValidateOnly {
			s.counters.validated.Add(1)
			pc.validated.Add(1)
		} else {
			s.counters.delivered.Add(1)
			pc.delivered.Add(1)
		}
		out := make([]byte, 0, len(rec.MessageID)+12)
		out = append(out, `{"name":"`...)
		out = append(out, rec.MessageID...)
		out = append(out, `"}`...)
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write(out) // the client is gone if this fails; nothing to do
	} else {
		i := f.code.index()
		s.counters.failed[i].Add(1)
		pc.failed[i].Add(1)
		out := s.canned[i]
		rec.ErrorMessage = wires[i].message
		if f.message != "" {
			out = encodeError(f.code, f.message, f.field)
			rec.ErrorMessage = f.message
		}
		switch {
		case f.retryAfter != nil:
			h["Retry-After"] = f.retryAfter
		case f.code == QuotaExceeded:
			h["Retry-After"] = cur.retryAfter
		case f.code == Unavailable && cur.unavailableRetryAfter != nil:
			h["Retry-After"] = cur.unavailableRetryAfter
		}
		rec.Status = wires[i].httpStatus
		rec.Error = f.code
		w.WriteHeader(rec.Status)
		_, _ = w.Write(out)
	}
	s.ring.add(rec)
	if s.log.Enabled(context.Background(), slog.LevelDebug) {
		s.log.LogAttrs(context.Background(), slog.LevelDebug, "fcm send",
			slog.String("project", rec.Project), slog.String("token", rec.Token),
			slog.Bool("validate_only", rec.ValidateOnly), slog.Int("status", rec.Status),
			slog.String("error", string(rec.Error)))
	}
}

// newName returns a unique message name, shaped like FCM's "0:<number>%<hex>".
func (s *Server) newName(project string) string {
	b := make([]byte, 0, 64)
	b = append(b, "projects/"...)
	b = append(b, project...)
	b = append(b, "/messages/0:"...)
	b = strconv.AppendUint(b, s.seq.Add(1), 10)
	b = append(b, '%')
	b = append(b, s.instance...)
	return string(b)
}

func readBody(r *http.Request) ([]byte, error) {
	if r.ContentLength > maxBody {
		return nil, errTooBig
	}
	if r.ContentLength > 0 {
		b := make([]byte, r.ContentLength)
		if _, err := io.ReadFull(r.Body, b); err != nil {
			return nil, fmt.Errorf("read body: %w", err)
		}
		return b, nil
	}
	b, err := io.ReadAll(io.LimitReader(r.Body, maxBody+1))
	if err != nil {
		return nil, fmt.Errorf("read body: %w", err)
	}
	if len(b) > maxBody {
		return nil, errTooBig
	}
	return b, nil
}

// sleep waits for d or until ctx ends; it reports whether the full d passed.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
