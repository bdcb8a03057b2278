package main

import (
	"encoding/json"
	"math"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestSummarizeNearestRank(t *testing.T) {
	t.Parallel()
	var ds []time.Duration
	for i := 100; i >= 1; i-- { // unsorted on purpose
		ds = append(ds, time.Duration(i)*time.Millisecond)
	}
	got := summarize(ds)
	want := distribution{Count: 100, MeanMS: 50.5, P50MS: 50, P95MS: 95, P99MS: 99, MaxMS: 100}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("summarize (-want +got):\n%s", diff)
	}
	if got := summarize([]time.Duration{7 * time.Millisecond}); got.P50MS != 7 || got.P99MS != 7 || got.MaxMS != 7 {
		t.Errorf("one sample: %+v, want every percentile 7 ms", got)
	}
	if got := summarize(nil); got != (distribution{}) {
		t.Errorf("no samples: %+v, want zero", got)
	}
}

func TestParseStatus(t *testing.T) {
	t.Parallel()
	status := "Name:\tproducer\nVmPeak:\t 1300000 kB\nVmHWM:\t   61234 kB\nVmRSS:\t   20480 kB\nThreads:\t9\n"
	rss, hwm, err := parseStatus([]byte(status))
	if err != nil || rss != 20480*1024 || hwm != 61234*1024 {
		t.Errorf("parseStatus = %d, %d, %v; want %d, %d", rss, hwm, err, 20480*1024, 61234*1024)
	}
	if _, _, err := parseStatus([]byte("Name:\tkthreadd\nState:\tS (sleeping)\n")); err == nil {
		t.Error("parseStatus of a kernel thread: no error")
	}
}

func TestParseStatCPU(t *testing.T) {
	t.Parallel()
	// A command name with spaces and parentheses; utime 250 and stime 50 ticks.
	stat := "4242 (my (odd) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 9 0 1000 0 0"
	got, err := parseStatCPU([]byte(stat))
	if err != nil || got != 3*time.Second {
		t.Errorf("parseStatCPU = %v, %v; want 3s", got, err)
	}
	if _, err := parseStatCPU([]byte("4242 (short) S 1 2")); err == nil {
		t.Error("parseStatCPU of a truncated line: no error")
	}
}

func TestParseMachineCPU(t *testing.T) {
	t.Parallel()
	busy, total, err := parseMachineCPU([]byte("cpu  100 5 45 800 50 0 0 0 0 0\ncpu0 50 2 20 400 25 0 0 0 0 0\n"))
	if err != nil || busy != 1500*time.Millisecond || total != 10*time.Second {
		t.Errorf("parseMachineCPU = %v, %v, %v; want 1.5s busy of 10s", busy, total, err)
	}
}

// TestReadProcSelf checks the parsers against this very process.
func TestReadProcSelf(t *testing.T) {
	t.Parallel()
	if _, err := os.Stat("/proc/self/status"); err != nil {
		t.Skip("no /proc")
	}
	ps, err := readProc(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if ps.RSS <= 0 || ps.HWM < ps.RSS {
		t.Errorf("readProc(self) = %+v: want 0 < RSS ≤ HWM", ps)
	}
}

func TestDeviceToken(t *testing.T) {
	t.Parallel()
	a, b := deviceToken("fanout", 1), deviceToken("fanout", 2)
	if len(a) != tokenLength || len(b) != tokenLength || a == b {
		t.Errorf("tokens %q and %q: want distinct, %d characters", a, b, tokenLength)
	}
	if deviceToken("latency", 1) == a {
		t.Error("two phases share a token")
	}
}

func TestThousands(t *testing.T) {
	t.Parallel()
	for in, want := range map[float64]string{0: "0", 999: "999", 1000: "1,000", 39112.4: "39,112", 1234567: "1,234,567", -4500: "-4,500"} {
		if got := thousands(in); got != want {
			t.Errorf("thousands(%v) = %q, want %q", in, got, want)
		}
	}
}

func TestStageResult(t *testing.T) {
	t.Parallel()
	start := time.Unix(1000, 0)
	lastCall := start.Add(10 * time.Second)
	var s stage
	s.observe(5, start.Add(time.Second))
	s.observe(300, start.Add(5*time.Second))
	s.observe(0, start.Add(12*time.Second))
	s.observe(0, start.Add(13*time.Second))
	got := s.result(50_000, start, lastCall)
	want := drain{Items: 50_000, Seconds: 12, PerSecond: 4166.7, MaxBacklog: 300, AfterLastCallSeconds: 2, Drained: true}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("drained after the last call (-want +got):\n%s", diff)
	}

	// Empty before the last call returned and still empty after it: it kept up.
	var k stage
	k.observe(0, start.Add(9*time.Second))
	k.observe(0, start.Add(11*time.Second))
	if got := k.result(100, start, lastCall); !got.Drained || got.Seconds != 10 || got.AfterLastCallSeconds != 0 {
		t.Errorf("kept up: %+v, want drained at the last call", got)
	}

	// Never read empty after the last call: not drained.
	var n stage
	n.observe(0, start.Add(9*time.Second))
	n.observe(7, start.Add(11*time.Second))
	if got := n.result(100, start, lastCall); got.Drained {
		t.Errorf("backlog left: %+v, want not drained", got)
	}
}

