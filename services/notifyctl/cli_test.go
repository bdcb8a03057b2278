package main

import (
	"bytes"
	"context"
	"flag"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestParseWhen(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		in   string
		want time.Time
		ok   bool
	}{
		{"", time.Time{}, true},
		{"90m", now.Add(-90 * time.Minute), true},
		{"1h", now.Add(-time.Hour), true},
		{"7d", now.Add(-7 * 24 * time.Hour), true},
		{"2026-04-30T08:00:00Z", time.Date(2026, 4, 30, 8, 0, 0, 0, time.UTC), true},
		{"yesterday", time.Time{}, false},
		{"-1h", time.Time{}, false},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			t.Parallel()
			ts, err := parseWhen("since", tt.in, now)
			if (err == nil) != tt.ok {
				t.Fatalf("parseWhen(%q) error = %v, want ok=%v", tt.in, err, tt.ok)
			}
			var got time.Time
			if ts != nil {
				got = ts.AsTime()
			}
			if !got.Equal(tt.want) {
				t.Errorf("parseWhen(%q) = %v, want %v", tt.in, got, tt.want)
			}
		})
	}
}

func TestParseFlagsInterleaved(t *testing.T) {
	t.Parallel()
	tests := []struct {
		args    []string
		wantPos []string
		wantDry bool
	}{
		{[]string{"a", "b"}, []string{"a", "b"}, false},
		{[]string{"--dry-run", "a", "b"}, []string{"a", "b"}, true},
		{[]string{"a", "--dry-run", "b"}, []string{"a", "b"}, true},
		{[]string{"a", "b", "--dry-run"}, []string{"a", "b"}, true},
		{[]string{"--", "-odd"}, []string{"-odd"}, false},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			t.Parallel()
			fs := flag.NewFlagSet("replay", flag.ContinueOnError)
			dry := fs.Bool("dry-run", false, "")
			if err := parseFlags(fs, tt.args); err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.wantPos, fs.Args()); diff != "" || *dry != tt.wantDry {
				t.Errorf("positional (-want +got):\n%s\ndry-run = %v, want %v", diff, *dry, tt.wantDry)
			}
		})
	}
}

func TestUsageErrorsExitTwoWithoutAServer(t *testing.T) {
	t.Parallel()
	tests := [][]string{
		{},
		{"frobnicate"},
		{"replay"},
		{"replay", "x", "--dead"},
		{"replay", "--batch", "0", "x"},
		{"list", "--status", "lost"},
		{"list", "--since", "soon"},
		{"dead"},
		{"dead", "list", "--replayed", "--unreplayed"},
		{"keys"},
		{"keys", "create", "name"},
		{"keys", "create", "name", "--role", "root"},
		{"keys", "revoke"},
		{"--no-such-flag", "list"},
	}
	for _, args := range tests {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			t.Parallel()
			var out, errOut bytes.Buffer
			env := func(string) string { return "" }
			// An address nothing listens on: a usage error must not need the server.
			code := run(context.Background(), append([]string{"--addr", "127.0.0.1:1"}, args...), env, &out, &errOut)
			if code != exitUsage {
				t.Errorf("exit %d, want %d; stderr:\n%s", code, exitUsage, errOut.String())
			}
		})
	}
}
