package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"
)

// noisyShare is the share of the machine's CPU going elsewhere above which a phase is
// flagged as disturbed by other work.
const noisyShare = 0.15

// restSettle is how long the services idle after start-up before their RSS at rest is read.
const restSettle = 3 * time.Second

// run starts the stack, runs the phases, prints the table and writes the JSON. It returns
// an error when the bench could not run, or ran and found failures.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	cfg, err := loadConfig(args, getenv, os.Environ(), stdout)
	if err != nil {
		return err
	}
	if cfg.Compare[0] != "" {
		return compareRuns(ctx, cfg, stdout, stderr)
	}
	started := time.Now()
	runID := started.UTC().Format("20060102t150405")
	if cfg.LogDir == "" {
		cfg.LogDir = filepath.Join("tmp", "bench", runID)
	}
	if abs, err := filepath.Abs(cfg.LogDir); err == nil {
		cfg.LogDir = abs
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))

	prog := newProgress(stderr)
	progCtx, stopProgress := context.WithCancel(ctx)
	progDone := make(chan struct{})
	go func() { prog.run(progCtx); close(progDone) }()
	stopProg := func() { stopProgress(); <-progDone }
	defer stopProg()

	st, err := newStack(ctx, cfg, log, runID)
	if err != nil {
		return err
	}
	defer st.close()
	prog.logf("database %s, topology %s, service logs in %s", st.dbName, st.topology, cfg.LogDir)

	res := &results{
		RunID:   runID,
		Started: started.UTC(),
		LogDir:  cfg.LogDir,
		Settings: settings{
			PublishClients: cfg.PublishClients, PublishSeconds: cfg.PublishDuration.Seconds(), WarmupSeconds: cfg.Warmup.Seconds(),
			FanoutDevices: cfg.FanoutDevices, History: cfg.History, LatencyRate: cfg.LatencyRate, LatencySeconds: cfg.LatencyDuration.Seconds(),
			BaselineSeconds: cfg.BaselineDuration.Seconds(), FCMConcurrentMulticast: cfg.FCMConcurrency,
			BatchClients: cfg.BatchClients, BatchNotifications: cfg.BatchNotifications, SustainNotifications: cfg.SustainNotifications,
			PacedQuota: cfg.PacedQuota, AppsDevices: cfg.AppsDevices, StatusEventsOff: cfg.StatusEventsOff,
			ServiceEnv: cfg.ServiceEnv, Database: st.dbName, Topology: st.topology,
		},
	}
	f := &findings{}
	res.Machine = machineFacts(ctx, st)

	prog.set("writing history", nil)
	if err := st.seedHistory(ctx, cfg.History); err != nil {
		return err
	}
	prog.set("starting services", nil)
	if err := st.start(ctx); err != nil {
		return err
	}
	if res.Settings.APIKey, err = authenticate(ctx, st); err != nil {
		return err
	}
	emu := newEmulator(st.emulatorURL)
	cpu := newCPUTracker(func() []*service { return st.services }, st.backends)

	prog.set("idle: settling for RSS at rest", nil)
	if !sleep(ctx, restSettle) {
		return ctx.Err()
	}
	rest := map[string]procStat{}
	for _, s := range st.services {
		if ps, err := readProc(s.pid()); err == nil {
			rest[s.name] = ps
		}
	}
	cpu.mark("idle after start-up")

	if err := runPhases(ctx, st, emu, prog, cpu, res, f); err != nil {
		f.fail(err.Error())
	}

	for _, s := range st.services {
		if s.binary == memserverBinary {
			continue // the reference, not a service: its CPU is in its phase's figures
		}
		ps, err := readProc(s.pid())
		switch {
		case err == nil:
		case s.last != nil:
			ps = *s.last // replaced mid-run by the paced phases: as it was then
		default:
			continue // exited: reported as a crash
		}
		r := resource{
			Service: s.name, PID: s.pid(), PeakRSSMB: mb(ps.HWM), EndRSSMB: mb(ps.RSS),
			CPUSeconds: round(ps.CPU.Seconds(), 2), RestReadAt: restSettle.Seconds(), StoppedEarly: s.last != nil,
		}
		if at, ok := rest[s.name]; ok {
			r.RestRSSMB = mb(at.RSS)
		} else {
			r.StartedLater = true // no reading at rest: no RSS target
		}
		res.Resources = append(res.Resources, r)
	}
	res.CPUByPhase = cpu.phases
	for _, p := range cpu.phases {
		capacity := p.Seconds * float64(runtime.NumCPU())
		if p.Seconds >= 1 && p.CPU[groupOther] > noisyShare*capacity {
			what := "notify"
			if strings.HasPrefix(p.Phase, phaseReference+":") {
				what = "the in-memory push server"
			}
			f.warn(fmt.Sprintf("%s: %.0f%% of the machine's CPU time (%.1f s) went to processes outside the bench, its stack, the broker and its database: other work competed, so these figures understate %s",
				p.Phase, 100*p.CPU[groupOther]/capacity, p.CPU[groupOther], what))
		}
	}
	prog.set("stopping services", nil)
	for _, p := range st.stop() {
		f.fail(p)
	}
	stopProg()

	res.DurationSeconds = round(time.Since(started).Seconds(), 1)
	res.Failures, res.Warnings = f.failures, f.warnings
	res.evaluate()
	path, err := res.write(cfg.OutDir)
	if err != nil {
		return fmt.Errorf("write results: %w", err)
	}
	res.report(stdout, path)
	if len(res.Failures) > 0 {
		return fmt.Errorf("%d failures (listed above)", len(res.Failures))
	}
	return nil
}

