package main

import (
	"bufio"
	"context"
	"debug/buildinfo"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"
)

// results is everything one run measured; it is written as JSON for comparison across
// commits.
type results struct {
	RunID           string    `json:"run_id"`
	Started         time.Time `json:"started"`
	DurationSeconds float64   `json:"duration_seconds"`
	Machine         machine   `json:"machine"`
	Settings        settings  `json:"settings"`

	// The baselines run at the start and again at the end, because the machine may be
	// shared; the figures are held against the mean of the runs.
	Broker      []brokerBaseline `json:"raw_broker,omitempty"`
	FCMEdge     []fcmBaseline    `json:"raw_fcm_edge,omitempty"`
	BrokerRate  float64          `json:"raw_broker_msgs_per_s"`
	FCMEdgeRate float64          `json:"raw_fcm_edge_tokens_per_s"`
	// FanoutEdge is the raw FCM edge measured again right before the fan-out, which is held
	// against it (see fanoutBase).
	FanoutEdge *fcmBaseline `json:"raw_fcm_edge_before_fanout,omitempty"`

	Publish *publishResult `json:"publish,omitempty"`
	Batch   *batchResult   `json:"publish_batch,omitempty"`
	Fanout  *fanoutResult  `json:"fanout,omitempty"`
	Latency *latencyResult `json:"latency,omitempty"`
	Sustain *sustainResult `json:"sustain,omitempty"`
	// Reference is the sustain phase's load against the in-memory push server, in the same
	// run; the sustain phase's rates are also given as ratios of its rates.
	Reference          *sustainResult `json:"reference,omitempty"`
	SustainVsReference float64        `json:"sustain_vs_reference,omitempty"`
	// SustainPublishVsReference is the sustain phase's Publish accepted/s over the reference's.
	SustainPublishVsReference float64      `json:"sustain_publish_vs_reference,omitempty"`
	Paced                     *pacedResult `json:"paced,omitempty"`
	Apps                      *appsResult  `json:"apps,omitempty"`

	Resources  []resource `json:"resources"`
	CPUByPhase []phaseCPU `json:"cpu_by_phase"`
	Targets    []target   `json:"targets"`
	Failures   []string   `json:"failures"`
	Warnings   []string   `json:"warnings"`
	LogDir     string     `json:"log_dir"`
}

// machine is what the figures depend on besides the code.
type machine struct {
	Cores      int    `json:"cores"`
	CPUModel   string `json:"cpu_model"`
	MemoryMB   int64  `json:"memory_mb"`
	Kernel     string `json:"kernel"`
	GoVersion  string `json:"go_version"` // the services' toolchain, read from the producer binary
	RabbitMQ   string `json:"rabbitmq"`
	PostgreSQL string `json:"postgresql"`
	GitCommit  string `json:"git_commit"`
	// GitDirty counts files differing from the commit: the binaries were built from them.
	GitDirty    int    `json:"git_dirty_files"`
	LoadAverage string `json:"load_average_at_start"`
}

// settings are the knobs of the run.
type settings struct {
	PublishClients         int               `json:"publish_clients"`
	PublishSeconds         float64           `json:"publish_seconds"`
	WarmupSeconds          float64           `json:"warmup_seconds"`
	FanoutDevices          int               `json:"fanout_devices"`
	History                int               `json:"history_notifications"`
	LatencyRate            int               `json:"latency_rate"`
	LatencySeconds         float64           `json:"latency_seconds"`
	BatchClients           int               `json:"batch_clients"`
	BatchNotifications     int               `json:"batch_notifications"`
	SustainNotifications   int               `json:"sustain_notifications"`
	PacedQuota             int               `json:"paced_quota_flag,omitempty"`
	AppsDevices            int               `json:"apps_devices"`
	BaselineSeconds        float64           `json:"baseline_seconds"`
	FCMConcurrentMulticast int               `json:"fcm_concurrent_multicasts"`
	APIKey                 bool              `json:"api_key"`
	StatusEventsOff        bool              `json:"status_events_off,omitempty"`
	ServiceEnv             map[string]string `json:"service_env"`
	Database               string            `json:"database"`
	Topology               string            `json:"topology"`
}

