package main

import (
	"strings"
	"testing"
	"time"
)

func TestLoadConfig(t *testing.T) {
	t.Parallel()
	env := func(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

	c, err := loadConfig(env(nil))
	if err != nil {
		t.Fatalf("defaults: %v", err)
	}
	if c.GRPCAddr != "127.0.0.1:50051" || c.OutboxBatchSize != 500 || c.OutboxPollInterval != time.Second {
		t.Errorf("defaults = %+v", c)
	}

	_, err = loadConfig(env(map[string]string{
		"LOG_LEVEL":            "loud",
		"OUTBOX_BATCH_SIZE":    "0",
		"OUTBOX_POLL_INTERVAL": "soon",
	}))
	if err == nil {
		t.Fatal("bad settings accepted")
	}
	for _, name := range []string{"LOG_LEVEL", "OUTBOX_BATCH_SIZE", "OUTBOX_POLL_INTERVAL"} {
		if !strings.Contains(err.Error(), name) {
			t.Errorf("error %q does not name %s", err, name)
		}
	}
}
