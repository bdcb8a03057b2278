package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"go.yaml.in/yaml/v3"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	notifyv1 "notify/proto/gen/notify/v1"
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
		{"2026-04-30", time.Date(2026, 4, 30, 0, 0, 0, 0, time.UTC), true}, // midnight in now's (the local) zone
		{"2026-4-30", time.Time{}, false},
		{"2026-02-30", time.Time{}, false},
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

// Every command answers --help, -h, -help (and "help CMD", and a group "CMD help") on
// stdout with exit 0, listing every flag it accepts, its own and the global ones, and the
// exit codes; a mistyped flag is a usage error naming it, exit 2.
func TestHelpListsEveryFlagAndExitsZero(t *testing.T) {
	t.Parallel()
	root := (&cli{getenv: func(string) string { return "" }, out: io.Discard, errOut: io.Discard}).rootCommand(nil)
	type helpCase struct {
		path  []string
		flags []string
		group bool // a command that only holds subcommands
	}
	var cases []helpCase
	var walk func(*cobra.Command)
	walk = func(cmd *cobra.Command) {
		hc := helpCase{path: strings.Fields(cmd.CommandPath())[1:], group: cmd.HasSubCommands() && cmd != cmd.Root()}
		cmd.LocalFlags().VisitAll(func(f *pflag.Flag) { hc.flags = append(hc.flags, f.Name) })
		cmd.InheritedFlags().VisitAll(func(f *pflag.Flag) { hc.flags = append(hc.flags, f.Name) })
		cases = append(cases, hc)
		for _, sub := range cmd.Commands() {
			walk(sub)
		}
	}
	walk(root)
	if len(cases) < 12 {
		t.Fatalf("found %d commands, want every command of notifyctl", len(cases))
	}
	// Without a command: the usage on stderr, with the exit codes once.
	if r := mustCtl(t, exitUsage, nil); strings.Count(r.stderr, "Exit codes:") != 1 {
		t.Errorf("notifyctl without a command does not document the exit codes once:\n%s", r.stderr)
	}
	for _, hc := range cases {
		t.Run(strings.Join(append([]string{"notifyctl"}, hc.path...), " "), func(t *testing.T) {
			t.Parallel()
			if len(hc.flags) < 10 {
				t.Fatalf("%d flags, want the global ones at least: %v", len(hc.flags), hc.flags)
			}
			helps := [][]string{
				append(slices.Clone(hc.path), "--help"),
				append(slices.Clone(hc.path), "-h"),
				// Go's flag package (every other notify binary) spells it so; it was
				// "unknown shorthand flag: 'e' in -elp", exit 2.
				append(slices.Clone(hc.path), "-help"),
				append([]string{"help"}, hc.path...),
			}
			if hc.group {
				// It was `unknown notifyctl keys subcommand "help"`, exit 2.
				helps = append(helps, append(slices.Clone(hc.path), "help"))
			}
			if len(hc.path) > 1 {
				// `keys help create`, as `help keys create`: it was `unknown notifyctl keys
				// subcommand "help"`, exit 2.
				helps = append(helps, append(slices.Concat(hc.path[:len(hc.path)-1], []string{"help"}), hc.path[len(hc.path)-1]))
			}
			for _, args := range helps {
				r := mustCtl(t, exitOK, nil, args...)
				for _, name := range hc.flags {
					if !regexp.MustCompile(`(?m)^\s+(-\w, )?--` + regexp.QuoteMeta(name) + `\s`).MatchString(r.stdout) {
						t.Errorf("notifyctl %s does not list --%s:\n%s", strings.Join(args, " "), name, r.stdout)
					}
				}
				// Once: notifyctl --help printed them twice, from its own text and the usage.
				if strings.Count(r.stdout, "Exit codes:") != 1 || !strings.Contains(r.stdout, "4  API key refused") {
					t.Errorf("notifyctl %s does not document the exit codes once:\n%s", strings.Join(args, " "), r.stdout)
				}
				if want := "notifyctl " + strings.Join(hc.path, " "); !strings.Contains(r.stdout, strings.TrimSpace(want)) {
					t.Errorf("notifyctl %s is not the help of %s:\n%s", strings.Join(args, " "), want, r.stdout)
				}
			}
			args := append(slices.Clone(hc.path), "--hlep")
			r := mustCtl(t, exitUsage, nil, args...)
			if !strings.Contains(r.stderr, "unknown flag: --hlep") || r.stdout != "" {
				t.Errorf("notifyctl %s: stdout %q, stderr does not name the flag:\n%s", strings.Join(args, " "), r.stdout, r.stderr)
			}
		})
	}
}

