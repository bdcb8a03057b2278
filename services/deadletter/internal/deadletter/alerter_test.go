package deadletter

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	dlq "notify/pkg/deadletter"
	"notify/pkg/pgtest"
	"notify/pkg/rabbit"
	busv1 "notify/proto/gen/notify/bus/v1"
)

// fast are alerter options for tests: look often, post at most every 100ms.
var fast = AlerterOptions{Interval: 20 * time.Millisecond, MinInterval: 100 * time.Millisecond, MaxBackoff: 200 * time.Millisecond}

func withLockKey(o AlerterOptions) AlerterOptions {
	// Each test has its own database, but advisory locks are per cluster: a key per test
	// keeps parallel tests from electing each other's alerters.
	o.LockKey = int64(uuid.New().ID())
	return o
}

// TestSlackDownDuringBurst stores a burst of dead letters while Slack answers 500: nothing
// is lost or marked alerted, and once Slack is back a few grouped posts cover them all.
func TestSlackDownDuringBurst(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 0)
	slack := newFakeSlack(t)
	slack.set(http.StatusInternalServerError, "")

	wantCounts := map[string]int{
		dlq.ReasonRetriesExhausted:    1000,
		dlq.ReasonPermanentError:      600,
		dlq.ReasonUnknownNotification: 400,
	}
	var msgs []rabbit.Message
	for reason, n := range wantCounts {
		for range n {
			msgs = append(msgs, deadLetterMessage(t, &busv1.DeadLetterTask{
				NotificationId: uuid.NewString(), Reason: reason, Tokens: []string{"a", "b"},
			}))
		}
	}
	h, _ := startConsumer(t, e, e.conn, 8)
	a, _ := startAlerter(t, e.db.Pool, NewWebhook(slack.srv.URL+"/services/T0/B0/secret"), withLockKey(fast))
	publish(t, e, msgs...)

	waitFor(t, 2*time.Minute, "2000 dead letters stored", func() bool {
		return count(t, e.db.Pool, `SELECT count(*) FROM dead_letters`) == 2000
	})
	failedBefore := len(slack.requests(http.StatusInternalServerError))
	waitFor(t, 30*time.Second, "a post failing after the burst was stored", func() bool {
		return len(slack.requests(http.StatusInternalServerError)) > failedBefore
	})
	if n := count(t, e.db.Pool, `SELECT count(*) FROM dead_letters WHERE alerted_at IS NOT NULL`); n != 0 {
		t.Fatalf("%d rows marked alerted while Slack was down", n)
	}
	if n := len(slack.requests(http.StatusOK)); n != 0 {
		t.Fatalf("%d posts accepted while Slack was down", n)
	}

	slack.set(http.StatusOK, "")
	waitFor(t, time.Minute, "every dead letter alerted", func() bool {
		return count(t, e.db.Pool, `SELECT count(*) FROM dead_letters WHERE alerted_at IS NULL`) == 0
	})

	posts := slack.requests(http.StatusOK)
	if len(posts) == 0 || len(posts) > 3 {
		t.Fatalf("%d posts accepted, want 1 to 3", len(posts))
	}
	var texts []string
	for _, p := range posts {
		texts = append(texts, p.Text)
	}
	if diff := cmp.Diff(wantCounts, countsByReason(t, texts...)); diff != "" {
		t.Errorf("counts announced by reason (-want +got):\n%s", diff)
	}
	if n := testutil.ToFloat64(h.saveErrors); n != 0 {
		t.Errorf("save errors = %v, want 0", n)
	}
	if n := testutil.ToFloat64(a.posts.WithLabelValues("slack_webhook", "error")); n < 1 {
		t.Errorf("failed posts counted = %v, want ≥ 1", n)
	}
	if n := testutil.ToFloat64(a.alerted); n != 2000 {
		t.Errorf("alerted counter = %v, want 2000", n)
	}
}

