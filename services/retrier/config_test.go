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
	if c.MetricsAddr != "127.0.0.1:9103" || c.Workers != 4 || c.Delivery.MaxAttempts != 8 ||
		c.BatchSize != 64 || c.BatchLinger != 5*time.Millisecond || c.Prefetch != 512 {
		t.Errorf("defaults %+v", c)
	}
	if c.TaskTimeout != 260*time.Second {
		t.Errorf("default RETRY_TASK_TIMEOUT %s, want 4m20s (20 × FCM_TIMEOUT 10s + 1m)", c.TaskTimeout)
	}
	_, err = loadConfig(func(k string) string {
		return map[string]string{"RETRY_WORKERS": "0", "RETRY_MAX_DELAY": "1ms", "RETRY_BASE_DELAY": "1s",
			"RETRY_BATCH_SIZE": "0", "RETRY_BATCH_LINGER": "soon", "RETRY_TASK_TIMEOUT": "0s"}[k]
	})
	for _, name := range []string{"RETRY_TASK_TIMEOUT", "RETRY_WORKERS", "RETRY_MAX_DELAY", "RETRY_BATCH_SIZE", "RETRY_BATCH_LINGER"} {
		if err == nil || !strings.Contains(err.Error(), name) {
			t.Errorf("error %v does not name %s", err, name)
		}
	}
}
