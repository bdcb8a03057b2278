package fcmemu

import (
	"encoding/json"
	"hash/maphash"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// TokenStats is what the emulator saw for one target (a token, FID, "/topics/<name>" or
// "condition:<expr>").
type TokenStats struct {
	Received  int64     `json:"received"`
	Delivered int64     `json:"delivered"`
	Validated int64     `json:"validated"`
	Failures  int64     `json:"failures"`
	LastError ErrorCode `json:"last_error,omitempty"`
}

// Stats are the counters since the emulator started or was last reset. Every send request
// ends in exactly one of Delivered, Validated or Failed, so
// Requests == Delivered + Validated + sum(Failed) once no request is in flight.
type Stats struct {
	Requests  int64               `json:"requests"`
	Delivered int64               `json:"delivered"`
	Validated int64               `json:"validated"`
	Failed    map[ErrorCode]int64 `json:"failed"`
	// Projects is the same counters per project that received at least one send.
	Projects map[string]ProjectStats `json:"projects"`
	// Tokens is per target; Server.Stats fills it completely, the HTTP endpoint as asked.
	// A target is counted once whichever projects it was sent through.
	Tokens map[string]TokenStats `json:"tokens,omitempty"`
}

// ProjectStats are the counters of one project; as for the totals, Requests == Delivered +
// Validated + sum(Failed) once no request is in flight.
type ProjectStats struct {
	Requests  int64               `json:"requests"`
	Delivered int64               `json:"delivered"`
	Validated int64               `json:"validated"`
	Failed    map[ErrorCode]int64 `json:"failed"`
}

// Received is one send request as the emulator received and answered it.
type Received struct {
	Project      string    `json:"project"`
	Token        string    `json:"token,omitempty"` // the target key, see TokenStats
	ValidateOnly bool      `json:"validate_only,omitempty"`
	Message      Message   `json:"-"` // decoded; shared with the emulator: do not modify
	Body         []byte    `json:"-"` // the request body as received
	Status       int       `json:"status"`
	Error        ErrorCode `json:"error,omitempty"`
	ErrorMessage string    `json:"error_message,omitempty"`
	// MessageID is the name answered on success, as the SDK's Send returns it:
	// "projects/<project>/messages/<id>".
	MessageID  string    `json:"message_id,omitempty"`
	ReceivedAt time.Time `json:"received_at"`
}

// counters are the global totals, updated with atomics only.
type counters struct {
	requests  atomic.Int64
	delivered atomic.Int64
	validated atomic.Int64
	failed    [len(wires)]atomic.Int64
}

func (c *counters) stats() ProjectStats {
	st := ProjectStats{
		Requests:  c.requests.Load(),
		Delivered: c.delivered.Load(),
		Validated: c.validated.Load(),
		Failed:    make(map[ErrorCode]int64),
	}
	for i, code := range errorCodes {
		if n := c.failed[i].Load(); n > 0 {
			st.Failed[code] = n
		}
	}
	return st
}

// projectMap holds each project's counters. Projects are few and found on every send, so
// the map is read under a read lock and written only when a new project appears.
type projectMap struct {
	mu sync.RWMutex
	m  map[string]*counters
}

func (p *projectMap) get(project string) *counters {
	p.mu.RLock()
	c := p.m[project]
	p.mu.RUnlock()
	if c != nil {
		return c
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if c = p.m[project]; c == nil {
		if p.m == nil {
			p.m = make(map[string]*counters)
		}
		c = &counters{}
		p.m[project] = c
	}
	return c
}

func (p *projectMap) all() map[string]ProjectStats {
	p.mu.RLock()
	defer p.mu.RUnlock()
	out := make(map[string]ProjectStats, len(p.m))
	for name, c := range p.m {
		out[name] = c.stats()
	}
	return out
}

func (p *projectMap) reset() {
	p.mu.Lock()
	p.m = nil
	p.mu.Unlock()
}

func (c *counters) reset() {
	c.requests.Store(0)
	c.delivered.Store(0)
	c.validated.Store(0)
	for i := range c.failed {
		c.failed[i].Store(0)
	}
}

// tokenState is TokenStats plus ruleHits, the number of requests that reached the token
// rules (what flakyN counts).
type tokenState struct {
	TokenStats
	ruleHits int64
}

const shardCount = 64

// tokenMap is a sharded map of per-target state, so that concurrent sends rarely contend.
type tokenMap struct {
	seed   maphash.Seed
	shards [shardCount]tokenShard
}

type tokenShard struct {
	mu sync.Mutex
	m  map[string]*tokenState
	_  [48]byte // one shard per 64-byte cache line
}

func newTokenMap() *tokenMap {
	t := &tokenMap{seed: maphash.MakeSeed()}
	for i := range t.shards {
		t.shards[i].m = make(map[string]*tokenState)
	}
	return t
}

func (t *tokenMap) shard(key string) *tokenShard {
	return &t.shards[maphash.String(t.seed, key)%shardCount]
}

// record counts one request for key. If code is "" the token rules decide it. It returns the
// final code ("" for success).
func (t *tokenMap) record(key string, code ErrorCode, validateOnly bool) ErrorCode {
	sh := t.shard(key)
	sh.mu.Lock()
	st := sh.m[key]
	if st == nil {
		st = &tokenState{}
		sh.m[key] = st
	}
	st.Received++
	if code == "" {
		st.ruleHits++
		// A topic's name takes the same rules as a token: topic "flaky1-news" fails once.
		code = tokenRule(strings.TrimPrefix(key, "/topics/"), st.ruleHits)
	}
	switch {
	case code != "":
		st.Failures++
		st.LastError = code
	case validateOnly:
		st.Validated++
	default:
		st.Delivered++
	}
	sh.mu.Unlock()
	return code
}

func (t *tokenMap) get(key string) (TokenStats, bool) {
	sh := t.shard(key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	st, ok := sh.m[key]
	if !ok {
		return TokenStats{}, false
	}
	return st.TokenStats, true
}

func (t *tokenMap) all() map[string]TokenStats {
	out := make(map[string]TokenStats)
	for i := range t.shards {
		sh := &t.shards[i]
		sh.mu.Lock()
		for k, st := range sh.m {
			out[k] = st.TokenStats
		}
		sh.mu.Unlock()
	}
	return out
}

func (t *tokenMap) reset() {
	for i := range t.shards {
		sh := &t.shards[i]
		sh.mu.Lock()
		sh.m = make(map[string]*tokenState)
		sh.mu.Unlock()
	}
}

// ring keeps the last len(buf) received requests.
type ring struct {
	mu   sync.Mutex
	buf  []Received
	next int
	full bool
}

func newRing(size int) *ring {
	return &ring{buf: make([]Received, size)}
}

func (r *ring) add(rec *Received) {
	r.mu.Lock()
	r.buf[r.next] = *rec
	r.next++
	if r.next == len(r.buf) {
		r.next, r.full = 0, true
	}
	r.mu.Unlock()
}

// last returns up to limit of the newest entries that match keep (nil keeps all), oldest
// first. limit <= 0 means no limit.
func (r *ring) last(limit int, keep func(*Received) bool) []Received {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := r.next
	if r.full {
		n = len(r.buf)
	}
	if limit <= 0 || limit > n {
		limit = n
	}
	out := make([]Received, 0, min(limit, 1024))
	// Walk newest to oldest, then reverse.
	for i := 0; i < n && len(out) < limit; i++ {
		rec := &r.buf[(r.next-1-i+len(r.buf))%len(r.buf)]
		if keep == nil || keep(rec) {
			out = append(out, *rec)
		}
	}
	for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
		out[i], out[j] = out[j], out[i]
	}
	return out
}

func (r *ring) reset() {
	r.mu.Lock()
	clear(r.buf)
	r.next, r.full = 0, false
	r.mu.Unlock()
}

// payload returns the "message" object of a request body, or nil if the body is not JSON.
func payload(body []byte) json.RawMessage {
	var env struct {
		Message json.RawMessage `json:"message"`
	}
	if err := json.Unmarshal(body, &env); err != nil {
		return nil
	}
	return env.Message
}

// quotas count each project's sends in fixed one-minute windows aligned to the clock's
// minutes.
type quotas struct {
	mu sync.Mutex
	m  map[string]*window
}

type window struct {
	minute int64 // Unix minute
	used   int
}

// take consumes one send from project's window at now. When the window is full it returns
// false and the time until the window ends.
func (q *quotas) take(project string, now time.Time, limit int) (bool, time.Duration) {
	m := now.Unix() / 60
	q.mu.Lock()
	defer q.mu.Unlock()
	w := q.m[project]
	if w == nil {
		if q.m == nil {
			q.m = make(map[string]*window)
		}
		w = &window{}
		q.m[project] = w
	}
	if m != w.minute {
		w.minute, w.used = m, 0
	}
	if w.used >= limit {
		return false, time.Unix((m+1)*60, 0).Sub(now)
	}
	w.used++
	return true, 0
}

func (q *quotas) reset() {
	q.mu.Lock()
	q.m = nil
	q.mu.Unlock()
}