// TestSinksReachSlack drives the real slack-go client against the fake in both modes.
func TestSinksReachSlack(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		sink     func(url string) Sink
		wantPath string
		want     func(r slackRequest) string // returns what is wrong, if anything
	}{
		{
			name:     "incoming webhook",
			sink:     func(u string) Sink { return NewWebhook(u + "/services/T0/B0/secret") },
			wantPath: "/services/T0/B0/secret",
			want:     func(r slackRequest) string { return "" },
		},
		{
			name:     "bot token",
			sink:     func(u string) Sink { return NewBot("xoxb-test", "C0123", u+"/api/") },
			wantPath: "/api/chat.postMessage",
			want: func(r slackRequest) string {
				if r.Channel != "C0123" || r.Token != "xoxb-test" {
					return "channel " + r.Channel + ", token " + r.Token + "; want C0123, xoxb-test"
				}
				return ""
			},
		},
		{
			name:     "bot token, API URL without trailing slash",
			sink:     func(u string) Sink { return NewBot("xoxb-test", "#alerts", u+"/api") },
			wantPath: "/api/chat.postMessage",
			want: func(r slackRequest) string {
				if r.Channel != "#alerts" {
					return "channel " + r.Channel + ", want #alerts"
				}
				return ""
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			db := pgtest.New(t)
			slack := newFakeSlack(t)
			insertDeadLetters(t, db.Pool, dlq.ReasonRetriesExhausted, 3)
			insertDeadLetters(t, db.Pool, dlq.ReasonUndecodable, 1)
			startAlerter(t, db.Pool, tt.sink(slack.srv.URL), withLockKey(fast))
			waitFor(t, 10*time.Second, "every row alerted", func() bool {
				return count(t, db.Pool, `SELECT count(*) FROM dead_letters WHERE alerted_at IS NULL`) == 0
			})
			reqs := slack.requests()
			if len(reqs) != 1 {
				t.Fatalf("fake Slack got %d requests, want 1: %+v", len(reqs), reqs)
			}
			r := reqs[0]
			if r.Path != tt.wantPath {
				t.Errorf("path = %s, want %s", r.Path, tt.wantPath)
			}
			if problem := tt.want(r); problem != "" {
				t.Error(problem)
			}
			if diff := cmp.Diff(map[string]int{"retries_exhausted": 3, "undecodable": 1}, countsByReason(t, r.Text)); diff != "" {
				t.Errorf("counts (-want +got):\n%s", diff)
			}
			for _, s := range []string{"notifyctl dead list", "(8 tokens)"} {
				if !strings.Contains(r.Text, s) {
					t.Errorf("alert text lacks %q:\n%s", s, r.Text)
				}
			}
			if replay := regexp.MustCompile(`notifyctl replay --dead --reason retries_exhausted --since \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ --until \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ`); !replay.MatchString(r.Text) {
				t.Errorf("alert text lacks a replay command matching %s:\n%s", replay, r.Text)
			}
		})
	}
}

// TestRateLimited honours the Retry-After of Slack's 429 over the alerter's own backoff.
func TestRateLimited(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	slack := newFakeSlack(t)
	slack.set(http.StatusTooManyRequests, "1")
	insertDeadLetters(t, db.Pool, dlq.ReasonPermanentError, 5)
	a, _ := startAlerter(t, db.Pool, NewWebhook(slack.srv.URL+"/hook"), withLockKey(fast))
	waitFor(t, 5*time.Second, "a rate-limited post", func() bool { return len(slack.requests()) > 0 })
	slack.set(http.StatusOK, "")
	waitFor(t, 10*time.Second, "every row alerted", func() bool {
		return count(t, db.Pool, `SELECT count(*) FROM dead_letters WHERE alerted_at IS NULL`) == 0
	})
	reqs := slack.requests()
	if len(reqs) != 2 {
		t.Fatalf("got %d requests, want 2 (one limited, one accepted)", len(reqs))
	}
	if gap := reqs[1].At.Sub(reqs[0].At); gap < time.Second {
		t.Errorf("posted again %v after a 429 with Retry-After: 1", gap)
	}
	if n := testutil.ToFloat64(a.posts.WithLabelValues("slack_webhook", "rate_limited")); n != 1 {
		t.Errorf("rate_limited posts = %v, want 1", n)
	}
}

