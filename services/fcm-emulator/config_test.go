package main

import (
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

func TestLoadConfig(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		env     map[string]string
		want    config
		wantErr []string // each must appear in the error
	}{
		{
			name: "defaults",
			want: config{Addr: "127.0.0.1:9099", LogLevel: slog.LevelInfo, RetryAfter: 30 * time.Second},
		},
		{
			name: "everything set",
			env: map[string]string{
				"FCM_EMULATOR_ADDR":                    ":9100",
				"LOG_LEVEL":                            "debug",
				"FCM_EMULATOR_QUOTA_PER_MINUTE":        "600000",
				"FCM_EMULATOR_LATENCY":                 "25ms",
				"FCM_EMULATOR_RETRY_AFTER":             "1m",
				"FCM_EMULATOR_UNAVAILABLE_RETRY_AFTER": "3m",
			},
			want: config{
				Addr: ":9100", LogLevel: slog.LevelDebug, QuotaPerMinute: 600000,
				Latency: 25 * time.Millisecond, RetryAfter: time.Minute, UnavailableRetryAfter: 3 * time.Minute,
			},
		},
		{
			name: "every problem at once",
			env: map[string]string{
				"FCM_EMULATOR_ADDR":                    "9099",
				"LOG_LEVEL":                            "loud",
				"FCM_EMULATOR_QUOTA_PER_MINUTE":        "many",
				"FCM_EMULATOR_LATENCY":                 "-1s",
				"FCM_EMULATOR_RETRY_AFTER":             "500ms",
				"FCM_EMULATOR_UNAVAILABLE_RETRY_AFTER": "soon",
			},
			wantErr: []string{
				"FCM_EMULATOR_ADDR", "LOG_LEVEL", "FCM_EMULATOR_QUOTA_PER_MINUTE", "FCM_EMULATOR_LATENCY",
				"FCM_EMULATOR_RETRY_AFTER", "FCM_EMULATOR_UNAVAILABLE_RETRY_AFTER",
			},
		},
		{
			name: "project quotas",
			env:  map[string]string{"FCM_EMULATOR_PROJECT_QUOTAS": "app-a=3000, app-b = 0"},
			want: config{
				Addr: "127.0.0.1:9099", LogLevel: slog.LevelInfo, RetryAfter: 30 * time.Second,
				ProjectQuotas: map[string]int{"app-a": 3000, "app-b": 0},
			},
		},
		{
			name:    "bad project quotas",
			env:     map[string]string{"FCM_EMULATOR_PROJECT_QUOTAS": "app-a,=5,app-b=-1,app-c=x"},
			wantErr: []string{`FCM_EMULATOR_PROJECT_QUOTAS: "app-a"`, `"=5"`, `"app-b=-1"`, `"app-c=x"`},
		},
		{
			name:    "negative quota",
			env:     map[string]string{"FCM_EMULATOR_QUOTA_PER_MINUTE": "-5"},
			wantErr: []string{"FCM_EMULATOR_QUOTA_PER_MINUTE"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, err := loadConfig(func(k string) string { return tc.env[k] })
			if len(tc.wantErr) > 0 {
				if err == nil {
					t.Fatalf("loadConfig: no error, want one naming %v", tc.wantErr)
				}
				for _, name := range tc.wantErr {
					if !strings.Contains(err.Error(), name+":") {
						t.Errorf("error %q does not name %s", err, name)
					}
				}
				if n := len(strings.Split(err.Error(), "\n")); n != len(tc.wantErr) {
					t.Errorf("error has %d lines, want %d:\n%v", n, len(tc.wantErr), err)
				}
				return
			}
			if err != nil {
				t.Fatalf("loadConfig: %v", err)
			}
			if diff := cmp.Diff(tc.want, got, ignoreSettings); diff != "" {
				t.Errorf("loadConfig (-want +got):\n%s", diff)
			}
		})
	}
}

// ignoreSettings leaves out config.Settings, the start log's view of the same values
// (pkg/envconfig tests it).
var ignoreSettings = cmpopts.IgnoreFields(config{}, "Settings")