func TestUsageErrorsExitTwoWithoutAServer(t *testing.T) {
	t.Parallel()
	tests := []struct {
		args    []string
		env     map[string]string
		message string
	}{
		{args: nil, message: "give a command"},
		{args: []string{"frobnicate"}, message: `unknown command "frobnicate"`},
		{args: []string{"lst"}, message: "Did you mean this?"},
		// cobra's help and completion commands printed a help text for these, exit 0.
		{args: []string{"help", "bogus"}, message: `notifyctl: help: notifyctl has no command "bogus"` + "\n"},
		{args: []string{"help", "keys", "crate"}, message: `notifyctl: help: notifyctl keys has no command "crate" (did you mean create?)` + "\n"},
		{args: []string{"help", "list", "extra"}, message: `notifyctl: help: notifyctl list has no command "extra"` + "\n"},
		{args: []string{"completion"}, message: "notifyctl: notifyctl completion needs a subcommand: bash, fish, powershell, zsh\n"},
		{args: []string{"completion", "tcsh"}, message: `notifyctl: unknown notifyctl completion subcommand "tcsh" (want bash, fish, powershell, zsh)` + "\n"},
		{args: []string{"replay"}, message: "give notification ids"},
		{args: []string{"replay", "x", "--dead"}, message: "not both"},
		{args: []string{"replay", "--batch", "0", "x"}, message: "--batch"},
		{args: []string{"list", "--status", "lost"}, message: `list: --status "lost": want scheduled, pending, retrying, delivered, failed, expired or cancelled`},
		{args: []string{"list", "--since", "soon"}, message: "--since"},
		{args: []string{"list", "--limit", "many"}, message: "--limit"},
		// It was the server's "end_time must be after start_time", exit 1.
		{args: []string{"list", "--since", "1h", "--until", "2h"}, message: "list: --until 2h is not after --since 1h"},
		{args: []string{"dead", "list", "--since", "2026-05-02T00:00:00Z", "--until", "2026-05-01T00:00:00Z"},
			message: "dead list: --until 2026-05-01T00:00:00Z is not after --since 2026-05-02T00:00:00Z"},
		{args: []string{"replay", "--dead", "--since", "1h", "--until", "1h"}, message: "replay: --until 1h is not after --since 1h"},
		{args: []string{"list", "extra"}, message: `notifyctl: list takes no arguments (got "extra")`},
		{args: []string{"dead"}, message: "needs a subcommand: list"},
		{args: []string{"dead", "list", "--replayed", "--unreplayed"}, message: "at most one"},
		{args: []string{"keys"}, message: "create, list, revoke"},
		{args: []string{"keys", "frob"}, message: `unknown notifyctl keys subcommand "frob"`},
		// As `help keys bogus`: it was `unknown notifyctl keys subcommand "help"`, naming the wrong word.
		{args: []string{"keys", "help", "bogus"}, message: `notifyctl: help: notifyctl keys has no command "bogus"` + "\n"},
		{args: []string{"keys", "help", "crate"}, message: `notifyctl: help: notifyctl keys has no command "crate" (did you mean create?)` + "\n"},
		{args: []string{"dead", "help", "list", "extra"}, message: `notifyctl: help: notifyctl dead list has no command "extra"` + "\n"},
		{args: []string{"keys", "create", "name"}, message: `"role" not set`},
		{args: []string{"keys", "create", "name", "--role", "root"}, message: `keys create: --role "root": want publisher or admin`},
		{args: []string{"keys", "revoke"}, message: "give one key NAME"},
		{args: []string{"get"}, message: "notifyctl: get: give one notification ID\n"},
		{args: []string{"get", "a", "b"}, message: "give one notification ID"},
		{args: []string{"get", "a", "--wait", "-10s"}, message: "get: --wait must not be negative"},
		{args: []string{"devices", "register", "--user", "u"}, message: `"device", "token" not set`},
		{args: []string{"devices", "list"}, message: `"user" not set`},
		{args: []string{"devices", "list", "--user", "u", "--limit", "-1"}, message: "--limit"},
		{args: []string{"devices", "unregister"}, message: "notifyctl: devices unregister: give DEVICE_ID\n"},
		{args: []string{"preferences"}, message: "needs a subcommand: get, set"},
		{args: []string{"preferences", "get"}, message: `"user" not set`},
		{args: []string{"preferences", "get", "--user", "u", "extra"}, message: "takes no arguments"},
		{args: []string{"preferences", "set", "--user", "u"}, message: "--mute"},
		{args: []string{"preferences", "set", "--user", "u", "--mute", "a", "--none"}, message: "not both"},
		{args: []string{"devices", "register", "--user", "u", "--device", "d", "--token", "t", "--platform", "tv"}, message: `devices register: --platform "tv": want android, ios or web`},
		{args: []string{"publish", "--title", "x"}, message: "exactly one of --user, --token, --all, --topic or --condition"},
		{args: []string{"publish", "--topic", "news", "--condition", "'a' in topics"}, message: "exactly one of"},
		{args: []string{"publish", "--user", "u", "--all"}, message: "exactly one of"},
		{args: []string{"publish", "--user", "u", "--data", "novalue"}, message: "key=value"},
		// It sent a=c, dropping a=b without a word.
		{args: []string{"publish", "--user", "u", "--data", "a=b", "--data", "x=1", "--data", "a=c"}, message: `publish: --data a=c: key "a" given twice`},
		{args: []string{"publish", "--user", "u", "--priority", "urgent"}, message: `publish: --priority "urgent": want normal or high`},
		{args: []string{"publish", "--user", "u", "--ttl", "soon"}, message: "--ttl"},
		// It was sent with the server's 28 days: FCM's ttl 0 means "now or never", the
		// opposite, and Publish refuses it.
		{args: []string{"publish", "--user", "u", "--title", "t", "--ttl", "0s"}, message: "publish: --ttl 0s: want more than 0, at most 28d (leave it out for the server's 28 days)"},
		// Beyond what Publish accepts: it was the server's "options.ttl: must be more than 0 and
		// at most 28 days (672h), got 696h0m0s", exit 1.
		{args: []string{"publish", "--user", "u", "--title", "t", "--ttl", "29d"},
			message: "publish: --ttl 29d is more than 28 days, the longest a notification can live (FCM's limit)"},
		{args: []string{"publish", "--user", "u", "--title", "t", "--ttl", "672h1s"},
			message: "publish: --ttl 672h0m1s is more than 28 days"},
		// A past time (a typo in the year, README's example once its date passed) was sent at
		// once, as Publish treats a send_at not in the future: a broadcast meant for later
		// went out now.
		{args: []string{"publish", "--all", "--title", "t", "--at", "2020-06-01T18:00:00Z"},
			message: "publish: --at 2020-06-01T18:00:00Z is in the past; leave out --at to send now"},
		{args: []string{"publish", "--all", "--title", "t", "--at", "0s"}, message: "publish: --at 0s is not in the future"},
		// Beyond what Publish accepts: it was the server's "must be at most 30 days ahead, got
		// 744h0m0s ahead", exit 1.
		{args: []string{"publish", "--all", "--title", "t", "--at", "31d"},
			message: "publish: --at 31d is more than 30 days ahead, the most a notification can be scheduled"},
		{args: []string{"publish", "--all", "--title", "t", "--at", "2999-06-01T18:00:00Z"},
			message: "publish: --at 2999-06-01T18:00:00Z is more than 30 days ahead"},
		{args: []string{"publish", "--nope"}, message: "unknown flag: --nope"},
		// Go-style single-dash long flags: it was "unknown shorthand flag: 'd' in -dry-run".
		{args: []string{"replay", "x", "-dry-run"}, message: "-dry-run: flags take two dashes: --dry-run"},
		{args: []string{"list", "-addr", "h:1"}, message: "-addr: flags take two dashes: --addr"},
		{args: []string{"-version"}, message: "-version: flags take two dashes: --version"},
		{args: []string{"list", "-helpme"}, message: "unknown shorthand flag"},
		// Near misses of a flag of the command.
		{args: []string{"replay", "x", "--dryrun"}, message: "unknown flag: --dryrun (did you mean --dry-run?)"},
		{args: []string{"replay", "x", "--dry_run"}, message: "unknown flag: --dry_run (did you mean --dry-run?)"},
		{args: []string{"dead", "list", "--unreplay"}, message: "unknown flag: --unreplay (did you mean --unreplayed?)"},
		{args: []string{"list", "--Status", "failed"}, message: "unknown flag: --Status (did you mean --status?)"},
		{args: []string{"list", "--noheaders"}, message: "unknown flag: --noheaders (did you mean --no-headers?)"},
		{args: []string{"publish", "--users", "u1"}, message: "unknown flag: --users (did you mean --user?)"},
		{args: []string{"publish", "--tittle", "x"}, message: "unknown flag: --tittle (did you mean --title?)"},
		{args: []string{"publish", "--tpye", "x"}, message: "unknown flag: --tpye (did you mean --type?)"},
		{args: []string{"publish", "--usr", "u1"}, message: "unknown flag: --usr (did you mean --user?)"},
		{args: []string{"publish", "--bodyy", "x"}, message: "unknown flag: --bodyy (did you mean --body?)"},
		{args: []string{"list", "--t", "x"}, message: "unknown flag: --t\n"},
		{args: []string{"--no-such-flag", "list"}, message: "unknown flag"},
		{args: []string{"list", "-o", "xml"}, message: `-o "xml"`},
		{args: []string{"list", "--json", "-o", "yaml"}, message: "--json and -o yaml"},
		{args: []string{"list", "--timeout", "0s"}, message: "--timeout"},
		{args: []string{"list", "--insecure", "--ca-file", "ca.pem"}, message: "--insecure and --ca-file"},
		{args: []string{"list", "--cert-file", "c.pem"}, message: "--cert-file and --key-file"},
		{args: []string{"list"}, env: map[string]string{"NOTIFY_TLS": "maybe"}, message: "NOTIFY_TLS"},
		{args: []string{"list"}, env: map[string]string{"NOTIFY_KEY_FILE": "k.pem"}, message: "--cert-file and --key-file"},
		// Not a key (a header value gRPC refuses): it was "Internal: header key "authorization"
		// contains value with non-printable ASCII characters", exit 1.
		{args: []string{"list"}, env: map[string]string{"NOTIFY_API_KEY": "nfy_a\x01b"}, message: "NOTIFY_API_KEY"},
		{args: []string{"list", "--api-key", "nfy_é"}, message: "--api-key"},
		// The header's whole value: it said "a character that is not printable ASCII at byte 6",
		// of a space.
		{args: []string{"list"}, env: map[string]string{"NOTIFY_API_KEY": "Bearer nfy_x"},
			message: `--api-key (NOTIFY_API_KEY) has ' ' at byte 6: an API key is printable ASCII without spaces (nfy_…); give it without "Bearer "`},
		// A URL where host:port belongs: it was "invalid target address http://127.0.0.1:50051,
		// error info: address http://127.0.0.1:50051:443: too many colons in address", exit 1.
		{args: []string{"list", "--addr", "http://127.0.0.1:50051"}, message: `--addr "http://127.0.0.1:50051": want host:port without http:// (--addr 127.0.0.1:50051)`},
		{args: []string{"list"}, env: map[string]string{"NOTIFY_ADDR": "https://notify.example.com/"},
			message: `NOTIFY_ADDR "https://notify.example.com/": want host:port without https:// (--addr notify.example.com:443 with --tls or --ca-file)`},
		// Not UTF-8: protobuf strings cannot carry it. It was "Internal: grpc: error while
		// marshaling: string field contains invalid UTF-8", exit 1, naming nothing.
		{args: []string{"publish", "--user", "ana", "--title", "caf\xe9"}, message: `--title is not UTF-8 text (byte 3 of "caf\xe9")`},
		{args: []string{"publish", "--user", "ana", "--user", "b\xffb", "--title", "t"}, message: "--user is not UTF-8 text"},
		{args: []string{"publish", "--user", "ana", "--data", "k=\xff"}, message: "--data is not UTF-8 text"},
		{args: []string{"get", "\xff"}, message: `get: argument 1 is not UTF-8 text (byte 0 of "\xff")`},
		{args: []string{"dead", "list", "--reason", "\xc3"}, message: "--reason is not UTF-8 text"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			t.Parallel()
			// An address nothing listens on: a usage error must not need the server.
			e := map[string]string{"NOTIFY_ADDR": "127.0.0.1:1"}
			for k, v := range tt.env {
				e[k] = v
			}
			r := mustCtl(t, exitUsage, e, tt.args...)
			if !strings.Contains(r.stderr, tt.message) || !strings.Contains(r.stderr, "--help' for usage") {
				t.Errorf("stderr does not say %q and where to find the usage:\n%s", tt.message, r.stderr)
			}
			if r.stdout != "" {
				t.Errorf("a usage error printed on stdout:\n%s", r.stdout)
			}
			if strings.Contains(r.stderr, "cannot reach") {
				t.Errorf("a usage error tried the server:\n%s", r.stderr)
			}
		})
	}
}

// Global flags and output flags work before the command, after it and between its arguments.
func TestFlagsAnywhere(t *testing.T) {
	t.Parallel()
	_, addr := startFake(t)
	want := mustCtl(t, exitOK, nil, "--addr", addr, "--api-key", "admin", "--json", "list").stdout
	if !json.Valid([]byte(want)) {
		t.Fatalf("--json list printed no JSON:\n%s", want)
	}
	for _, args := range [][]string{
		{"list", "--json", "--addr", addr, "--api-key", "admin"},
		{"list", "-o", "json", "--addr=" + addr, "--api-key=admin"},
		{"-o", "json", "--api-key", "admin", "list", "--addr", addr},
		{"--output=json", "list", "--limit", "10", "--addr", addr, "--api-key", "admin"},
	} {
		if got := mustCtl(t, exitOK, nil, args...).stdout; got != want {
			t.Errorf("notifyctl %s printed\n%s\nwant the same as with the flags first:\n%s", strings.Join(args, " "), got, want)
		}
	}

	// Flags between positional arguments, and "--" before an argument that looks like a flag.
	f, addr := startFake(t)
	mustCtl(t, exitOK, env(addr, "admin"), "replay", "a", "--dry-run", "b", "--batch", "5", "--", "-c")
	want2 := &notifyv1.ReplayRequest{
		Selector: &notifyv1.ReplayRequest_NotificationIds{NotificationIds: &notifyv1.NotificationIDs{Ids: []string{"a", "b", "-c"}}},
		DryRun:   true,
	}
	if diff := cmp.Diff([]*notifyv1.ReplayRequest{want2}, f.replays, protocmp.Transform()); diff != "" {
		t.Errorf("replay request (-want +got):\n%s", diff)
	}
}