// target is one of the goals the figures are held against.
type target struct {
	Name  string  `json:"name"`
	Goal  string  `json:"goal"`
	Value float64 `json:"value"`
	Unit  string  `json:"unit"`
	Met   bool    `json:"met"`
}

// findings are what went wrong: a failure (lost or failed deliveries, failed calls, a
// crash) fails the run; a warning is shown and recorded.
type findings struct {
	mu                 sync.Mutex // the apps phase's broadcasts report at once
	failures, warnings []string
}

func (f *findings) fail(msg string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failures = append(f.failures, msg)
}

func (f *findings) warn(msg string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.warnings = append(f.warnings, msg)
}

func machineFacts(ctx context.Context, st *stack) machine {
	m := machine{Cores: runtime.NumCPU(), GoVersion: runtime.Version() + " (bench)"}
	if bi, err := buildinfo.ReadFile(filepath.Join(st.cfg.BinDir, "producer")); err == nil {
		m.GoVersion = bi.GoVersion
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	m.CPUModel = procField("/proc/cpuinfo", "model name")
	if f := strings.Fields(procField("/proc/meminfo", "MemTotal")); len(f) == 2 {
		if kb, err := strconv.ParseInt(f[0], 10, 64); err == nil {
			m.MemoryMB = kb / 1024
		}
	}
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		m.LoadAverage = strings.Join(strings.Fields(string(b))[:3], " ")
	}
	if v, err := st.mgmt.version(ctx); err == nil {
		m.RabbitMQ = v
	} else {
		m.RabbitMQ = "unknown: " + err.Error()
	}
	if err := st.pool.QueryRow(ctx, "SHOW server_version").Scan(&m.PostgreSQL); err != nil {
		m.PostgreSQL = "unknown: " + err.Error()
	}
	if out, err := exec.CommandContext(ctx, "git", "rev-parse", "HEAD").Output(); err == nil {
		m.GitCommit = strings.TrimSpace(string(out))
	}
	if out, err := exec.CommandContext(ctx, "git", "status", "--porcelain").Output(); err == nil {
		if lines := strings.TrimRight(string(out), "\n"); lines != "" {
			m.GitDirty = strings.Count(lines, "\n") + 1 // one line per file
		}
	}
	return m
}

