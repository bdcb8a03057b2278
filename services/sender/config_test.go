package main

import (
	"strings"
	"testing"
)

func TestLoadConfig(t *testing.T) {
	t.Parallel()
	// FCM_ENDPOINT or FCM_CREDENTIALS_FILE is the one setting without a default.
	c, err := loadConfig(func(k string) string { return map[string]string{"FCM_ENDPOINT": "http://127.0.0.1:9099/v1"}[k] })
	if err != nil {
		t.Fatal(err)
	}
	if c.Name != "sender" || c.ChunkConcurrency != 8 || c.Workers != 4 {
		t.Errorf("defaults %+v", c)
	}
	_, err = loadConfig(func(k string) string {
		return map[string]string{"SEND_CHUNK_CONCURRENCY": "0", "SEND_PREFETCH": "x"}[k]
	})
	for _, name := range []string{"SEND_CHUNK_CONCURRENCY", "SEND_PREFETCH"} {
		if err == nil || !strings.Contains(err.Error(), name) {
			t.Errorf("error %v does not name %s", err, name)
		}
	}
}
