package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// doJSON sends in (if any) as JSON and decodes the answer into out (if any); an answer of
// 300 or more is an error quoting the start of its body.
func doJSON(ctx context.Context, hc *http.Client, method, u string, auth *url.Userinfo, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, body)
	if err != nil {
		return err
	}
	if auth != nil {
		pass, _ := auth.Password()
		req.SetBasicAuth(auth.Username(), pass)
	}
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("%s %s: %s %s", method, req.URL.Redacted(), resp.Status, bytes.TrimSpace(b))
	}
	if out == nil {
		_, _ = io.Copy(io.Discard, resp.Body)
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("%s %s: decode: %w", method, req.URL.Redacted(), err)
	}
	return nil
}

// management is RabbitMQ's HTTP management API.
type management struct {
	base string
	auth *url.Userinfo
	hc   *http.Client
}

func newManagement(rawURL string) (*management, error) {
	u, err := url.Parse(rawURL)
	if err != nil || u.Host == "" {
		return nil, fmt.Errorf("RABBITMQ_MANAGEMENT_URL %q: want http://user:pass@host:15672", rawURL)
	}
	return &management{base: u.Scheme + "://" + u.Host, auth: u.User, hc: &http.Client{Timeout: 30 * time.Second}}, nil
}

// version returns the broker's RabbitMQ version.
func (m *management) version(ctx context.Context) (string, error) {
	var o struct {
		Version string `json:"rabbitmq_version"`
	}
	err := doJSON(ctx, m.hc, http.MethodGet, m.base+"/api/overview", m.auth, nil, &o)
	return o.Version, err
}

// deleteTopology deletes every queue named "<name>.…" and the exchange name, in vhost "/".
func (m *management) deleteTopology(ctx context.Context, name string) error {
	var queues []struct{ Name string }
	if err := doJSON(ctx, m.hc, http.MethodGet, m.base+"/api/queues/%2F?columns=name", m.auth, nil, &queues); err != nil {
		return err
	}
	for _, q := range queues {
		if strings.HasPrefix(q.Name, name+".") {
			if err := doJSON(ctx, m.hc, http.MethodDelete, m.base+"/api/queues/%2F/"+url.PathEscape(q.Name), m.auth, nil, nil); err != nil {
				return err
			}
		}
	}
	err := doJSON(ctx, m.hc, http.MethodDelete, m.base+"/api/exchanges/%2F/"+url.PathEscape(name), m.auth, nil, nil)
	if err != nil && strings.Contains(err.Error(), "404") {
		return nil // the phase that declares it did not run
	}
	return err
}

// emulator is the fcm-emulator's control API.
type emulator struct {
	base string
	hc   *http.Client
}

func newEmulator(base string) *emulator {
	return &emulator{base: base, hc: &http.Client{Timeout: 30 * time.Second}}
}

// emulatorStats are the emulator's totals (GET /emulator/stats?tokens=false).
type emulatorStats struct {
	Requests  int64            `json:"requests"`
	Delivered int64            `json:"delivered"`
	Validated int64            `json:"validated"`
	Failed    map[string]int64 `json:"failed"`
	// Projects are the same counters per Firebase project.
	Projects map[string]projectStats `json:"projects"`
}

// projectStats are one project's counters at the emulator.
type projectStats struct {
	Requests  int64            `json:"requests"`
	Delivered int64            `json:"delivered"`
	Failed    map[string]int64 `json:"failed"`
}

// since returns the counters of s less those of an earlier reading.
func (s projectStats) since(before projectStats) projectStats {
	out := projectStats{Requests: s.Requests - before.Requests, Delivered: s.Delivered - before.Delivered, Failed: map[string]int64{}}
	for code, n := range s.Failed {
		if d := n - before.Failed[code]; d != 0 {
			out.Failed[code] = d
		}
	}
	return out
}

func (s projectStats) failed() int64 {
	var n int64
	for _, v := range s.Failed {
		n += v
	}
	return n
}

func (s emulatorStats) failed() int64 {
	var n int64
	for _, v := range s.Failed {
		n += v
	}
	return n
}

func (e *emulator) stats(ctx context.Context) (emulatorStats, error) {
	var s emulatorStats
	err := doJSON(ctx, e.hc, http.MethodGet, e.base+"/emulator/stats?tokens=false", nil, nil, &s)
	return s, err
}

// setQuotas sets the emulator's per-project quotas (messages a minute, in clock-minute
// windows, answered 429 with Retry-After beyond), replacing any earlier ones.
func (e *emulator) setQuotas(ctx context.Context, perMinute map[string]int) error {
	return doJSON(ctx, e.hc, http.MethodPut, e.base+"/emulator/config", nil, map[string]any{"project_quotas": perMinute}, nil)
}

// reset clears the emulator's counters, per-token stats and received messages.
func (e *emulator) reset(ctx context.Context) error {
	return doJSON(ctx, e.hc, http.MethodPost, e.base+"/emulator/reset", nil, nil, nil)
}

// received is one request as GET /emulator/messages lists it.
type received struct {
	Token      string    `json:"token"`
	Status     int       `json:"status"`
	ReceivedAt time.Time `json:"received_at"`
}

// messages returns the last limit requests the emulator received, oldest first, without
// their payloads (only who received what and when).
func (e *emulator) messages(ctx context.Context, limit int) ([]received, error) {
	var out struct {
		Messages []received `json:"messages"`
	}
	err := doJSON(ctx, e.hc, http.MethodGet, e.base+"/emulator/messages?payload=false&limit="+strconv.Itoa(limit), nil, nil, &out)
	return out.Messages, err
}
