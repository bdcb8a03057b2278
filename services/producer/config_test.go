package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"notify/services/producer/internal/server"
)

func env(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func TestLoadConfig(t *testing.T) {
	t.Parallel()
	c, err := loadConfig(env(nil))
	if err != nil {
		t.Fatalf("defaults: %v", err)
	}
	if c.GRPCAddr != "127.0.0.1:50051" || c.OutboxBatchSize != 500 || c.OutboxConcurrency != 2 || c.OutboxPackSize != 64 ||
		c.OutboxPollInterval != time.Second {
		t.Errorf("defaults = %+v", c)
	}
	if c.TokenStaleAfter != 270*24*time.Hour || c.RedriveAfter != 15*time.Minute || c.APIKeyCacheTTL != 15*time.Second ||
		c.RetryMaxDelay != 320*time.Second || c.TokenSweepBatch != 1000 {
		t.Errorf("job and key defaults = %+v", c)
	}
	if !c.MigrateOnStart || c.NotificationRetention != 30*24*time.Hour || c.NotificationRetentionBatch != 1000 {
		t.Errorf("migration and retention defaults = %+v", c)
	}

	c, err = loadConfig(env(map[string]string{"TOKEN_STALE_AFTER": "30d", "API_KEY_CACHE_TTL": "0s", "REDRIVE_AFTER": "1h",
		"MIGRATE_ON_START": "false", "NOTIFICATION_RETENTION": "0",
		"PUBLISH_BATCH_SIZE": "32", "PUBLISH_BATCH_LINGER": "200us", "PUBLISH_CONCURRENT_COMMITS": "1"}))
	if err != nil {
		t.Fatal(err)
	}
	if c.TokenStaleAfter != 30*24*time.Hour || c.APIKeyCacheTTL != 0 || c.RedriveAfter != time.Hour ||
		c.MigrateOnStart || c.NotificationRetention != 0 ||
		c.PublishBatch != (server.GroupCommit{MaxBatch: 32, Linger: 200 * time.Microsecond, MaxCommits: 1}) {
		t.Errorf("settings not taken: %+v", c)
	}
}

func TestLoadConfigNamesEveryBadVariable(t *testing.T) {
	t.Parallel()
	bad := map[string]string{
		"LOG_LEVEL":                    "loud",
		"OUTBOX_BATCH_SIZE":            "0",
		"OUTBOX_CONCURRENCY":           "0",
		"OUTBOX_PACK_SIZE":             "501",
		"OUTBOX_POLL_INTERVAL":         "soon",
		"API_KEY_CACHE_TTL":            "1h",
		"TOKEN_STALE_AFTER":            "12h",
		"TOKEN_SWEEP_INTERVAL":         "often",
		"TOKEN_SWEEP_BATCH_SIZE":       "-1",
		"REDRIVE_AFTER":                "1ms",
		"REDRIVE_INTERVAL":             "x",
		"RETRY_MAX_DELAY":              "3 days",
		"MIGRATE_ON_START":             "sometimes",
		"NOTIFICATION_RETENTION":       "10m",
		"NOTIFICATION_RETENTION_BATCH": "0",
		"PUBLISH_BATCH_SIZE":           "0",
		"PUBLISH_BATCH_LINGER":         "2s",
		"PUBLISH_CONCURRENT_COMMITS":   "many",
	}
	_, err := loadConfig(env(bad))
	if err == nil {
		t.Fatal("bad settings accepted")
	}
	for name := range bad {
		if !strings.Contains(err.Error(), name+": ") {
			t.Errorf("error %q does not name %s", err, name)
		}
	}
	if n := len(strings.Split(err.Error(), "\n")); n != len(bad) {
		t.Errorf("error has %d lines, want one per bad variable (%d):\n%v", n, len(bad), err)
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
	dbFile := write("db", "postgres://notify:s3cret@db.internal:5432/notify\n")
	amqpFile := write("amqp", "amqps://notify:s3cret@mq.internal/\n")

	c, err := loadConfig(env(map[string]string{"DATABASE_URL_FILE": dbFile, "AMQP_URL_FILE": amqpFile}))
	if err != nil {
		t.Fatalf("loadConfig: %v", err)
	}
	if c.DatabaseURL != "postgres://notify:s3cret@db.internal:5432/notify" || c.AMQPURL != "amqps://notify:s3cret@mq.internal/" {
		t.Errorf("URLs from files = %q, %q", c.DatabaseURL, c.AMQPURL)
	}

	_, err = loadConfig(env(map[string]string{
		"DATABASE_URL": "postgres://db/notify", "DATABASE_URL_FILE": dbFile,
		"AMQP_URL_FILE": filepath.Join(dir, "missing"),
		"GRPC_ADDR":     "50051",
	}))
	if err == nil {
		t.Fatal("conflicting and missing files accepted")
	}
	lines := strings.Split(err.Error(), "\n")
	for i, want := range []string{
		"DATABASE_URL: set either DATABASE_URL or DATABASE_URL_FILE, not both",
		"AMQP_URL_FILE: open " + filepath.Join(dir, "missing"),
		"GRPC_ADDR: ",
	} {
		if i >= len(lines) || !strings.HasPrefix(lines[i], want) {
			t.Errorf("error line %d does not start with %q:\n%v", i, want, err)
		}
	}
	if len(lines) != 3 || strings.Contains(err.Error(), "s3cret") {
		t.Errorf("want exactly 3 problems and no secret:\n%v", err)
	}
}

func TestLoadConfigGRPCTLS(t *testing.T) {
	t.Parallel()
	c, err := loadConfig(env(nil))
	if err != nil || c.GRPCTLS.CertFile != "" || c.GRPCMaxConnectionAge != 5*time.Minute {
		t.Errorf("defaults: %+v %v; want plaintext and a 5m connection age", c.GRPCTLS, err)
	}
	c, err = loadConfig(env(map[string]string{"GRPC_TLS_CERT_FILE": "c.pem", "GRPC_TLS_KEY_FILE": "k.pem",
		"GRPC_TLS_CLIENT_CA_FILE": "ca.pem", "GRPC_MAX_CONNECTION_AGE": "0"}))
	if err != nil || c.GRPCTLS.ClientCAFile != "ca.pem" || c.GRPCMaxConnectionAge != 0 {
		t.Errorf("mTLS: %+v, age %s, %v", c.GRPCTLS, c.GRPCMaxConnectionAge, err)
	}
	tests := []struct {
		env  map[string]string
		want []string
	}{
		{map[string]string{"GRPC_TLS_CERT_FILE": "c.pem"}, []string{"GRPC_TLS_CERT_FILE", "GRPC_TLS_KEY_FILE"}},
		{map[string]string{"GRPC_TLS_KEY_FILE": "k.pem"}, []string{"GRPC_TLS_CERT_FILE", "GRPC_TLS_KEY_FILE"}},
		{map[string]string{"GRPC_TLS_CLIENT_CA_FILE": "ca.pem"}, []string{"GRPC_TLS_CLIENT_CA_FILE", "GRPC_TLS_CERT_FILE"}},
		{map[string]string{"GRPC_MAX_CONNECTION_AGE": "10ms"}, []string{"GRPC_MAX_CONNECTION_AGE"}},
		{map[string]string{"GRPC_MAX_CONNECTION_AGE": "forever"}, []string{"GRPC_MAX_CONNECTION_AGE"}},
	}
	for _, tt := range tests {
		_, err := loadConfig(env(tt.env))
		for _, name := range tt.want {
			if err == nil || !strings.Contains(err.Error(), name) {
				t.Errorf("%v: error %v does not name %s", tt.env, err, name)
			}
		}
	}
}

func TestLoadConfigApps(t *testing.T) {
	t.Parallel()
	c, err := loadConfig(env(nil))
	if err != nil || strings.Join(c.Apps, ",") != "default" {
		t.Errorf("APPS unset: %v (%v), want [default]", c.Apps, err)
	}
	c, err = loadConfig(env(map[string]string{"APPS": "default, staff"}))
	if err != nil || strings.Join(c.Apps, ",") != "default,staff" {
		t.Errorf("APPS=default, staff: %v (%v)", c.Apps, err)
	}
	_, err = loadConfig(env(map[string]string{"APPS": "default,Staff,"}))
	if err == nil || !strings.Contains(err.Error(), `APPS: app name "Staff"`) || !strings.Contains(err.Error(), "APPS: app name required") {
		t.Errorf("APPS=default,Staff,: %v, want both bad names reported", err)
	}
}