func TestPublishSendsWhatTheFlagsSay(t *testing.T) {
	t.Parallel()
	f, addr := startFake(t)
	r := mustCtl(t, exitOK, map[string]string{"NOTIFY_ADDR": addr}, "publish", "--user", "ana", "--api-key", "publisher",
		"--user", "bob", "--title", "Shipped", "--body", "Parcel 42", "--data", "order_id=42", "--data", "note=a,b=c",
		"--type", "order.shipped", "--ttl", "1h", "--priority", "high", "--collapse-key", "order-42",
		"--image", "https://example.com/a.png", "--idempotency-key", "order-42-shipped", "--app", "staff", "--ignore-preferences")
	if strings.TrimSpace(r.stdout) != "01890a5d-0000-7000-8000-000000000001" {
		t.Errorf("publish printed %q, want only the id", r.stdout)
	}
	want := &notifyv1.PublishRequest{
		IdempotencyKey: "order-42-shipped",
		Type:           "order.shipped",
		App:            "staff",
		Recipients:     &notifyv1.Recipients{Target: &notifyv1.Recipients_UserIds{UserIds: &notifyv1.UserIDs{UserIds: []string{"ana", "bob"}}}},
		Content:        &notifyv1.Content{Title: "Shipped", Body: "Parcel 42", ImageUrl: "https://example.com/a.png"},
		Data:           map[string]string{"order_id": "42", "note": "a,b=c"},
		Options: &notifyv1.Options{Priority: notifyv1.Priority_PRIORITY_HIGH, Ttl: durationpb.New(time.Hour), CollapseKey: "order-42",
			IgnorePreferences: true},
	}
	if diff := cmp.Diff([]*notifyv1.PublishRequest{want}, f.publishes, protocmp.Transform()); diff != "" {
		t.Errorf("publish request (-want +got):\n%s", diff)
	}
	mustCtl(t, exitOK, env(addr, "publisher"), "publish", "--topic", "news", "--title", "t")
	mustCtl(t, exitOK, env(addr, "publisher"), "publish", "--condition", "'a' in topics", "--title", "t")
	if n := len(f.publishes); n != 3 || f.publishes[1].GetRecipients().GetTopic() != "news" ||
		f.publishes[2].GetRecipients().GetCondition() != "'a' in topics" {
		t.Errorf("publish --topic / --condition sent %v", f.publishes[1:])
	}
	if out := mustCtl(t, exitOK, env(addr, "publisher"), "publish", "--all", "--idempotency-key", "used").stdout; !strings.Contains(out, "duplicate") {
		t.Errorf("publish with a used key: %q", out)
	}
}

// JSON and YAML: counts are numbers, times RFC 3339; tables show times with their zone
// and --no-headers leaves only the rows.
func TestOutputFormats(t *testing.T) {
	t.Parallel()
	_, addr := startFake(t)
	e := env(addr, "admin")

	var listed struct {
		Notifications []struct {
			ID          string         `json:"id"`
			Status      string         `json:"status"`
			Counts      map[string]any `json:"counts"`
			CreateTime  string         `json:"createTime"`
			ReplayCount any            `json:"replayCount"`
		} `json:"notifications"`
	}
	out := mustCtl(t, exitOK, e, "list", "-o", "json").stdout
	if err := json.Unmarshal([]byte(out), &listed); err != nil || len(listed.Notifications) != 2 {
		t.Fatalf("list -o json: %v\n%s", err, out)
	}
	n := listed.Notifications[0]
	wantCounts := map[string]any{"total": 3.0, "delivered": 2.0, "failed": 1.0, "pending": 0.0, "invalid": 0.0, "retrying": 0.0, "expired": 0.0, "skipped": 0.0,
		"cancelled": 0.0}
	if diff := cmp.Diff(wantCounts, n.Counts); diff != "" {
		t.Errorf("counts in JSON (-want +got), numbers and zeros too:\n%s", diff)
	}
	if n.ReplayCount != 0.0 || n.Status != "NOTIFICATION_STATUS_FAILED" {
		t.Errorf("replayCount %v (want the number 0), status %q", n.ReplayCount, n.Status)
	}
	if ts, err := time.Parse(time.RFC3339, n.CreateTime); err != nil || !ts.Equal(created) {
		t.Errorf("createTime %q: %v, want %s", n.CreateTime, err, created.Format(time.RFC3339))
	}

	var dead struct {
		DeadLetters []map[string]any `json:"deadLetters"`
	}
	if err := json.Unmarshal([]byte(mustCtl(t, exitOK, e, "dead", "list", "--json").stdout), &dead); err != nil || len(dead.DeadLetters) != 1 {
		t.Fatalf("dead list --json: %v %v", dead, err)
	}
	if d := dead.DeadLetters[0]; d["id"] != 7.0 || d["tokenCount"] != 2.0 || d["attempts"] != 6.0 {
		t.Errorf("dead letter in JSON: %v, want numeric id 7, tokenCount 2, attempts 6", d)
	}

	var y struct {
		DeadLetters []struct {
			ID         int64  `yaml:"id"`
			TokenCount int64  `yaml:"tokenCount"`
			Reason     string `yaml:"reason"`
			CreateTime string `yaml:"createTime"`
		} `yaml:"deadLetters"`
	}
	out = mustCtl(t, exitOK, e, "dead", "list", "-o", "yaml").stdout
	if err := yaml.Unmarshal([]byte(out), &y); err != nil || len(y.DeadLetters) != 1 {
		t.Fatalf("dead list -o yaml: %v\n%s", err, out)
	}
	if d := y.DeadLetters[0]; d.ID != 7 || d.TokenCount != 2 || d.Reason != "retries_exhausted" || d.CreateTime != "2026-05-01T12:30:00Z" {
		t.Errorf("dead list -o yaml: %+v", d)
	}

	table := mustCtl(t, exitOK, e, "list").stdout
	lines := strings.Split(strings.TrimSpace(table), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "ID ") {
		t.Fatalf("list table:\n%s", table)
	}
	if ts, err := time.Parse(time.RFC3339, strings.Fields(lines[1])[1]); err != nil || !ts.Equal(created) {
		t.Errorf("CREATED %q is not the RFC 3339 time with its zone: %v", strings.Fields(lines[1])[1], err)
	}
	for _, args := range [][]string{{"list"}, {"keys", "list"}, {"dead", "list"}, {"get", "x"}} {
		with := rows(mustCtl(t, exitOK, e, args...).stdout)
		without := rows(mustCtl(t, exitOK, e, append(args, "--no-headers")...).stdout)
		if len(without) == 0 || len(without) >= len(with) {
			t.Fatalf("%s --no-headers: %q, with headers: %q", strings.Join(args, " "), without, with)
		}
		if diff := cmp.Diff(with[len(with)-len(without):], without); diff != "" {
			t.Errorf("%s --no-headers, want the rows of the table (-want +got):\n%s", strings.Join(args, " "), diff)
		}
	}

	// Every command that prints something takes -o json and -o yaml.
	for _, args := range [][]string{
		{"get", "x"}, {"keys", "list"}, {"keys", "create", "ci", "--role", "publisher"}, {"keys", "revoke", "ops"},
		{"replay", "a"}, {"publish", "--user", "ana"}, {"devices", "check", "--user", "u", "--device", "known"},
		{"devices", "register", "--user", "u", "--device", "d", "--token", "t"}, {"version"},
		{"devices", "list", "--user", "ana"}, {"devices", "unregister", "phone"},
		{"preferences", "set", "--user", "ana", "--mute", "promo"}, {"preferences", "get", "--user", "ana"},
	} {
		for _, format := range []string{"json", "yaml"} {
			out := mustCtl(t, exitOK, e, append(args, "-o", format)...).stdout
			var v map[string]any
			var err error
			if format == "json" {
				err = json.Unmarshal([]byte(out), &v)
			} else {
				err = yaml.Unmarshal([]byte(out), &v)
			}
			if err != nil || len(v) == 0 {
				t.Errorf("%s -o %s printed no %s object: %v\n%s", strings.Join(args, " "), format, format, err, out)
			}
		}
	}
}

func TestExitCodes(t *testing.T) {
	t.Parallel()
	_, addr := startFake(t)
	tests := []struct {
		key    string
		args   []string
		code   int
		stderr string
	}{
		{"admin", []string{"get", "x"}, exitOK, ""},
		{"admin", []string{"get", missingID}, exitNotFound, "NotFound"},
		{"admin", []string{"replay", "a", missingID}, exitNotFound, "1 of the notifications do not exist"},
		{"admin", []string{"keys", "revoke", "nobody"}, exitNotFound, `no active key named "nobody"`},
		{"publisher", []string{"devices", "unregister", "missing-device"}, exitNotFound, `no device "missing-device"`},
		{"publisher", []string{"devices", "unregister", "phone"}, exitOK, ""},
		{"publisher", []string{"devices", "list", "--user", "ana"}, exitOK, ""},
		{"", []string{"list"}, exitAuth, "no API key given: use --api-key or NOTIFY_API_KEY"},
		{"admin\n", []string{"list"}, exitOK, ""}, // a key read from a file, with its newline
		{"nfy_wrong", []string{"list"}, exitAuth, "Unauthenticated"},
		// A file name where the key belongs (NOTIFY_API_KEY=tmp/dev-admin-key): say what a key looks like.
		{"tmp/dev-admin-key", []string{"list"}, exitAuth, "(the key given does not start with nfy_, as notify's keys do: give the key itself, e.g. NOTIFY_API_KEY=$(cat FILE))"},
		{"publisher", []string{"list"}, exitAuth, "PermissionDenied"},
		// The server answering Unavailable is the server's answer, not an unreachable server.
		{"admin", []string{"get", unavailableID}, exitFailure, "Unavailable: database unavailable"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			t.Parallel()
			r := mustCtl(t, tt.code, env(addr, tt.key), tt.args...)
			if !strings.Contains(r.stderr, tt.stderr) || strings.Contains(r.stderr, "cannot reach") {
				t.Errorf("stderr does not say %q:\n%s", tt.stderr, r.stderr)
			}
		})
	}
}