// runPhases runs the selected phases in order and stops at the first one that cannot go on
// (an error, as opposed to findings, which are recorded and do not stop the run).
func runPhases(ctx context.Context, st *stack, emu *emulator, prog *progress, cpu *cpuTracker, res *results, f *findings) error {
	cfg := st.cfg
	check := func(phase string) error {
		if crashed := st.crashed(); len(crashed) > 0 {
			return fmt.Errorf("%s: %w: %v", phase, errServicesDown, crashed)
		}
		return ctx.Err()
	}

	if cfg.Phases[phaseBaselines] {
		if err := runBaselines(ctx, st, emu, prog, cpu, res, f, "start"); err != nil {
			return err
		}
		if err := check("baselines"); err != nil {
			return err
		}
	}

	if cfg.Phases[phasePublish] {
		p, err := publishPhase(ctx, st, prog)
		res.Publish = p
		if p != nil {
			prog.logf("publish: %s accepted/s, %s", thousands(p.PerSecond), dist(p.Latency))
			if n := sumErrors(p.Errors); n > 0 {
				f.fail(fmt.Sprintf("publish: %d Publish calls failed: %v", n, p.Errors))
			}
		}
		cpu.mark("publish + drain")
		if err != nil {
			return fmt.Errorf("publish phase: %w", err)
		}
		if err := check("publish"); err != nil {
			return err
		}
	}

	if cfg.Phases[phaseBatch] {
		b, err := batchPhase(ctx, st, prog)
		res.Batch = b
		if b != nil {
			prog.logf("publish batch: %s notifications/s accepted", thousands(b.PerSecond))
			if n := sumErrors(b.Errors); n > 0 {
				f.fail(fmt.Sprintf("publish batch: %d calls or requests failed: %v", n, b.Errors))
			}
		}
		cpu.mark("publish batch + drain")
		if err != nil {
			return fmt.Errorf("publish batch phase: %w", err)
		}
		if err := check("publish batch"); err != nil {
			return err
		}
	}

	if cfg.Phases[phaseLatency] {
		l, err := latencyPhase(ctx, st, emu, prog, cpu.mark, f)
		if err != nil {
			return fmt.Errorf("latency phase: %w", err)
		}
		res.Latency = l
		prog.logf("latency: Publish → FCM %s", dist(l.EndToEnd))
		cpu.mark("latency: drain")
		if err := check("latency"); err != nil {
			return err
		}
	}
	if cfg.Phases[phaseReference] {
		ref, err := referencePhase(ctx, st, emu, prog, cpu, f)
		if err != nil {
			return fmt.Errorf("reference phase: %w", err)
		}
		res.Reference = ref
		prog.logf("reference: in-memory push server %s one-token notifications/s end to end (Publish accepted %s/s)",
			thousands(ref.PerSecond), thousands(ref.PublishPerSecond))
		if err := check("reference"); err != nil {
			return err
		}
	}
	if cfg.Phases[phaseSustain] {
		su, err := sustainPhase(ctx, st, emu, prog, cpu, f)
		if err != nil {
			return fmt.Errorf("sustain phase: %w", err)
		}
		res.Sustain = su
		prog.logf("sustain: %s one-token notifications/s end to end (Publish accepted %s/s)", thousands(su.PerSecond), thousands(su.PublishPerSecond))
		if err := check("sustain"); err != nil {
			return err
		}
	}
	if cfg.Phases[phaseFanout] {
		if cfg.Phases[phaseBaselines] {
			e, err := fcmEdge(ctx, st, emu, prog, cpu, f, "before fan-out")
			if err != nil {
				return err
			}
			res.FanoutEdge = &e
		}
		fo, err := fanoutPhase(ctx, st, emu, prog, cpu.mark, f)
		if err != nil {
			return fmt.Errorf("fan-out phase: %w", err)
		}
		res.Fanout = fo
		prog.logf("fan-out: %s devices registered/s; %s tokens/s end to end", thousands(fo.Registration.PerSecond), thousands(fo.PerSecond))
		if err := check("fan-out"); err != nil {
			return err
		}
	}

	var pace *pacing
	if cfg.Phases[phasePaced] || cfg.Phases[phaseApps] {
		var err error
		prog.set("paced: replacing sender and retrier", nil)
		if pace, err = setupPacing(ctx, st, emu, res); err != nil {
			return fmt.Errorf("paced phases: %w", err)
		}
		prog.logf("paced: quota %s/min for the default app (%s); bench-a %s/min, bench-b %s/min", thousands(float64(pace.QuotaPerMinute["default"])),
			pace.Basis, thousands(float64(pace.QuotaPerMinute["bench-a"])), thousands(float64(pace.QuotaPerMinute["bench-b"])))
		cpu.mark("paced: start paced sender and retrier")
	}
	if cfg.Phases[phasePaced] {
		p, err := pacedPhase(ctx, st, emu, pace, prog, cpu.mark, f)
		if err != nil {
			return fmt.Errorf("paced phase: %w", err)
		}
		res.Paced = p
		for _, r := range p.Runs {
			prog.logf("paced, %s: %s tokens/s, %.2f× the quota, %d 429s", senders(r.Senders), thousands(r.PerSecond), r.VsQuota, r.Throttled)
		}
		if err := check("paced"); err != nil {
			return err
		}
	}
	if cfg.Phases[phaseApps] {
		a, err := appsPhase(ctx, st, emu, pace, prog, cpu.mark, f)
		if err != nil {
			return fmt.Errorf("apps phase: %w", err)
		}
		res.Apps = a
		for _, r := range a.Runs {
			prog.logf("apps: %s %s tokens/s, %.2f× its quota, %d 429s", r.App, thousands(r.PerSecond), r.VsQuota, r.Throttled)
		}
		if err := check("apps"); err != nil {
			return err
		}
	}

	if cfg.Phases[phaseBaselines] && (cfg.Phases[phasePublish] || cfg.Phases[phaseBatch] || cfg.Phases[phaseFanout] ||
		cfg.Phases[phaseLatency] || cfg.Phases[phaseReference] || cfg.Phases[phaseSustain] || cfg.Phases[phasePaced] || cfg.Phases[phaseApps]) {
		if err := runBaselines(ctx, st, emu, prog, cpu, res, f, "end"); err != nil {
			return err
		}
	}
	if ctx.Err() != nil {
		return errors.New("interrupted")
	}
	return nil
}

