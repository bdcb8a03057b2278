package main

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"notify/pkg/envconfig"
)

func env(vars map[string]string) func(string) string {
	return func(k string) string { return vars[k] }
}

func TestLoadConfigDefaults(t *testing.T) {
	t.Parallel()
	got, err := loadConfig(env(nil))
	if err != nil {
		t.Fatalf("loadConfig: %v", err)
	}
	want := config{
		DatabaseURL:      "postgres://notify:notify@127.0.0.1:5432/notify?sslmode=disable",
		AMQPURL:          "amqp://guest:guest@127.0.0.1:5672/",
		Topology:         "notify",
		LogLevel:         slog.LevelInfo,
		GCPercent:        envconfig.DefaultGOGC,
		MetricsAddr:      "127.0.0.1:9104",
		AlertInterval:    30 * time.Second,
		AlertMinInterval: time.Minute,
		Workers:          4,
		ShutdownTimeout:  30 * time.Second,
	}
	if diff := cmp.Diff(want, got, ignoreSettings); diff != "" {
		t.Errorf("loadConfig() mismatch (-want +got):\n%s", diff)
	}
}

func TestLoadConfigSlack(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		vars map[string]string
		want config // only the Slack fields are compared
	}{
		{"none", nil, config{}},
		{
			name: "webhook",
			vars: map[string]string{"SLACK_WEBHOOK_URL": "https://hooks.slack.com/services/T/B/X"},
			want: config{SlackWebhookURL: "https://hooks.slack.com/services/T/B/X"},
		},
		{
			name: "bot token",
			vars: map[string]string{"SLACK_BOT_TOKEN": "xoxb-1", "SLACK_CHANNEL": "C1", "SLACK_API_URL": "http://127.0.0.1:9/api"},
			want: config{SlackBotToken: "xoxb-1", SlackChannel: "C1", SlackAPIURL: "http://127.0.0.1:9/api"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c, err := loadConfig(env(tt.vars))
			if err != nil {
				t.Fatalf("loadConfig: %v", err)
			}
			got := config{SlackWebhookURL: c.SlackWebhookURL, SlackBotToken: c.SlackBotToken, SlackChannel: c.SlackChannel, SlackAPIURL: c.SlackAPIURL}
			if diff := cmp.Diff(tt.want, got, ignoreSettings); diff != "" {
				t.Errorf("Slack settings mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

func TestLoadConfigErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		vars    map[string]string
		want    []string // variables the error must name
		notWant []string // text the error must not contain (secrets)
	}{
		{
			name: "every variable bad at once",
			vars: map[string]string{
				"DATABASE_URL":       "postgres://u:hunter2@host:notaport/db",
				"AMQP_URL":           "http://guest:guest@host/",
				"LOG_LEVEL":          "loud",
				"METRICS_ADDR":       "no-port",
				"SLACK_API_URL":      "ftp://slack",
				"ALERT_INTERVAL":     "soon",
				"ALERT_MIN_INTERVAL": "0s",
				"DEADLETTER_WORKERS": "0",
				"SHUTDOWN_TIMEOUT":   "-1s",
			},
			want: []string{"DATABASE_URL", "AMQP_URL", "LOG_LEVEL", "METRICS_ADDR", "SLACK_API_URL",
				"ALERT_INTERVAL", "ALERT_MIN_INTERVAL", "DEADLETTER_WORKERS", "SHUTDOWN_TIMEOUT"},
			notWant: []string{"hunter2"},
		},
		{
			name:    "webhook URL that is not http",
			vars:    map[string]string{"SLACK_WEBHOOK_URL": "hooks.slack.com/services/T/B/secret"},
			want:    []string{"SLACK_WEBHOOK_URL"},
			notWant: []string{"secret"},
		},
		{
			name:    "webhook URL that does not parse",
			vars:    map[string]string{"SLACK_WEBHOOK_URL": "https://hooks.slack.com/%zz/secret"},
			want:    []string{"SLACK_WEBHOOK_URL"},
			notWant: []string{"secret"},
		},
		{
			name: "bot token without channel",
			vars: map[string]string{"SLACK_BOT_TOKEN": "xoxb-1"},
			want: []string{"SLACK_CHANNEL"},
		},
		{
			name: "channel without bot token",
			vars: map[string]string{"SLACK_CHANNEL": "C1"},
			want: []string{"SLACK_BOT_TOKEN"},
		},
		{
			name: "webhook and bot token",
			vars: map[string]string{"SLACK_WEBHOOK_URL": "https://hooks.slack.com/x", "SLACK_BOT_TOKEN": "xoxb-1", "SLACK_CHANNEL": "C1"},
			want: []string{"SLACK_WEBHOOK_URL", "SLACK_BOT_TOKEN"},
		},
		{
			name: "workers not a number",
			vars: map[string]string{"DEADLETTER_WORKERS": "many"},
			want: []string{"DEADLETTER_WORKERS"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := loadConfig(env(tt.vars))
			if err == nil {
				t.Fatal("loadConfig succeeded, want an error")
			}
			for _, v := range tt.want {
				if !strings.Contains(err.Error(), v) {
					t.Errorf("error does not name %s:\n%v", v, err)
				}
			}
			for _, s := range tt.notWant {
				if strings.Contains(err.Error(), s) {
					t.Errorf("error reveals %q:\n%v", s, err)
				}
			}
		})
	}
}

func TestRunRejectsBadConfig(t *testing.T) {
	t.Parallel()
	err := run(context.Background(), env(map[string]string{"SLACK_BOT_TOKEN": "xoxb-1"}))
	if err == nil || !strings.Contains(err.Error(), "SLACK_CHANNEL") {
		t.Errorf("run() = %v, want a config error naming SLACK_CHANNEL", err)
	}
}

func TestLoadConfigSecretFiles(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	write := func(name, contents string) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(contents), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	hookFile := write("hook", "https://hooks.slack.com/services/T/B/s3cret\n")
	tokenFile := write("token", "xoxb-s3cret\n")
	dbFile := write("db", "postgres://notify:s3cret@db.internal/notify\n")

	tests := []struct {
		name    string
		vars    map[string]string
		want    config // only the Slack fields and DatabaseURL are compared
		wantErr []string
	}{
		{
			name: "webhook from a file",
			vars: map[string]string{"SLACK_WEBHOOK_URL_FILE": hookFile},
			want: config{SlackWebhookURL: "https://hooks.slack.com/services/T/B/s3cret", DatabaseURL: envconfig.DefaultDatabaseURL},
		},
		{
			name: "bot token and database URL from files",
			vars: map[string]string{"SLACK_BOT_TOKEN_FILE": tokenFile, "SLACK_CHANNEL": "C1", "DATABASE_URL_FILE": dbFile},
			want: config{SlackBotToken: "xoxb-s3cret", SlackChannel: "C1", DatabaseURL: "postgres://notify:s3cret@db.internal/notify"},
		},
		{
			name: "several problems at once",
			vars: map[string]string{
				"SLACK_BOT_TOKEN": "xoxb-1", "SLACK_BOT_TOKEN_FILE": tokenFile,
				"SLACK_WEBHOOK_URL_FILE": filepath.Join(dir, "missing"),
				"AMQP_URL_FILE":          dbFile, // a postgres URL where an AMQP one belongs
				"DEADLETTER_WORKERS":     "1000",
			},
			wantErr: []string{
				"AMQP_URL: want a URL starting with amqp:// or amqps://",
				"SLACK_WEBHOOK_URL_FILE: open " + filepath.Join(dir, "missing"),
				"SLACK_BOT_TOKEN: set either SLACK_BOT_TOKEN or SLACK_BOT_TOKEN_FILE, not both",
				"DEADLETTER_WORKERS: 1000 is outside 1..256",
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c, err := loadConfig(env(tt.vars))
			if tt.wantErr != nil {
				if err == nil {
					t.Fatal("loadConfig succeeded, want an error")
				}
				lines := strings.Split(err.Error(), "\n")
				if len(lines) != len(tt.wantErr) {
					t.Errorf("error has %d lines, want %d:\n%v", len(lines), len(tt.wantErr), err)
				}
				for i, want := range tt.wantErr {
					if i < len(lines) && !strings.HasPrefix(lines[i], want) {
						t.Errorf("error line %d = %q, want it to start with %q", i, lines[i], want)
					}
				}
				if strings.Contains(err.Error(), "s3cret") {
					t.Errorf("error reveals a secret:\n%v", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("loadConfig: %v", err)
			}
			got := config{SlackWebhookURL: c.SlackWebhookURL, SlackBotToken: c.SlackBotToken, SlackChannel: c.SlackChannel, DatabaseURL: c.DatabaseURL}
			if diff := cmp.Diff(tt.want, got, ignoreSettings); diff != "" {
				t.Errorf("loadConfig mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

// ignoreSettings leaves out config.Settings, the start log's view of the same values
// (pkg/envconfig tests it).
var ignoreSettings = cmpopts.IgnoreFields(config{}, "Settings")