func TestReplayBatchesWithProgress(t *testing.T) {
	t.Parallel()
	f, addr := startFake(t)
	r := mustCtl(t, exitOK, env(addr, "admin"), "replay", "a", "b", "c", "a", "--batch", "2", "--force")
	if len(f.replays) != 2 || !f.replays[0].GetForce() || len(f.replays[1].GetNotificationIds().GetIds()) != 1 {
		t.Errorf("replay calls: %v, want 2 batches (a b, c) with force", f.replays)
	}
	if !strings.Contains(r.stderr, "replay: 2/3 notifications") || !strings.Contains(r.stderr, "replay: 3/3 notifications: 3 replayed (3 tokens)") {
		t.Errorf("progress on stderr:\n%s", r.stderr)
	}
	if !strings.Contains(r.stdout, "3 notifications: 3 replayed (3 tokens)") {
		t.Errorf("summary on stdout:\n%s", r.stdout)
	}
	bare := mustCtl(t, exitOK, env(addr, "admin"), "replay", "a", "--no-headers", "--dry-run")
	if strings.TrimSpace(bare.stdout) != "a  replayed  1" || !strings.Contains(bare.stderr, "dry run") {
		t.Errorf("replay --no-headers: stdout %q (want only the row), stderr %q (want the summary)", bare.stdout, bare.stderr)
	}
}

func TestVersionAndCompletion(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{{"--version"}, {"version"}, {"list", "--version"}} {
		r := ctl(t, nil, args...)
		if args[0] == "list" {
			// --version belongs to notifyctl itself; after a command it is an unknown flag.
			if r.code != exitUsage {
				t.Errorf("list --version: exit %d, want %d", r.code, exitUsage)
			}
			continue
		}
		// The commit is there when the build stamped one (make build does; go test does not).
		if r.code != exitOK || !strings.HasPrefix(r.stdout, "notifyctl ") || !strings.Contains(r.stdout, runtime.Version()) {
			t.Errorf("notifyctl %s: exit %d, %q; want the version and Go version", args[0], r.code, r.stdout)
		}
	}
	var v map[string]any
	if err := json.Unmarshal([]byte(mustCtl(t, exitOK, nil, "version", "-o", "json").stdout), &v); err != nil ||
		v["goVersion"] != runtime.Version() || v["commit"] == nil || v["version"] == "" {
		t.Errorf("version -o json: %v %v", v, err)
	}
	for _, shell := range []string{"bash", "zsh", "fish", "powershell"} {
		if out := mustCtl(t, exitOK, nil, "completion", shell).stdout; !strings.Contains(out, "notifyctl") || len(out) < 1000 {
			t.Errorf("completion %s printed %d bytes", shell, len(out))
		}
	}
	// The shell asks notifyctl itself for completions: commands and flag values.
	if out := mustCtl(t, exitOK, nil, "__complete", "list", "--status", "").stdout; !strings.Contains(out, "failed\n") {
		t.Errorf("completing list --status:\n%s", out)
	}
	if out := mustCtl(t, exitOK, nil, "__complete", "ke").stdout; !strings.Contains(out, "keys") {
		t.Errorf("completing ke:\n%s", out)
	}
}

// rows are the non-empty lines of a table, with runs of spaces made one.
func rows(table string) []string {
	var rs []string
	for _, line := range strings.Split(table, "\n") {
		if f := strings.Fields(line); len(f) > 0 {
			rs = append(rs, strings.Join(f, " "))
		}
	}
	return rs
}

