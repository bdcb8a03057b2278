package deadletter

import (
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestSummarize(t *testing.T) {
	t.Parallel()
	now := time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)
	at := func(minutesAgo int) time.Time { return now.Add(-time.Duration(minutesAgo) * time.Minute) }
	tests := []struct {
		name    string
		rows    []pendingRow
		backlog int
		want    Alert
	}{
		{
			name:    "grouped by reason, biggest first, distinct samples",
			backlog: 10,
			rows: []pendingRow{
				{ID: 1, Reason: "undecodable", CreatedAt: at(30)},
				{ID: 2, Reason: "retries_exhausted", NotificationID: "n1", TokenCount: 3, CreatedAt: at(20)},
				{ID: 3, Reason: "retries_exhausted", NotificationID: "n1", TokenCount: 2, CreatedAt: at(10)},
				{ID: 4, Reason: "retries_exhausted", NotificationID: "n2", TokenCount: 1, CreatedAt: at(5)},
				{ID: 5, Reason: "retries_exhausted", NotificationID: "n3", TokenCount: 1, CreatedAt: at(4)},
				{ID: 6, Reason: "retries_exhausted", NotificationID: "n4", TokenCount: 1, CreatedAt: at(3)},
				{ID: 7, Reason: "permanent_error", NotificationID: "n5", TokenCount: 500, CreatedAt: at(2)},
			},
			want: Alert{
				Total: 7, Tokens: 508, From: at(30), To: at(2), Remaining: 3,
				Groups: []Group{
					{Reason: "retries_exhausted", Count: 5, Tokens: 8, Samples: []string{"n1", "n2", "n3"}},
					{Reason: "permanent_error", Count: 1, Tokens: 500, Samples: []string{"n5"}},
					{Reason: "undecodable", Count: 1},
				},
			},
		},
		{
			name:    "backlog counted before more rows arrived",
			backlog: 1,
			rows:    []pendingRow{{ID: 1, Reason: "a", CreatedAt: at(1)}, {ID: 2, Reason: "b", CreatedAt: at(1)}},
			want: Alert{Total: 2, From: at(1), To: at(1),
				Groups: []Group{{Reason: "a", Count: 1}, {Reason: "b", Count: 1}}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got := summarize(tt.rows, tt.backlog)
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("summarize() mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

func TestAlertText(t *testing.T) {
	t.Parallel()
	now := time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		name  string
		alert Alert
		want  []string // lines, in order
	}{
		{
			name: "two reasons, more to come",
			alert: Alert{Total: 3, Tokens: 7, From: now.Add(-90*time.Minute - 1500*time.Millisecond), To: now.Add(-time.Minute + 250*time.Millisecond), Remaining: 12,
				Groups: []Group{
					{Reason: "retries_exhausted", Count: 2, Tokens: 7, Samples: []string{"n1", "n2"}},
					{Reason: "a<b>&c", Count: 1},
				}},
			want: []string{
				":rotating_light: *notify: 3 dead letters* (7 tokens), stored 2025-06-01 10:29:58 – 2025-06-01 11:59:00 UTC",
				"• *retries_exhausted*: 2 dead letters, 7 tokens (e.g. n1, n2)",
				"    replay: `notifyctl replay --dead --reason retries_exhausted --since 2025-06-01T10:29:58Z --until 2025-06-01T11:59:01Z`",
				"• *a&lt;b&gt;&amp;c*: 1 dead letters, 0 tokens",
				"    replay: `notifyctl replay --dead --reason a&lt;b&gt;&amp;c --since 2025-06-01T10:29:58Z --until 2025-06-01T11:59:01Z`",
				"List them: `notifyctl dead list`",
				"12 more dead letters will follow in the next alert.",
			},
		},
		{
			name: "one second: the window is whole seconds around it",
			alert: Alert{Total: 1, From: now.Add(-time.Second), To: now,
				Groups: []Group{{Reason: "undecodable", Count: 1}}},
			want: []string{
				":rotating_light: *notify: 1 dead letters* (0 tokens), stored 2025-06-01 11:59:59 – 2025-06-01 12:00:00 UTC",
				"• *undecodable*: 1 dead letters, 0 tokens",
				"    replay: `notifyctl replay --dead --reason undecodable --since 2025-06-01T11:59:59Z --until 2025-06-01T12:00:01Z`",
				"List them: `notifyctl dead list`",
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got := strings.Split(tt.alert.Text(), "\n")
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("Text() mismatch (-want +got):\n%s", diff)
			}
		})
	}
}