// Every target is held against its figure and a missed one says MISSED with the figure.
func TestTargetsReportMissed(t *testing.T) {
	t.Parallel()
	r := &results{
		Batch: &batchResult{PerSecond: 15_000, Clients: 4, Notifications: 50_000,
			Relay: drain{Items: 150_000, Seconds: 12, PerSecond: 12_500, Drained: true}},
		Publish: &publishResult{PerSecond: 6000, Latency: distribution{Count: 10, P99MS: 31}},
		Latency: &latencyResult{TargetRate: 1000, EndToEnd: distribution{Count: 10, P50MS: 20, P99MS: 300}, DeliveredPerSecond: 990},
		Sustain: &sustainResult{Finished: true, PerSecond: 1500, CPUMSPerNotification: map[string]float64{"producer": 0.25}},
	}
	r.evaluate()
	got := map[string]bool{}
	for _, tg := range r.Targets {
		got[tg.Name] = tg.Met
	}
	want := map[string]bool{
		"Publish accepted": true, "Publish p99": false, batchTargetName: false, relayTargetName: true,
		latencyTargetName: true, latencyP99Name: false, latencyHoldName: true, sustainTargetName: false,
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("targets met (-want +got):\n%s", diff)
	}
	var out strings.Builder
	r.report(&out, "x.json")
	for _, line := range []string{`(?m)^PublishBatch notifications\s+15,000/s\s+≥ 20,000/s\s+MISSED$`,
		`(?m)^\s+outbox relay\s+12,500 rows/s\s.*150,000 rows, .*; ≥ 5,000/s\s+met$`, `(?m)^Publish → FCM p99 at 1,000/s\s+300 ms`,
		`(?m)^\s*sustain \(notify\)\s+0\.000\s+0\.250\s`} {
		if !regexp.MustCompile(line).MatchString(out.String()) {
			t.Errorf("report does not match %s:\n%s", line, out.String())
		}
	}
	if n := strings.Count(out.String(), "MISSED"); n < 4 {
		t.Errorf("report says MISSED %d times, want at least once per missed target (4):\n%s", n, out.String())
	}
}

// TestFanoutHeldAgainstItsOwnBaseline: with a raw FCM edge measured right before the
// fan-out, the target is held against that one, and the report gives the ratio to the run's
// mean beside it; without it, against the mean.
func TestFanoutHeldAgainstItsOwnBaseline(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		before *fcmBaseline
		value  float64
		met    bool
		line   string
	}{
		{"measured before it", &fcmBaseline{Concurrency: 4, PerSecond: 11_000, Tokens: 55_000}, 0.818, true,
			`(?m)^fan-out: broadcast to 100,000 tokens.*\s9,000 tokens/s\s+0\.82× raw FCM edge before it; 0\.64× the run's mean\s+≥ 0\.8×  met$`},
		{"baselines only at the ends", nil, 0.643, false,
			`(?m)^fan-out: broadcast to 100,000 tokens.*\s9,000 tokens/s\s+0\.64× raw FCM edge\s+≥ 0\.8×  MISSED$`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := &results{FCMEdgeRate: 14_000, FanoutEdge: tc.before,
				Fanout: &fanoutResult{PerSecond: 9000, Seconds: 11.1}}
			r.Settings.FanoutDevices = 100_000
			r.evaluate()
			if len(r.Targets) != 1 || r.Targets[0].Name != fanoutTargetName ||
				math.Abs(r.Targets[0].Value-tc.value) > 0.001 || r.Targets[0].Met != tc.met {
				t.Fatalf("targets = %+v, want %s %.3f met=%v", r.Targets, fanoutTargetName, tc.value, tc.met)
			}
			var out strings.Builder
			r.report(&out, "x.json")
			if !regexp.MustCompile(tc.line).MatchString(out.String()) {
				t.Errorf("report does not match %s:\n%s", tc.line, out.String())
			}
		})
	}
}

