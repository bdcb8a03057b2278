package main

import (
	"strings"
	"testing"
	"time"
)

func env(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func TestLoadConfig(t *testing.T) {
	t.Parallel()
	c, err := loadConfig(env(nil))
	if err != nil {
		t.Fatalf("defaults: %v", err)
	}
	if c.GRPCAddr != "127.0.0.1:50051" || c.OutboxBatchSize != 500 || c.OutboxPollInterval != time.Second {
		t.Errorf("defaults = %+v", c)
	}
	if c.TokenStaleAfter != 270*24*time.Hour || c.RedriveAfter != 15*time.Minute || c.APIKeyCacheTTL != 15*time.Second ||
		c.RetryMaxDelay != 320*time.Second || c.TokenSweepBatch != 1000 {
		t.Errorf("job and key defaults = %+v", c)
	}

	c, err = loadConfig(env(map[string]string{"TOKEN_STALE_AFTER": "30d", "API_KEY_CACHE_TTL": "0s", "REDRIVE_AFTER": "1h"}))
	if err != nil {
		t.Fatal(err)
	}
	if c.TokenStaleAfter != 30*24*time.Hour || c.APIKeyCacheTTL != 0 || c.RedriveAfter != time.Hour {
		t.Errorf("settings not taken: %+v", c)
	}
}

func TestLoadConfigNamesEveryBadVariable(t *testing.T) {
	t.Parallel()
	bad := map[string]string{
		"LOG_LEVEL":              "loud",
		"OUTBOX_BATCH_SIZE":      "0",
		"OUTBOX_POLL_INTERVAL":   "soon",
		"API_KEY_CACHE_TTL":      "1h",
		"TOKEN_STALE_AFTER":      "12h",
		"TOKEN_SWEEP_INTERVAL":   "often",
		"TOKEN_SWEEP_BATCH_SIZE": "-1",
		"REDRIVE_AFTER":          "1ms",
		"REDRIVE_INTERVAL":       "x",
		"RETRY_MAX_DELAY":        "3 days",
	}
	_, err := loadConfig(env(bad))
	if err == nil {
		t.Fatal("bad settings accepted")
	}
	for name := range bad {
		if !strings.Contains(err.Error(), name) {
			t.Errorf("error %q does not name %s", err, name)
		}
	}
}