// syncBuffer is a bytes.Buffer safe for the logger's concurrent writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestLogSink writes one WARN record per alert when no Slack is configured, and marks the
// rows alerted.
func TestLogSink(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	insertDeadLetters(t, db.Pool, dlq.ReasonRetriesExhausted, 250)
	insertDeadLetters(t, db.Pool, dlq.ReasonUnknownNotification, 50)
	var buf syncBuffer
	log := slog.New(slog.NewJSONHandler(&buf, nil))
	a := NewAlerter(db.Pool, NewLog(log), log, prometheus.NewRegistry(), withLockKey(fast))
	runUntilStopped(t, "Alerter.Run", a.Run)
	waitFor(t, 10*time.Second, "every row alerted", func() bool {
		return count(t, db.Pool, `SELECT count(*) FROM dead_letters WHERE alerted_at IS NULL`) == 0
	})

	type reason struct {
		Reason  string   `json:"reason"`
		Count   int      `json:"count"`
		Tokens  int      `json:"tokens"`
		Samples []string `json:"sample_notification_ids"`
		Replay  string   `json:"replay"`
	}
	type record struct {
		Level   string   `json:"level"`
		Msg     string   `json:"msg"`
		Total   int      `json:"total"`
		Tokens  int      `json:"tokens"`
		Reasons []reason `json:"reasons"`
		List    string   `json:"list"`
	}
	var alerts []record
	for _, line := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		var r record
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		if r.Msg == "dead letters need attention" {
			alerts = append(alerts, r)
		}
	}
	if len(alerts) != 1 {
		t.Fatalf("%d alert records, want 1:\n%s", len(alerts), buf.String())
	}
	got := alerts[0]
	for i := range got.Reasons {
		if n := len(got.Reasons[i].Samples); n != maxSamples {
			t.Errorf("reason %s has %d samples, want %d", got.Reasons[i].Reason, n, maxSamples)
		}
		got.Reasons[i].Samples = nil
	}
	// The replay commands select the rows' storage times, whole seconds around them.
	var from, to time.Time
	if err := db.Pool.QueryRow(context.Background(), `SELECT min(created_at), max(created_at) FROM dead_letters`).Scan(&from, &to); err != nil {
		t.Fatal(err)
	}
	window := " --since " + from.UTC().Truncate(time.Second).Format(time.RFC3339) +
		" --until " + to.UTC().Truncate(time.Second).Add(time.Second).Format(time.RFC3339)
	want := record{Level: "WARN", Msg: "dead letters need attention", Total: 300, Tokens: 600, List: "notifyctl dead list",
		Reasons: []reason{
			{Reason: "retries_exhausted", Count: 250, Tokens: 500, Replay: "notifyctl replay --dead --reason retries_exhausted" + window},
			{Reason: "unknown_notification", Count: 50, Tokens: 100, Replay: "notifyctl replay --dead --reason unknown_notification" + window},
		}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("alert record (-want +got):\n%s", diff)
	}
	if n := testutil.ToFloat64(a.posts.WithLabelValues("log", "ok")); n != 1 {
		t.Errorf("log alerts counted = %v, want 1", n)
	}
}

// TestOneReplicaAlerts runs two alerters on one database: nobody posts while another
// session holds the lock, and afterwards the posts come from one replica, each batch once,
// spaced by the rate limit.
func TestOneReplicaAlerts(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	slack := newFakeSlack(t)
	opts := withLockKey(fast)
	opts.BatchSize = 100
	opts.MinInterval = 150 * time.Millisecond
	insertDeadLetters(t, db.Pool, dlq.ReasonRetriesExhausted, 250)

	ctx := context.Background()
	holder, err := pgx.Connect(ctx, db.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Close(ctx)
	if _, err := holder.Exec(ctx, `SELECT pg_advisory_lock($1)`, opts.LockKey); err != nil {
		t.Fatal(err)
	}
	startAlerter(t, db.Pool, NewWebhook(slack.srv.URL+"/hook"), opts)
	startAlerter(t, db.Pool, NewWebhook(slack.srv.URL+"/hook"), opts)
	time.Sleep(300 * time.Millisecond)
	if n := len(slack.requests()); n != 0 {
		t.Fatalf("%d posts while another session held the lock", n)
	}
	if _, err := holder.Exec(ctx, `SELECT pg_advisory_unlock($1)`, opts.LockKey); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "every row alerted", func() bool {
		return count(t, db.Pool, `SELECT count(*) FROM dead_letters WHERE alerted_at IS NULL`) == 0
	})

	posts := slack.requests()
	var got []int
	for i, p := range posts {
		got = append(got, countsByReason(t, p.Text)["retries_exhausted"])
		if i > 0 {
			if gap := p.At.Sub(posts[i-1].At); gap < opts.MinInterval {
				t.Errorf("post %d came %v after the previous one, want ≥ %v", i, gap, opts.MinInterval)
			}
		}
	}
	if diff := cmp.Diff([]int{100, 100, 50}, got); diff != "" {
		t.Errorf("dead letters per post (-want +got):\n%s", diff)
	}
	if len(posts) > 0 && !strings.Contains(posts[0].Text, "150 more dead letters will follow") {
		t.Errorf("first post does not announce the rest:\n%s", posts[0].Text)
	}
}