func TestPublishFile(t *testing.T) {
	t.Parallel()
	f, addr := startFake(t)
	var lines []string
	for i := range 1001 {
		typ := "reminder"
		if i == 1 || i == 700 {
			typ = "bad"
		}
		lines = append(lines, fmt.Sprintf(`{"idempotencyKey":"k%d","type":%q,"recipients":{"userIds":{"userIds":["ana"]}},"content":{"title":"t"}}`, i, typ))
		if i == 0 {
			lines = append(lines, "") // blank lines are skipped, line numbers still count them
		}
	}
	path := filepath.Join(t.TempDir(), "reqs.jsonl")
	if err := os.WriteFile(path, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	r := mustCtl(t, exitFailure, env(addr, "publisher"), "publish", "--file", path)
	if diff := cmp.Diff([]int{500, 500, 1}, f.batches); diff != "" {
		t.Errorf("PublishBatch sizes (-want +got):\n%s", diff)
	}
	if len(f.publishes) != 1001 || f.publishes[0].GetIdempotencyKey() != "k0" || f.publishes[1000].GetIdempotencyKey() != "k1000" {
		t.Errorf("sent %d requests, want the file's 1001 in order", len(f.publishes))
	}
	for _, want := range []string{`(?m)^1\s+id-0$`, `(?m)^3\s+InvalidArgument: invalid request: type$`, `(?m)^\s+type: is bad$`,
		`(?m)^702\s+InvalidArgument`, `(?m)^1002\s+id-0$`, `999 accepted, 0 duplicates, 2 refused`} {
		if !regexp.MustCompile(want).MatchString(r.stdout) {
			t.Errorf("output does not match %s:\n%s", want, r.stdout[:min(len(r.stdout), 400)])
		}
	}

	js := mustCtl(t, exitFailure, env(addr, "publisher"), "publish", "--file", path, "-o", "json").stdout
	for _, want := range []string{`"notificationId": "id-0"`, `"code": 3`, `"field": "type"`} {
		if !strings.Contains(js, want) {
			t.Errorf("JSON output lacks %s", want)
		}
	}
	// Each JSON result names its line, as the table does: the blank line 2 is skipped, so
	// the second result is line 3's.
	if diff := cmp.Diff([]int{1, 3, 4, 702, 1002}, resultLines(t, js, 0, 1, 2, 700, 1000)); diff != "" {
		t.Errorf("JSON results' lines (-want +got):\n%s", diff)
	}

	// A file saved with a byte order mark and CRLF line ends (Windows): the mark was read
	// as part of line 1, refused as "invalid value".
	bom := filepath.Join(t.TempDir(), "bom.jsonl")
	if err := os.WriteFile(bom, []byte("\ufeff"+lines[0]+"\r\n"+lines[0]+"\r\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if r := mustCtl(t, exitOK, env(addr, "publisher"), "publish", "--file", bom); !regexp.MustCompile(`(?m)^1\s+id-0$`).MatchString(r.stdout) {
		t.Errorf("a file with a byte order mark:\n%s", r.stdout)
	}

	bad := filepath.Join(t.TempDir(), "bad.jsonl")
	if err := os.WriteFile(bad, []byte(lines[0]+"\n{\"nope\":1}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	r = mustCtl(t, exitUsage, env(addr, "publisher"), "publish", "--file", bad)
	if !strings.Contains(r.stderr, "line 2") {
		t.Errorf("stderr %q does not name the bad line", r.stderr)
	}
	// A line over the limit is named, as a line that is not JSON is; it said
	// "reading FILE: bufio.Scanner: token too long".
	long := filepath.Join(t.TempDir(), "long.jsonl")
	if err := os.WriteFile(long, []byte(lines[0]+"\n"+lines[2]+"\n"+strings.Repeat(" ", 5<<20)+"{}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	r = mustCtl(t, exitUsage, env(addr, "publisher"), "publish", "--file", long)
	if !strings.Contains(r.stderr, "long.jsonl line 3 is longer than 4194304 bytes") {
		t.Errorf("stderr %q does not name the long line", r.stderr)
	}
	mustCtl(t, exitUsage, env(addr, "publisher"), "publish", "--file", path, "--title", "x")
	if len(f.batches) != 7 {
		t.Errorf("refused command lines sent %d more batches", len(f.batches)-7)
	}
}

// resultLines are the "line" of the results at the given places of publish --file's JSON.
func resultLines(t *testing.T, js string, at ...int) []int {
	t.Helper()
	var out struct {
		Results []struct {
			Line *int `json:"line"`
		} `json:"results"`
	}
	if err := json.Unmarshal([]byte(js), &out); err != nil {
		t.Fatalf("JSON output: %v", err)
	}
	var lines []int
	for _, i := range at {
		if i >= len(out.Results) || out.Results[i].Line == nil {
			t.Fatalf("JSON output has %d results, result %d without a line", len(out.Results), i)
		}
		lines = append(lines, *out.Results[i].Line)
	}
	return lines
}

// publishFileLines writes n valid requests, one per line, and returns the file's path.
func publishFileLines(t *testing.T, n int) string {
	t.Helper()
	var b strings.Builder
	for i := range n {
		fmt.Fprintf(&b, `{"idempotencyKey":"k%d","type":"reminder","recipients":{"userIds":{"userIds":["ana"]}},"content":{"title":"t"}}`+"\n", i)
	}
	path := filepath.Join(t.TempDir(), "reqs.jsonl")
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestPublishFileWaitsForTheRateLimit: a PublishBatch call refused by the rate limit
// (RESOURCE_EXHAUSTED with RetryInfo) wrote nothing, and notifyctl sends it again after the
// delay, so a file of more than the default burst of 1,000 is published whole. It stopped
// at line 1001.
func TestPublishFileWaitsForTheRateLimit(t *testing.T) {
	t.Parallel()
	f, addr := startFake(t)
	limited, _ := status.New(codes.ResourceExhausted, "rate limit exceeded").WithDetails(
		&errdetails.RetryInfo{RetryDelay: durationpb.New(50 * time.Millisecond)})
	f.refuseBatch = func(n int) error {
		if n == 2 { // the third call, the first over 1,000
			return limited.Err()
		}
		return nil
	}
	r := mustCtl(t, exitOK, env(addr, "publisher"), "publish", "--file", publishFileLines(t, 1200))
	if diff := cmp.Diff([]int{500, 500, 200}, f.batches); diff != "" {
		t.Errorf("PublishBatch sizes written (-want +got):\n%s", diff)
	}
	if f.batchCalls != 4 {
		t.Errorf("%d PublishBatch calls, want 4 (the refused one sent again once)", f.batchCalls)
	}
	for _, want := range []string{`(?m)^1\s+id-0$`, `(?m)^1001\s+id-0$`, `(?m)^1200\s+id-199$`, `1200 accepted, 0 duplicates, 0 refused`} {
		if !regexp.MustCompile(want).MatchString(r.stdout) {
			t.Errorf("output does not match %s", want)
		}
	}
	if !strings.Contains(r.stderr, "rate limited at line 1001; sending it again in 50ms") {
		t.Errorf("stderr does not say it waits for the rate limit:\n%s", r.stderr)
	}

	// RESOURCE_EXHAUSTED without RetryInfo is not the rate limit (a message over the
	// server's size limit): it would be refused again, and is not sent again.
	f, addr = startFake(t)
	f.refuseBatch = func(int) error { return status.Error(codes.ResourceExhausted, "message larger than max") }
	mustCtl(t, exitFailure, env(addr, "publisher"), "publish", "--file", publishFileLines(t, 10))
	if f.batchCalls != 1 {
		t.Errorf("%d PublishBatch calls for RESOURCE_EXHAUSTED without RetryInfo, want 1", f.batchCalls)
	}
}

// TestPublishFilePrintsWhatWasSent: when a PublishBatch call fails after others were
// committed, their results are printed all the same (table or JSON), then the failure,
// with its exit code. The committed ids were lost: only the error was printed. A call that
// failed otherwise than by the rate limit may have been committed, so it is not sent again.
func TestPublishFilePrintsWhatWasSent(t *testing.T) {
	t.Parallel()
	f, addr := startFake(t)
	f.refuseBatch = func(n int) error {
		if n%2 == 1 { // the second call of each run of notifyctl
			return status.Error(codes.Unavailable, "the database is unavailable")
		}
		return nil
	}
	path := publishFileLines(t, 1200)
	r := mustCtl(t, exitFailure, env(addr, "publisher"), "publish", "--file", path)
	if f.batchCalls != 2 {
		t.Errorf("%d PublishBatch calls, want 2 (UNAVAILABLE is not sent again)", f.batchCalls)
	}
	for _, want := range []string{`(?m)^1\s+id-0$`, `(?m)^500\s+id-499$`, `500 accepted, 0 duplicates, 0 refused`} {
		if !regexp.MustCompile(want).MatchString(r.stdout) {
			t.Errorf("output does not match %s:\n%s", want, r.stdout[max(0, len(r.stdout)-400):])
		}
	}
	if strings.Contains(r.stdout, "\n501 ") {
		t.Errorf("output has a result for line 501, which was not sent")
	}
	for _, want := range []string{"the requests before line 501 were sent; this batch and the rest were not", "the database is unavailable"} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("stderr lacks %q:\n%s", want, r.stderr)
		}
	}

	js := mustCtl(t, exitFailure, env(addr, "publisher"), "publish", "--file", path, "-o", "json")
	if diff := cmp.Diff([]int{1, 500}, resultLines(t, js.stdout, 0, 499)); diff != "" {
		t.Errorf("JSON results' lines (-want +got):\n%s", diff)
	}
	if !strings.Contains(js.stderr, "the requests before line 501 were sent") {
		t.Errorf("stderr with -o json:\n%s", js.stderr)
	}
}

// TestPublishFileBatchesWithinTheBytesLimit: 500 valid requests of 10 kB each (100 tokens)
// are more than a PublishBatch call may carry (4 MiB): notifyctl splits them into calls
// within it and every request is accepted. It packed 500 per call, and the server refused
// the whole call, so such a file could not be published at all.
func TestPublishFileBatchesWithinTheBytesLimit(t *testing.T) {
	t.Parallel()
	f, addr := startFake(t)
	var lines []string
	for i := range 500 {
		tokens := make([]string, 100)
		for j := range tokens {
			tokens[j] = fmt.Sprintf("%q", fmt.Sprintf("tok-%d-%d-%s", i, j, strings.Repeat("a", 90)))
		}
		lines = append(lines, fmt.Sprintf(`{"idempotencyKey":"k%d","type":"bulk","recipients":{"tokens":{"tokens":[%s]}},"content":{"title":"t"}}`,
			i, strings.Join(tokens, ",")))
	}
	path := filepath.Join(t.TempDir(), "bulk.jsonl")
	if err := os.WriteFile(path, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	r := mustCtl(t, exitOK, env(addr, "publisher"), "publish", "--file", path)
	if !strings.Contains(r.stdout, "500 accepted, 0 duplicates, 0 refused") && !strings.Contains(r.stderr, "500 accepted, 0 duplicates, 0 refused") {
		t.Errorf("summary missing:\n%s%s", r.stdout[:min(len(r.stdout), 400)], r.stderr)
	}
	if len(f.batches) < 2 || len(f.publishes) != 500 || f.publishes[499].GetIdempotencyKey() != "k499" {
		t.Errorf("PublishBatch sizes %v, %d requests sent; want several calls carrying the file's 500 in order", f.batches, len(f.publishes))
	}
}

func TestDevicesListPagesAndPrints(t *testing.T) {
	t.Parallel()
	f, addr := startFake(t)
	r := mustCtl(t, exitOK, env(addr, "publisher"), "devices", "list", "--user", "ana", "--limit", "2")
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "DEVICE ") {
		t.Fatalf("devices list --limit 2:\n%s", r.stdout)
	}
	if got := strings.Fields(lines[2]); got[0] != "tablet" || got[1] != "staff" || got[2] != "ios" || got[3] != "false" || got[5] != "UNREGISTERED" {
		t.Errorf("tablet row %q, want device, app staff, platform ios, inactive, reason UNREGISTERED", lines[2])
	}
	if !strings.Contains(r.stderr, "showing the newest 2") {
		t.Errorf("stderr does not say more are there:\n%s", r.stderr)
	}

	var all struct {
		Devices []struct {
			DeviceID string `json:"deviceId"`
			Active   bool   `json:"active"`
		} `json:"devices"`
	}
	out := mustCtl(t, exitOK, env(addr, "publisher"), "devices", "list", "--user", "ana", "--limit", "0", "--active", "-o", "json").stdout
	if err := json.Unmarshal([]byte(out), &all); err != nil || len(all.Devices) != 3 {
		t.Fatalf("devices list --limit 0 -o json: %v\n%s", err, out)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	last := f.deviceLists[len(f.deviceLists)-1]
	if last.GetUserId() != "ana" || !last.GetActiveOnly() || last.GetPageToken() == "" {
		t.Errorf("last ListDevices request %v, want user ana, active_only, a page token (all pages fetched)", last)
	}
}

// TestKeysIgnorePreferencesPermission: keys create --allow-ignore-preferences asks for the
// permission (and plain create does not); keys list shows who has it.
func TestKeysIgnorePreferencesPermission(t *testing.T) {
	t.Parallel()
	f, addr := startFake(t)
	mustCtl(t, exitOK, env(addr, "admin"), "keys", "create", "security", "--role", "publisher", "--allow-ignore-preferences")
	mustCtl(t, exitOK, env(addr, "admin"), "keys", "create", "plain", "--role", "publisher")
	f.mu.Lock()
	got := map[string]bool{}
	for _, req := range f.keyCreates {
		got[req.GetName()] = req.GetAllowIgnorePreferences()
	}
	f.mu.Unlock()
	if diff := cmp.Diff(map[string]bool{"security": true, "plain": false}, got); diff != "" {
		t.Errorf("CreateAPIKey allow_ignore_preferences (-want +got):\n%s", diff)
	}
	listed := rows(mustCtl(t, exitOK, env(addr, "admin"), "keys", "list").stdout)
	if len(listed) != 3 || !strings.HasSuffix(listed[0], "IGNORE PREFS") || !strings.HasSuffix(listed[1], "all yes") ||
		!strings.HasSuffix(listed[2], "all no") {
		t.Errorf("keys list, want an IGNORE PREFS column: yes for ops, no for shop:\n%s", strings.Join(listed, "\n"))
	}
}

// TestDevicesNameTheirApp: a device is an installation of one app, so check, unregister and
// list send --app (empty: the server's default app).
func TestDevicesNameTheirApp(t *testing.T) {
	t.Parallel()
	f, addr := startFake(t)
	mustCtl(t, exitOK, env(addr, "publisher"), "devices", "check", "--user", "u", "--device", "known", "--app", "staff")
	mustCtl(t, exitOK, env(addr, "publisher"), "devices", "unregister", "phone", "--app", "staff")
	mustCtl(t, exitOK, env(addr, "publisher"), "devices", "unregister", "phone")
	mustCtl(t, exitOK, env(addr, "publisher"), "devices", "list", "--user", "u", "--app", "staff")
	f.mu.Lock()
	defer f.mu.Unlock()
	if diff := cmp.Diff([]string{"check:staff", "unregister:staff", "unregister:"}, f.deviceApps); diff != "" {
		t.Errorf("apps sent by devices check/unregister (-want +got):\n%s", diff)
	}
	if last := f.deviceLists[len(f.deviceLists)-1]; last.GetApp() != "staff" {
		t.Errorf("devices list --app staff sent app %q", last.GetApp())
	}
}

// TestPreferencesSetAndGet: set replaces a user's muted types (repeated and comma-separated
// --mute, --none), get prints them one per line; a type the server refuses exits 1 naming
// the field.
func TestPreferencesSetAndGet(t *testing.T) {
	t.Parallel()
	f, addr := startFake(t)
	e := env(addr, "publisher")
	set := mustCtl(t, exitOK, e, "preferences", "set", "--user", "ana", "--mute", "promo,digest", "--mute", "promo")
	if diff := cmp.Diff([]string{"MUTED TYPE", "digest", "promo"}, rows(set.stdout)); diff != "" {
		t.Errorf("preferences set output (-want +got):\n%s", diff)
	}
	f.mu.Lock()
	stored := f.muted["ana"]
	f.mu.Unlock()
	if diff := cmp.Diff([]string{"digest", "promo"}, stored); diff != "" {
		t.Errorf("SetPreferences stored (-want +got):\n%s", diff)
	}
	if got := mustCtl(t, exitOK, e, "preferences", "get", "--user", "ana", "--no-headers").stdout; got != "digest\npromo\n" {
		t.Errorf("preferences get --no-headers = %q, want one type per line", got)
	}
	var js struct {
		MutedTypes []string `json:"mutedTypes"`
	}
	if err := json.Unmarshal([]byte(mustCtl(t, exitOK, e, "preferences", "get", "--user", "ana", "-o", "json").stdout), &js); err != nil ||
		len(js.MutedTypes) != 2 {
		t.Errorf("preferences get -o json = %v (%v)", js, err)
	}
	if r := mustCtl(t, exitOK, e, "preferences", "get", "--user", "bob"); len(rows(r.stdout)) != 1 || !strings.Contains(r.stderr, "mutes no notification type") {
		t.Errorf("preferences get of a user with none: stdout %q, stderr %q", r.stdout, r.stderr)
	}
	// The message alone: it printed an empty MUTED TYPE table before it.
	if r := mustCtl(t, exitOK, e, "prefs", "set", "--user", "ana", "--none"); r.stdout != "user ana mutes no notification type\n" || r.stderr != "" {
		t.Errorf("preferences set --none: stdout %q, stderr %q; want only the message", r.stdout, r.stderr)
	}
	if r := mustCtl(t, exitOK, e, "prefs", "set", "--user", "ana", "--none", "--no-headers"); r.stdout != "" || r.stderr != "user ana mutes no notification type\n" {
		t.Errorf("preferences set --none --no-headers: stdout %q, stderr %q; want no rows and the message on stderr", r.stdout, r.stderr)
	}
	if got := rows(mustCtl(t, exitOK, e, "preferences", "get", "--user", "ana").stdout); len(got) != 1 {
		t.Errorf("after set --none, get shows %q", got)
	}
	bad := mustCtl(t, exitFailure, e, "preferences", "set", "--user", "ana", "--mute", "a b")
	if !strings.Contains(bad.stderr, "muted_types[0]") {
		t.Errorf("a refused type: stderr does not name the field:\n%s", bad.stderr)
	}
	mustCtl(t, exitAuth, env(addr, ""), "preferences", "get", "--user", "ana")
}

// TestCancel prints what Cancel answered and maps its refusals to exit codes.
func TestCancel(t *testing.T) {
	t.Parallel()
	_, addr := startFake(t)
	e := env(addr, "publisher")
	if out := mustCtl(t, exitOK, e, "cancel", "n-1").stdout; out != "cancelled n-1 (3 tokens had been sent; 1 of them waited for a retry, now cancelled)\n" {
		t.Errorf("cancel printed %q", out)
	}
	var js map[string]any
	if err := json.Unmarshal([]byte(mustCtl(t, exitOK, e, "cancel", "n-1", "-o", "json").stdout), &js); err != nil ||
		js["sent"] != 3.0 || js["retryCancelled"] != 1.0 {
		t.Errorf("cancel -o json = %v (%v), want sent 3, retryCancelled 1", js, err)
	}
	if r := mustCtl(t, exitFailure, e, "cancel", "delivered"); !strings.Contains(r.stderr, "FailedPrecondition") {
		t.Errorf("cancel of a final notification: %s", r.stderr)
	}
	mustCtl(t, exitNotFound, e, "cancel", missingID)
	mustCtl(t, exitUsage, e, "cancel")
	mustCtl(t, exitAuth, env(addr, ""), "cancel", "n-1")
}

// TestParseAt: --at is in the future and at most 30 days ahead, as Publish accepts it,
// whether a duration, a time or a date; the limit itself is allowed.
func TestParseAt(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	limit := now.Add(30 * 24 * time.Hour)
	tests := []struct {
		in   string
		want time.Time // zero: refused
	}{
		{"90m", now.Add(90 * time.Minute)},
		{"30d", limit},
		{"720h", limit},
		{"720h0m1s", time.Time{}},
		{"31d", time.Time{}},
		{limit.Format(time.RFC3339), limit},
		{limit.Add(time.Second).Format(time.RFC3339), time.Time{}},
		{now.Format(time.RFC3339), time.Time{}},
		{"-1h", time.Time{}},
		// A date is its midnight in now's zone, as --since reads it; today's has passed.
		{"2026-05-02", time.Date(2026, 5, 2, 0, 0, 0, 0, time.UTC)},
		{"2026-05-31", time.Date(2026, 5, 31, 0, 0, 0, 0, time.UTC)},
		{"2026-06-01", time.Time{}},
		{"2026-05-01", time.Time{}},
		{"2026-5-2", time.Time{}},
	}
	for _, tt := range tests {
		ts, err := parseAt(tt.in, now)
		switch {
		case tt.want.IsZero() && err == nil:
			t.Errorf("parseAt(%q) = %v, want a usage error", tt.in, ts.AsTime())
		case !tt.want.IsZero() && (err != nil || !ts.AsTime().Equal(tt.want)):
			t.Errorf("parseAt(%q) = %v, %v; want %v", tt.in, ts.AsTime(), err, tt.want)
		}
		if _, usage := err.(usageError); err != nil && !usage {
			t.Errorf("parseAt(%q): %v is not a usage error", tt.in, err)
		}
	}
}

// TestPublishExampleAtIsAccepted: every --at in publish's examples is one parseAt accepts
// today. The help showed --at 2027-06-01T18:00:00Z, refused (more than 30 days ahead) when
// copied on 2026-11-30; a fixed time goes stale, a duration does not.
func TestPublishExampleAtIsAccepted(t *testing.T) {
	t.Parallel()
	root := (&cli{getenv: func(string) string { return "" }, out: io.Discard, errOut: io.Discard}).rootCommand(nil)
	publish, _, err := root.Find([]string{"publish"})
	if err != nil {
		t.Fatal(err)
	}
	ats := regexp.MustCompile(`--at (\S+)`).FindAllStringSubmatch(publish.Example, -1)
	if len(ats) == 0 {
		t.Fatalf("no --at in publish's examples:\n%s", publish.Example)
	}
	for _, m := range ats {
		if _, err := parseAt(m[1], time.Now()); err != nil {
			t.Errorf("publish's example --at %s: %v", m[1], err)
		}
	}
}

// TestDurationFlagsTakeDays: --ttl and --at take whole days ("7d") as --since and --until
// do; they were refused before ("invalid argument \"7d\" for \"--ttl\"").
func TestDurationFlagsTakeDays(t *testing.T) {
	t.Parallel()
	f, addr := startFake(t)
	before := time.Now()
	mustCtl(t, exitOK, env(addr, "publisher"), "publish", "--user", "ana", "--title", "t", "--ttl", "7d", "--at", "2d")
	if len(f.publishes) != 1 {
		t.Fatalf("%d publishes, want 1", len(f.publishes))
	}
	opts := f.publishes[0].GetOptions()
	if got := opts.GetTtl().AsDuration(); got != 7*24*time.Hour {
		t.Errorf("--ttl 7d sent a TTL of %v, want 168h", got)
	}
	if at := opts.GetSendAt().AsTime(); at.Before(before.Add(48*time.Hour)) || at.After(time.Now().Add(48*time.Hour)) {
		t.Errorf("--at 2d sent send_at %v, want 48 h after the call (%v)", at, before)
	}
	// The limit itself is accepted, as Publish accepts it.
	mustCtl(t, exitOK, env(addr, "publisher"), "publish", "--user", "ana", "--title", "t", "--ttl", "28d")
	if len(f.publishes) != 2 || f.publishes[1].GetOptions().GetTtl().AsDuration() != maxTTL {
		t.Errorf("--ttl 28d: %d publishes, the last with TTL %v; want 2, the last with 672h", len(f.publishes), f.publishes[len(f.publishes)-1].GetOptions().GetTtl().AsDuration())
	}
	r := mustCtl(t, exitUsage, env(addr, "publisher"), "publish", "--user", "ana", "--title", "t", "--ttl", "7x")
	if !strings.Contains(r.stderr, `"7x" for "--ttl"`) || !strings.Contains(r.stderr, "7d") {
		t.Errorf("--ttl 7x: stderr %q, want the flag named and the accepted forms", r.stderr)
	}
}

// TestEmptyFiltersSayWhy: a filter that selects nothing because of a value nothing has (a
// mistyped dead-letter reason or notification type: open sets, so not refused) says so on
// stderr, with the values that are there; one that selects nothing for another reason
// (everything already replayed, dead letters naming no notification) says that. It said
// only "0 notifications", exit 0. A filter that selects something, or nothing for no
// such reason, adds nothing.
func TestEmptyFiltersSayWhy(t *testing.T) {
	t.Parallel()
	f, addr := startFake(t)
	at := func(minutes int) *timestamppb.Timestamp {
		return timestamppb.New(created.Add(time.Duration(minutes) * time.Minute))
	}
	f.deadLetters = []*notifyv1.DeadLetter{
		{Id: 1, NotificationId: "01890a5d-0000-7000-8000-000000000001", Reason: "retries_exhausted", CreateTime: at(1)},
		{Id: 2, NotificationId: "01890a5d-0000-7000-8000-000000000002", Reason: "permanent_error", CreateTime: at(2), ReplayTime: at(3)},
		{Id: 3, Reason: "undecodable", CreateTime: at(3)},
		{Id: 4, NotificationId: "01890a5d-0000-7000-8000-000000000004", Reason: "retries_exhausted", CreateTime: at(4)},
	}
	f.notifications = []*notifyv1.Notification{
		notification("01890a5d-0000-7000-8000-000000000001"), notification("01890a5d-0000-7000-8000-000000000002"),
		{Id: "01890a5d-0000-7000-8000-000000000003", Type: "comment.liked", CreateTime: timestamppb.New(created),
			Status: notifyv1.NotificationStatus_NOTIFICATION_STATUS_DELIVERED},
	}
	e := env(addr, "admin")
	before := created.Format(time.RFC3339)
	tests := []struct {
		args   []string
		stderr string // "": no hint
	}{
		{[]string{"replay", "--dead", "--reason", "bogus"},
			`notifyctl: no dead letters with reason "bogus"; the reasons there: retries_exhausted (2), permanent_error (1), undecodable (1)`},
		{[]string{"dead", "list", "--reason", "bogus", "--since", before},
			`notifyctl: no dead letters with reason "bogus" (--since ` + before + `); the reasons there: retries_exhausted (2), permanent_error (1), undecodable (1)`},
		{[]string{"dead", "list", "--reason", "bogus", "--until", before},
			`notifyctl: no dead letters at all (--until ` + before + `), whatever their reason`},
		{[]string{"replay", "--dead", "--reason", "permanent_error"},
			`notifyctl: the dead letters with reason "permanent_error" were all replayed already; --include-replayed replays them again`},
		{[]string{"dead", "list", "--reason", "permanent_error", "--unreplayed"},
			`notifyctl: the dead letters with reason "permanent_error" were all replayed already; leave out --unreplayed to list them`},
		{[]string{"dead", "list", "--reason", "undecodable", "--replayed"},
			`notifyctl: none of the dead letters with reason "undecodable" was replayed yet; leave out --replayed to list them`},
		{[]string{"replay", "--dead", "--reason", "undecodable"},
			`notifyctl: the dead letters with reason "undecodable" name no notification (messages that could not be attributed to one): nothing to replay; notifyctl dead list --reason undecodable shows them`},
		{[]string{"list", "--type", "order.shiped"},
			`notifyctl: no notifications of type "order.shiped"; the types there: order.shipped (2), comment.liked (1)`},
		{[]string{"list", "--type", "order.shiped", "--status", "failed", "--until", before},
			`notifyctl: no notifications at all (--until ` + before + `), whatever their type`},
		// Statuses are a closed set, refused when unknown (TestUsageErrorsExitTwoWithoutAServer),
		// and taken as the API and README spell them too.
		{[]string{"list", "--status", "DELIVERED", "--type", "order.shipped"}, ""},
		{[]string{"list", "--status", "NOTIFICATION_STATUS_DELIVERED", "--type", "order.shipped"}, ""},
		// Matches, or nothing for a reason of its own: no hint.
		{[]string{"replay", "--dead", "--reason", "retries_exhausted"}, ""},
		{[]string{"dead", "list", "--reason", "retries_exhausted"}, ""},
		{[]string{"list", "--type", "comment.liked", "--status", "failed"}, ""},
		{[]string{"dead", "list", "--since", "1h"}, ""},
	}
	for _, tt := range tests {
		for _, output := range []string{"table", "json"} {
			args := append(slices.Clone(tt.args), "-o", output)
			r := mustCtl(t, exitOK, e, args...)
			if tt.stderr == "" && strings.Contains(r.stderr, "notifyctl:") || tt.stderr != "" && !strings.Contains(r.stderr, tt.stderr+"\n") {
				t.Errorf("notifyctl %s: stderr\n%s\nwant %q", strings.Join(args, " "), r.stderr, tt.stderr)
			}
			if output == "json" && !json.Valid([]byte(r.stdout)) {
				t.Errorf("notifyctl %s: stdout is not JSON:\n%s", strings.Join(args, " "), r.stdout)
			}
		}
	}

	// More than a page of them: the reasons are those of the newest 1000.
	f2, addr2 := startFake(t)
	for i := range 1001 {
		f2.deadLetters = append(f2.deadLetters, &notifyv1.DeadLetter{Id: int64(i), Reason: "delivery_limit", CreateTime: at(i)})
	}
	r := mustCtl(t, exitOK, env(addr2, "admin"), "dead", "list", "--reason", "delivery-limit")
	if want := `notifyctl: no dead letters with reason "delivery-limit"; the reasons of the newest 1000 there: delivery_limit (1000)` + "\n"; !strings.Contains(r.stderr, want) {
		t.Errorf("stderr\n%s\nwant %q", r.stderr, want)
	}
}

// TestGetWaitSaysWhenItRanOut: get --wait that runs out while the notification is still
// pending prints it as it is and says so on stderr (it printed "status pending" as if that
// were the answer); a notification that settles in time adds nothing.
func TestGetWaitSaysWhenItRanOut(t *testing.T) {
	t.Parallel()
	_, addr := startFake(t)
	r := mustCtl(t, exitOK, env(addr, "admin"), "get", "--wait", "300ms", pendingID)
	if !strings.Contains(r.stdout, "status pending") || !strings.Contains(r.stderr, "notifyctl: still pending after --wait 300ms\n") {
		t.Errorf("stdout:\n%s\nstderr:\n%s\nwant the notification and a word that the wait ran out", r.stdout, r.stderr)
	}
	r = mustCtl(t, exitOK, env(addr, "admin"), "get", "--wait", "10s", "x")
	if !strings.Contains(r.stdout, "status failed") || r.stderr != "" {
		t.Errorf("stdout:\n%s\nstderr:\n%s\nwant the notification and nothing on stderr", r.stdout, r.stderr)
	}
}

// TestEnumFlagsTakeTheAPIsSpelling: --priority, --platform, --role (and --status) take their
// values as the tables print them, in any case, and as the API and README spell them
// (PRIORITY_HIGH, PLATFORM_IOS, ROLE_ADMIN); they were refused but for the lowercase word.
func TestEnumFlagsTakeTheAPIsSpelling(t *testing.T) {
	t.Parallel()
	f, addr := startFake(t)
	e := env(addr, "admin")
	for _, p := range []string{"HIGH", "PRIORITY_HIGH", "High"} {
		mustCtl(t, exitOK, e, "publish", "--user", "u", "--title", "t", "--priority", p)
	}
	for _, p := range []string{"IOS", "PLATFORM_IOS"} {
		mustCtl(t, exitOK, e, "devices", "register", "--user", "u", "--device", "d", "--token", "t", "--platform", p)
	}
	for _, r := range []string{"PUBLISHER", "ROLE_PUBLISHER"} {
		mustCtl(t, exitOK, e, "keys", "create", "k-"+r, "--role", r)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, p := range f.publishes {
		if p.GetOptions().GetPriority() != notifyv1.Priority_PRIORITY_HIGH {
			t.Errorf("priority %v, want high", p.GetOptions().GetPriority())
		}
	}
	for _, r := range f.registers {
		if r.GetPlatform() != notifyv1.Platform_PLATFORM_IOS {
			t.Errorf("platform %v, want ios", r.GetPlatform())
		}
	}
	for _, k := range f.keyCreates {
		if k.GetRole() != notifyv1.Role_ROLE_PUBLISHER {
			t.Errorf("role %v, want publisher", k.GetRole())
		}
	}
	if len(f.publishes) != 3 || len(f.registers) != 2 || len(f.keyCreates) != 2 {
		t.Errorf("%d publishes, %d registrations, %d keys; want 3, 2, 2", len(f.publishes), len(f.registers), len(f.keyCreates))
	}
}

// TestInterrupted: Ctrl-C (the context main gives run ends) while a command waits exits 130,
// as shells expect of SIGINT, saying so; it printed "notifyctl: context canceled", exit 1.
func TestInterrupted(t *testing.T) {
	t.Parallel()
	_, addr := startFake(t)
	ctx, cancel := context.WithCancel(t.Context())
	time.AfterFunc(300*time.Millisecond, cancel)
	var out, errOut strings.Builder
	e := env(addr, "admin")
	code := run(ctx, []string{"get", "--wait", "1m", pendingID}, func(k string) string { return e[k] }, &out, &errOut)
	if code != exitInterrupted || errOut.String() != "notifyctl: interrupted\n" {
		t.Errorf("exit %d, stderr %q; want %d and \"notifyctl: interrupted\"", code, errOut.String(), exitInterrupted)
	}
}

// TestKeysOwnRateLimit: keys create --publish-rate and --publish-burst give a key its own
// limits (CreateAPIKey's publish_rate, 0 unlimited, and publish_burst), which README
// documents and notifyctl could not set; keys list shows them.
func TestKeysOwnRateLimit(t *testing.T) {
	t.Parallel()
	f, addr := startFake(t)
	e := env(addr, "admin")
	mustCtl(t, exitOK, e, "keys", "create", "limited", "--role", "publisher", "--publish-rate", "50", "--publish-burst", "100")
	mustCtl(t, exitOK, e, "keys", "create", "unlimited", "--role", "publisher", "--publish-rate", "0")
	mustCtl(t, exitOK, e, "keys", "create", "plain", "--role", "publisher")
	f.mu.Lock()
	got := map[string][2]*int32{}
	for _, req := range f.keyCreates {
		got[req.GetName()] = [2]*int32{req.PublishRate, req.PublishBurst}
	}
	f.mu.Unlock()
	want := map[string][2]*int32{"limited": {proto.Int32(50), proto.Int32(100)}, "unlimited": {proto.Int32(0), nil}, "plain": {nil, nil}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("CreateAPIKey publish_rate, publish_burst (-want +got):\n%s", diff)
	}
	listed := rows(mustCtl(t, exitOK, e, "keys", "list").stdout)
	if len(listed) != 3 || !strings.Contains(listed[0], " RATE BURST ") || !strings.Contains(listed[1], " default default ") ||
		!strings.Contains(listed[2], " 50/s 100 ") {
		t.Errorf("keys list, want RATE and BURST columns: the defaults for ops, 50/s and 100 for shop:\n%s", strings.Join(listed, "\n"))
	}
	for _, args := range [][]string{{"--publish-rate", "-1"}, {"--publish-burst", "0"}} {
		r := mustCtl(t, exitUsage, e, append([]string{"keys", "create", "bad", "--role", "publisher"}, args...)...)
		if !strings.Contains(r.stderr, args[0]) {
			t.Errorf("keys create %s: stderr %q does not name the flag", strings.Join(args, " "), r.stderr)
		}
	}
}

// TestParseWhenDateIsLocalMidnight: a date names midnight where notifyctl runs (the zone
// it shows times in), not UTC's.
func TestParseWhenDateIsLocalMidnight(t *testing.T) {
	t.Parallel()
	zone := time.FixedZone("UTC+2", 2*60*60)
	ts, err := parseWhen("since", "2026-04-30", time.Date(2026, 5, 1, 12, 0, 0, 0, zone))
	if err != nil {
		t.Fatal(err)
	}
	if want := time.Date(2026, 4, 29, 22, 0, 0, 0, time.UTC); !ts.AsTime().Equal(want) {
		t.Errorf("--since 2026-04-30 at UTC+2 = %v, want %v", ts.AsTime(), want)
	}
}

func TestOneTypo(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		a, b string
		want bool
	}{
		{"user", "users", true},   // one more
		{"title", "tittle", true}, // one more, inside
		{"user", "usr", true},     // one less
		{"type", "tpye", true},    // swapped
		{"type", "typo", true},    // changed
		{"type", "type", false},   // the same
		{"type", "ytpo", false},   // two
		{"title", "tilte", true},  // swapped, inside
		{"title", "tiltes", false},
		{"ttl", "title", false},
		{"", "a", true},
	} {
		if got := oneTypo(tc.a, tc.b); got != tc.want {
			t.Errorf("oneTypo(%q, %q) = %v, want %v", tc.a, tc.b, got, tc.want)
		}
		if got := oneTypo(tc.b, tc.a); got != tc.want {
			t.Errorf("oneTypo(%q, %q) = %v, want %v", tc.b, tc.a, got, tc.want)
		}
	}
}

// TestListsGoOnWithPageToken: a list that stops at --limit prints, after its rows, the command
// line of the next page (its flags and --page-token), and that line lists the rows after the
// first page and no further hint on the last one. -o json carries the same token.
func TestListsGoOnWithPageToken(t *testing.T) {
	t.Parallel()
	f, addr := startFake(t)
	f.notifications = []*notifyv1.Notification{
		notification("01890a5d-0000-7000-8000-000000000001"), notification("01890a5d-0000-7000-8000-000000000002"),
		notification("01890a5d-0000-7000-8000-000000000003"),
	}
	f.deadLetters = []*notifyv1.DeadLetter{
		{Id: 1, Reason: "retries_exhausted", CreateTime: timestamppb.New(created)},
		{Id: 2, Reason: "retries_exhausted", CreateTime: timestamppb.New(created)},
		{Id: 3, Reason: "retries_exhausted", CreateTime: timestamppb.New(created)},
	}
	e := env(addr, "admin")
	tests := []struct {
		first    []string
		more     string // the hint after the first page
		lastRow  string // the first field of the next page's only row
		jsonPath string // the list's JSON name
	}{
		{[]string{"list", "--type", "order.shipped", "--limit", "2"},
			"more: notifyctl list --limit 2 --type order.shipped --page-token at-2", "01890a5d-0000-7000-8000-000000000003", "notifications"},
		{[]string{"dead", "list", "--reason", "retries_exhausted", "--limit", "2"},
			"more: notifyctl dead list --limit 2 --reason retries_exhausted --page-token at-2", "3", "deadLetters"},
		{[]string{"devices", "list", "--user", "o'brien", "--active=false", "--limit", "2"},
			`more: notifyctl devices list --active=false --limit 2 --user 'o'\''brien' --page-token 2`, "browser", "devices"},
	}
	for _, tt := range tests {
		r := mustCtl(t, exitOK, e, tt.first...)
		// The hint has the flags given in name order (pflag's), shell-quoted, then --page-token.
		if !strings.Contains(r.stderr, tt.more+"\n") {
			t.Errorf("%s: stderr does not give the next page as %q:\n%s", strings.Join(tt.first, " "), tt.more, r.stderr)
			continue
		}
		_, token, _ := strings.Cut(tt.more, "--page-token ")
		words := append(slices.Clip(tt.first), "--page-token", token)
		next := mustCtl(t, exitOK, e, words...)
		lines := strings.Split(strings.TrimSpace(next.stdout), "\n")
		if len(lines) != 2 || strings.Fields(lines[1])[0] != tt.lastRow {
			t.Errorf("notifyctl %s:\n%s\nwant the header and the row of %s", strings.Join(words, " "), next.stdout, tt.lastRow)
		}
		if strings.Contains(next.stderr, "more:") {
			t.Errorf("notifyctl %s: a hint on the last page:\n%s", strings.Join(words, " "), next.stderr)
		}
		js := mustCtl(t, exitOK, e, append(tt.first, "-o", "json")...)
		var page map[string]any
		if err := json.Unmarshal([]byte(js.stdout), &page); err != nil {
			t.Fatal(err)
		}
		if tok, _ := page["nextPageToken"].(string); tok == "" || !strings.HasSuffix(tt.more, "--page-token "+tok) {
			t.Errorf("%s -o json: nextPageToken %q, want the hint's", strings.Join(tt.first, " "), page["nextPageToken"])
		}
	}
}

// TestScheduledShowsSendAt: get's header and list's table show when a scheduled notification
// is to be sent; list has the SEND AT column only when a row has a send time.
func TestScheduledShowsSendAt(t *testing.T) {
	t.Parallel()
	_, addr := startFake(t)
	e := env(addr, "admin")
	want := stamp(timestamppb.New(sendAt))
	if out := mustCtl(t, exitOK, e, "get", scheduledID).stdout; !strings.Contains(strings.SplitN(out, "\n", 2)[0], "  send at "+want) {
		t.Errorf("get of a scheduled notification: header does not say send at %s:\n%s", want, out)
	}
	if out := mustCtl(t, exitOK, e, "get", "01890a5d-0000-7000-8000-000000000001").stdout; strings.Contains(out, "send at") {
		t.Errorf("get of a notification sent at once shows a send time:\n%s", out)
	}
	if out := mustCtl(t, exitOK, e, "list").stdout; strings.Contains(out, "SEND AT") {
		t.Errorf("list with no scheduled notification has a SEND AT column:\n%s", out)
	}

	scheduled := notification(scheduledID)
	scheduled.SendTime = timestamppb.New(sendAt)
	f, addr := startFake(t) // a fake of its own: the server reads f.notifications unlocked
	f.notifications = []*notifyv1.Notification{scheduled, notification("01890a5d-0000-7000-8000-000000000001")}
	lines := strings.Split(strings.TrimSpace(mustCtl(t, exitOK, env(addr, "admin"), "list").stdout), "\n")
	if len(lines) != 3 {
		t.Fatalf("list: %q, want a header and two rows", lines)
	}
	header, first, second := strings.Fields(lines[0]), strings.Fields(lines[1]), strings.Fields(lines[2])
	if header[2] != "SEND" || header[3] != "AT" || first[2] != want || second[2] != "-" {
		t.Errorf("list:\n%s\nwant SEND AT third: %s for the scheduled row, - for the other", strings.Join(lines, "\n"), want)
	}
}

// TestListCountsAddUp: list has a column for every count get shows, so a row's counts add up to
// its TOKENS (a cancelled notification's cancelled and skipped tokens too).
func TestListCountsAddUp(t *testing.T) {
	t.Parallel()
	f, addr := startFake(t)
	f.notifications = []*notifyv1.Notification{{
		Id: "01890a5d-0000-7000-8000-000000000001", Type: "order.shipped", Caller: "shop", CreateTime: timestamppb.New(created),
		Status: notifyv1.NotificationStatus_NOTIFICATION_STATUS_CANCELLED, ReplayCount: 9,
		Counts: &notifyv1.DeliveryCounts{Total: 36, Delivered: 1, Invalid: 2, Retrying: 3, Failed: 4, Expired: 5, Skipped: 6, Cancelled: 7, Pending: 8},
	}}
	lines := strings.Split(strings.TrimSpace(mustCtl(t, exitOK, env(addr, "admin"), "list").stdout), "\n")
	if len(lines) != 2 {
		t.Fatalf("list: %q, want a header and a row", lines)
	}
	header, row := strings.Fields(lines[0]), strings.Fields(lines[1])
	want := map[string]string{"TOKENS": "36", "DELIVERED": "1", "INVALID": "2", "RETRYING": "3", "FAILED": "4", "EXPIRED": "5",
		"SKIPPED": "6", "CANCELLED": "7", "PENDING": "8", "REPLAYS": "9"}
	got := map[string]string{}
	for i, h := range header {
		if _, ok := want[h]; ok && i < len(row) {
			got[h] = row[i]
		}
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("list columns (-want +got):\n%s\n%s", diff, strings.Join(lines, "\n"))
	}
}
