package main

import (
	"strings"
	"testing"
	"time"
)

func TestLoadConfig(t *testing.T) {
	t.Parallel()
	// FCM_ENDPOINT or FCM_CREDENTIALS_FILE is the one setting without a default.
	c, err := loadConfig(func(k string) string { return map[string]string{"FCM_ENDPOINT": "http://127.0.0.1:9099/v1"}[k] })
	if err != nil {
		t.Fatal(err)
	}
	if c.MetricsAddr != "127.0.0.1:9102" || c.ChunkConcurrency != 8 || c.Workers != 4 || c.Prefetch != 512 || c.BatchSize != 64 || c.BatchLinger != 5*time.Millisecond || c.Delivery.MaxAttempts != 8 {
		t.Errorf("defaults %+v", c)
	}
	if c.TaskTimeout != 260*time.Second {
		t.Errorf("default SEND_TASK_TIMEOUT %s, want 4m20s (20 × FCM_TIMEOUT 10s + 1m)", c.TaskTimeout)
	}
	c, err = loadConfig(func(k string) string {
		return map[string]string{"FCM_ENDPOINT": "http://127.0.0.1:9099/v1", "FCM_TIMEOUT": "2s"}[k]
	})
	if err != nil || c.TaskTimeout != 100*time.Second {
		t.Errorf("FCM_TIMEOUT=2s: SEND_TASK_TIMEOUT %s (%v), want 1m40s", c.TaskTimeout, err)
	}
	c, err = loadConfig(func(k string) string {
		return map[string]string{"FCM_ENDPOINT": "http://127.0.0.1:9099/v1", "SEND_TASK_TIMEOUT": "45s"}[k]
	})
	if err != nil || c.TaskTimeout != 45*time.Second {
		t.Errorf("SEND_TASK_TIMEOUT=45s: %s (%v)", c.TaskTimeout, err)
	}
	c, err = loadConfig(func(k string) string {
		return map[string]string{"FCM_ENDPOINT": "http://127.0.0.1:9099/v1", "SEND_WORKERS": "8", "SEND_BATCH_SIZE": "1"}[k]
	})
	if err != nil || c.Workers != 8 || c.Prefetch != 16 {
		t.Errorf("SEND_WORKERS=8 SEND_BATCH_SIZE=1: %d workers, prefetch %d (%v), want 8 and 16", c.Workers, c.Prefetch, err)
	}
	_, err = loadConfig(func(k string) string {
		return map[string]string{"SEND_CHUNK_CONCURRENCY": "0", "SEND_PREFETCH": "x", "LOG_LEVEL": "chatty", "SHUTDOWN_TIMEOUT": "x",
			"SEND_BATCH_SIZE": "0", "SEND_BATCH_LINGER": "soon", "SEND_TASK_TIMEOUT": "10ms"}[k]
	})
	for _, name := range []string{"SEND_TASK_TIMEOUT", "SEND_CHUNK_CONCURRENCY", "SEND_PREFETCH", "SEND_BATCH_SIZE", "SEND_BATCH_LINGER", "LOG_LEVEL", "SHUTDOWN_TIMEOUT", "FCM_ENDPOINT"} {
		if err == nil || !strings.Contains(err.Error(), name) {
			t.Errorf("error %v does not name %s", err, name)
		}
	}
}