// TestCommandLine: -h and --help print the flags and the environment and exit 0; a wrong flag
// or a stray argument is a usage error, exit 2, before anything starts.
func TestCommandLine(t *testing.T) {
	t.Parallel()
	getenv := func(string) string { return "" }
	for _, tc := range []struct {
		args     []string
		code     int
		stdoutRe string
		stderrRe string
	}{
		{args: []string{"-h"}, code: 0, stdoutRe: `(?s)Usage:.*-fanout-devices.*DATABASE_URL.*AMQP_URL.*RABBITMQ_MANAGEMENT_URL.*SEND_`, stderrRe: `^$`},
		{args: []string{"--help"}, code: 0, stdoutRe: `(?s)Usage:.*-phases`, stderrRe: `^$`},
		{args: []string{"-help"}, code: 0, stdoutRe: `(?s)Usage:.*-phases`, stderrRe: `^$`},
		// It was `unexpected arguments ["help"]`, exit 2.
		{args: []string{"help"}, code: 0, stdoutRe: `(?s)Usage:.*-phases`, stderrRe: `^$`},
		{args: []string{"--fanout-devcies", "5"}, code: 2, stdoutRe: `^$`, stderrRe: `^bench: unknown flag: --fanout-devcies\nRun 'bench -h' for usage.\n$`},
		{args: []string{"extra"}, code: 2, stdoutRe: `^$`, stderrRe: `^bench: unexpected arguments \["extra"\]\n`},
		{args: []string{"-publish-clients", "x"}, code: 2, stdoutRe: `^$`, stderrRe: `invalid value "x" for flag -publish-clients`},
		// A wrong value was exit 1, as if the bench had run and failed.
		{args: []string{"-phases", "publsh"}, code: 2, stdoutRe: `^$`, stderrRe: `^bench: -phases: unknown phase "publsh" \(want some of baselines,`},
		{args: []string{"-publish-clients", "0"}, code: 2, stdoutRe: `^$`, stderrRe: `-publish-clients: must be positive, got 0`},
		{args: []string{"-compare", "onlyone"}, code: 2, stdoutRe: `^$`, stderrRe: `-compare: want two directories of service binaries, DIR_A,DIR_B, got "onlyone"`},
		{args: []string{"-compare", "/nonexistent-a,/nonexistent-b", "-pairs", "0"}, code: 2, stdoutRe: `^$`,
			stderrRe: `(?s)-compare: stat /nonexistent-a/producer: no such file or directory \(run .make build.\).*-compare: stat /nonexistent-b/producer.*-pairs: must be positive, got 0`},
	} {
		var stdout, stderr strings.Builder
		code := mainCode(t.Context(), tc.args, getenv, &stdout, &stderr)
		if code != tc.code || !regexp.MustCompile(tc.stdoutRe).MatchString(stdout.String()) || !regexp.MustCompile(tc.stderrRe).MatchString(stderr.String()) {
			t.Errorf("bench %q: exit %d (want %d)\nstdout:\n%s\nstderr:\n%s\nwant stdout matching %s, stderr matching %s", tc.args, code, tc.code, stdout.String(), stderr.String(), tc.stdoutRe, tc.stderrRe)
		}
	}
}