// procField returns the value of the first "name: value" line of a /proc file.
func procField(path, name string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok && strings.TrimSpace(k) == name {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

const (
	latencyTargetRate = 1000
	latencyTargetName = "Publish → FCM p50 at 1,000/s"
	latencyP99Name    = "Publish → FCM p99 at 1,000/s"
	latencyHoldName   = "pipeline holds 1,000/s"
)

// Target names the report looks up.
const (
	fanoutTargetName  = "fan-out token deliveries vs raw FCM edge"
	batchTargetName   = "PublishBatch notifications"
	relayTargetName   = "outbox relay behind PublishBatch, rows"
	sustainTargetName = "pipeline sustained, one-token notifications"
)

const appsLeakName = "two apps at once: sends to the other app's project"

// pacedTargetName names a paced broadcast's targets.
func pacedTargetName(r pacedRun) string {
	if r.App == "default" {
		return fmt.Sprintf("paced broadcast, %s, vs quota", senders(r.Senders))
	}
	return fmt.Sprintf("two apps at once: %s vs its quota", r.App)
}

func senders(n int) string {
	if n == 1 {
		return "1 sender"
	}
	return fmt.Sprintf("%d senders", n)
}

// fanoutBase is the raw FCM edge the fan-out is held against: the one measured right before
// it, when the baselines ran, else the run's mean. The machine's speed moves from minute to
// minute: at 510a3d8 the start and end runs agreed (13,784 and 13,994 tokens/s) while, during
// the fan-out between them, the emulator spent 21% more CPU per token than in those runs
// (74 against 61 µs) for the same requests, and the fan-out came out at 0.64×.
func (r *results) fanoutBase() float64 {
	if r.FanoutEdge != nil && r.FanoutEdge.PerSecond > 0 {
		return r.FanoutEdge.PerSecond
	}
	return r.FCMEdgeRate
}

// evaluate holds the figures against the targets.
func (r *results) evaluate() {
	add := func(name, goal, unit string, value float64, met bool) {
		r.Targets = append(r.Targets, target{Name: name, Goal: goal, Value: value, Unit: unit, Met: met})
	}
	if base := r.fanoutBase(); r.Fanout != nil && base > 0 {
		v := ratio(r.Fanout.PerSecond, base)
		add(fanoutTargetName, "≥ 0.8×", "×", v, v >= 0.8)
	}
	if p := r.Publish; p != nil {
		add("Publish accepted", "≥ 5,000/s", "/s", p.PerSecond, p.PerSecond >= 5000)
		add("Publish p99", "< 25 ms", "ms", p.Latency.P99MS, p.Latency.Count > 0 && p.Latency.P99MS < 25)
	}
	if b := r.Batch; b != nil {
		add(batchTargetName, "≥ 20,000/s", "/s", b.PerSecond, b.PerSecond >= 20_000)
		// Issue 11: the relay keeps up at 5,000 rows/s or more. Its rate here runs from
		// the first call until the outbox is empty, so it is bounded by how fast the rows
		// arrive as well as by how fast the relay moves them.
		add(relayTargetName, "≥ 5,000/s", "/s", b.Relay.PerSecond, b.Relay.Drained && b.Relay.PerSecond >= 5000)
	}
	// The latency targets are stated at 1,000/s; at another rate there is nothing to hold.
	if l := r.Latency; l != nil && l.TargetRate == latencyTargetRate {
		add(latencyTargetName, "< 50 ms at 1,000/s", "ms", l.EndToEnd.P50MS, l.EndToEnd.Count > 0 && l.EndToEnd.P50MS < 50)
		add(latencyP99Name, "< 250 ms at 1,000/s", "ms", l.EndToEnd.P99MS, l.EndToEnd.Count > 0 && l.EndToEnd.P99MS < 250)
		// Receipts run from the first call to the last receipt, so the tail's latency
		// lowers the rate a little even when the pipeline keeps up.
		add(latencyHoldName, "≥ 950/s delivered", "/s", l.DeliveredPerSecond, l.DeliveredPerSecond >= 950)
	}
	if s := r.Sustain; s != nil {
		add(sustainTargetName, "≥ 2,000/s", "/s", s.PerSecond, s.Finished && s.PerSecond >= 2000)
		// A ratio, not a target: the targets stay absolute.
		if ref := r.Reference; ref != nil && ref.Finished && s.Finished {
			r.SustainVsReference = ratio(s.PerSecond, ref.PerSecond)
			r.SustainPublishVsReference = ratio(s.PublishPerSecond, ref.PublishPerSecond)
		}
	}
	if p := r.Paced; p != nil {
		for _, run := range p.Runs {
			name := pacedTargetName(run)
			add(name, "≥ 0.9× quota", "×", run.VsQuota, run.Seconds > 0 && run.VsQuota >= pacedTarget)
			add(name+": 429s", "none", "count", float64(run.Throttled), run.Seconds > 0 && run.Throttled == 0)
		}
	}
	if a := r.Apps; a != nil {
		for _, run := range a.Runs {
			name := pacedTargetName(run)
			add(name, "≥ 0.9× its quota", "×", run.VsQuota, run.Seconds > 0 && run.VsQuota >= pacedTarget)
			add(name+": 429s", "none", "count", float64(run.Throttled), run.Seconds > 0 && run.Throttled == 0)
		}
		add(appsLeakName, "none", "count", float64(a.Leaked), a.Leaked == 0)
	}
	for _, s := range r.Resources {
		if s.StartedLater {
			continue // no reading at rest
		}
		add(s.Service+" RSS at rest", "≤ 64 MB", "MB", s.RestRSSMB, s.RestRSSMB > 0 && s.RestRSSMB <= 64)
	}
}

// write stores the results as <dir>/<run id>.json and returns the path.
func (r *results) write(dir string) (string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return "", err
	}
	path := filepath.Join(dir, r.RunID+".json")
	return path, os.WriteFile(path, append(b, '\n'), 0o644)
}