// baselineDrift is how far apart a baseline's start and end runs may be before the run is
// flagged: more means the machine's conditions changed while it ran.
const baselineDrift = 0.25

// runBaselines measures the raw broker and the raw FCM edge (again, at the end) and updates
// the rates the figures are held against.
func runBaselines(ctx context.Context, st *stack, emu *emulator, prog *progress, cpu *cpuTracker, res *results, f *findings, when string) error {
	b, err := rawBroker(ctx, st, prog)
	if err != nil {
		return fmt.Errorf("raw broker baseline (%s): %w", when, err)
	}
	res.Broker = append(res.Broker, b)
	prog.logf("raw broker (%s): %s msg/s", when, thousands(b.PerSecond))
	cpu.mark("baseline: raw broker (" + when + ")")

	e, err := fcmEdge(ctx, st, emu, prog, cpu, f, when)
	if err != nil {
		return err
	}
	res.FCMEdge = append(res.FCMEdge, e)

	var brokerRates, fcmRates []float64
	for _, b := range res.Broker {
		brokerRates = append(brokerRates, b.PerSecond)
	}
	for _, e := range res.FCMEdge {
		fcmRates = append(fcmRates, e.PerSecond)
	}
	res.BrokerRate, res.FCMEdgeRate = mean(brokerRates), mean(fcmRates)
	if len(brokerRates) > 1 {
		for _, bl := range []struct {
			name  string
			rates []float64
		}{{"raw broker", brokerRates}, {"raw FCM edge", fcmRates}} {
			name, rates := bl.name, bl.rates
			if spread := (slices.Max(rates) - slices.Min(rates)) / mean(rates); spread > baselineDrift {
				f.warn(fmt.Sprintf("%s: the start and end runs differ by %.0f%% (%s vs %s/s): the machine's conditions changed during the run",
					name, spread*100, thousands(rates[0]), thousands(rates[len(rates)-1])))
			}
		}
	}
	return nil
}

// fcmEdge measures the raw FCM edge (when: "start", "end", "before fan-out").
func fcmEdge(ctx context.Context, st *stack, emu *emulator, prog *progress, cpu *cpuTracker, f *findings, when string) (fcmBaseline, error) {
	e, err := rawFCM(ctx, st, emu, prog)
	if err != nil {
		return e, fmt.Errorf("raw FCM-edge baseline (%s): %w", when, err)
	}
	prog.logf("raw FCM edge (%s): %s tokens/s", when, thousands(e.PerSecond))
	if e.Failed > 0 || e.EmulatorDelivered != e.Tokens {
		f.fail(fmt.Sprintf("raw FCM edge (%s): %d tokens failed; the client counted %d delivered, the emulator %d",
			when, e.Failed, e.Tokens, e.EmulatorDelivered))
	}
	cpu.mark("baseline: raw FCM edge (" + when + ")")
	return e, nil
}

func mean(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	var sum float64
	for _, x := range xs {
		sum += x
	}
	return round(sum/float64(len(xs)), 1)
}

// sleep waits for d or until ctx ends, and reports whether the full time passed.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