func TestEmulatorProjectDeltas(t *testing.T) {
	t.Parallel()
	before := emulatorStats{Projects: map[string]projectStats{
		"a": {Requests: 10, Delivered: 9, Failed: map[string]int64{"QUOTA_EXCEEDED": 1}},
		"x": {Requests: 5, Delivered: 5},
	}}
	after := emulatorStats{Projects: map[string]projectStats{
		"a": {Requests: 30, Delivered: 27, Failed: map[string]int64{"QUOTA_EXCEEDED": 3}},
		"b": {Requests: 4, Delivered: 4},
		"x": {Requests: 7, Delivered: 7},
	}}
	got := after.Projects["a"].since(before.Projects["a"])
	want := projectStats{Requests: 20, Delivered: 18, Failed: map[string]int64{"QUOTA_EXCEEDED": 2}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("since (-want +got):\n%s", diff)
	}
	// Project b appeared between the readings; x received 2 more.
	if n := sendsElsewhere(before, after, "a"); n != 6 {
		t.Errorf("sendsElsewhere(a) = %d, want 6 (4 to b, 2 to x)", n)
	}
	if n := sendsElsewhere(before, after, "a", "b", "x"); n != 0 {
		t.Errorf("sendsElsewhere(a, b, x) = %d, want 0", n)
	}
}

func TestPacedTargets(t *testing.T) {
	t.Parallel()
	r := &results{
		Paced: &pacedResult{Runs: []pacedRun{
			{App: "default", Senders: 1, Seconds: 20, VsQuota: 0.93},
			{App: "default", Senders: 2, Seconds: 21, VsQuota: 0.95, Throttled: 3},
		}},
		Apps: &appsResult{Runs: []pacedRun{
			{App: "bench-a", Senders: 2, Seconds: 18, VsQuota: 0.89},
			{App: "bench-b", Senders: 2}, // did not finish
		}, Leaked: 0},
		Resources: []resource{{Service: "sender", RestRSSMB: 30}, {Service: "sender-paced", StartedLater: true}},
	}
	r.evaluate()
	got := map[string]bool{}
	for _, tg := range r.Targets {
		got[tg.Name] = tg.Met
	}
	want := map[string]bool{
		"paced broadcast, 1 sender, vs quota": true, "paced broadcast, 1 sender, vs quota: 429s": true,
		"paced broadcast, 2 senders, vs quota": true, "paced broadcast, 2 senders, vs quota: 429s": false,
		"two apps at once: bench-a vs its quota": false, "two apps at once: bench-a vs its quota: 429s": true,
		"two apps at once: bench-b vs its quota": false, "two apps at once: bench-b vs its quota: 429s": false,
		appsLeakName: true, "sender RSS at rest": true,
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("targets met (-want +got):\n%s", diff)
	}
}

// The sustain phase is shown as a ratio of the in-memory push server of the same run, in
// the report and the JSON, and its absolute target stays as it is.
func TestSustainVsReference(t *testing.T) {
	t.Parallel()
	r := &results{
		Sustain:   &sustainResult{Finished: true, Notifications: 20_000, Clients: 32, PerSecond: 1000, PublishPerSecond: 1100},
		Reference: &sustainResult{Finished: true, Notifications: 20_000, Clients: 32, PerSecond: 2500, PublishPerSecond: 2750},
	}
	r.evaluate()
	if r.SustainVsReference != 0.4 || r.SustainPublishVsReference != 0.4 {
		t.Errorf("sustain vs reference %v, Publish %v; want 0.4 and 0.4", r.SustainVsReference, r.SustainPublishVsReference)
	}
	if len(r.Targets) != 1 || r.Targets[0].Name != sustainTargetName || r.Targets[0].Met {
		t.Errorf("targets %+v; want only the sustain phase's absolute one, missed", r.Targets)
	}
	var out strings.Builder
	r.report(&out, "x.json")
	for _, line := range []string{`(?m)^in-memory push server, 20,000 one-token notifications.*\s2,500 notifications/s\s+same-run reference\s`,
		`(?m)^pipeline, 20,000 one-token notifications.*\s1,000 notifications/s\s+0\.40× in-memory push server\s+≥ 2,000/s\s+MISSED$`,
		`(?m)^\s+Publish accepted them at\s+1,100/s\s+0\.40× in-memory push server's\s`} {
		if !regexp.MustCompile(line).MatchString(out.String()) {
			t.Errorf("report does not match %s:\n%s", line, out.String())
		}
	}
	b, err := json.Marshal(r)
	if err != nil || !strings.Contains(string(b), `"sustain_vs_reference":0.4,`) {
		t.Errorf("JSON %s (%v): want sustain_vs_reference 0.4", b, err)
	}
}
