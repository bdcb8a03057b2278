package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

// compareOrder is the order of a comparison's runs, 0 for A and 1 for B: A B, B A, A B, …
// pair after pair, so that a machine speeding up or slowing down through the comparison
// favours neither side.
func compareOrder(pairs int) []int {
	order := make([]int, 0, 2*pairs)
	for i := range pairs {
		if i%2 == 0 {
			order = append(order, 0, 1)
		} else {
			order = append(order, 1, 0)
		}
	}
	return order
}

// compareRuns runs the chosen phases with the service binaries of cfg.Compare[0] (A) and
// cfg.Compare[1] (B) in turn, cfg.Pairs times each, each run a bench of its own (this
// binary with -bin and -out set, and the flags given), and prints the figures of every run
// side by side with the ratio of B's median to A's. A run that fails is reported and its
// figures, when it wrote any, still shown; the comparison then ends with an error.
func compareRuns(ctx context.Context, cfg config, stdout, stderr io.Writer) error {
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find this binary to run the comparison's runs: %w", err)
	}
	dir := filepath.Join(cfg.OutDir, "compare-"+time.Now().UTC().Format("20060102t150405"))
	order := compareOrder(cfg.Pairs)
	var runs [2][]*results
	var failed []error
	for i, side := range order {
		label := "AB"[side : side+1]
		out := filepath.Join(dir, fmt.Sprintf("%02d-%s", i+1, label))
		if err := os.MkdirAll(out, 0o755); err != nil {
			return err
		}
		fmt.Fprintf(stderr, "compare: run %d of %d, %s (%s)\n", i+1, len(order), label, cfg.Compare[side])
		report, err := os.Create(filepath.Join(out, "report.txt"))
		if err != nil {
			return err
		}
		cmd := exec.CommandContext(ctx, self, append(slices.Clone(cfg.RunArgs), "-bin="+cfg.Compare[side], "-out="+out)...)
		cmd.Stdout, cmd.Stderr = report, stderr
		// Interrupted, a run stops as the bench does on Ctrl-C: it stops its services and
		// drops its database and topology.
		cmd.Cancel = func() error { return cmd.Process.Signal(os.Interrupt) }
		cmd.WaitDelay = time.Minute
		runErr := cmd.Run()
		report.Close()
		if ctx.Err() != nil {
			return ctx.Err()
		}
		r, readErr := readRun(out)
		if r != nil {
			runs[side] = append(runs[side], r)
		}
		if err := errors.Join(runErr, readErr); err != nil {
			failed = append(failed, fmt.Errorf("run %d (%s): %w; its table is in %s", i+1, cfg.Compare[side], err, report.Name()))
		}
	}
	printComparison(stdout, cfg.Compare, runs, dir)
	return errors.Join(failed...)
}

// readRun reads the results a run wrote to its own directory.
func readRun(dir string) (*results, error) {
	paths, err := filepath.Glob(filepath.Join(dir, "*.json"))
	if err != nil || len(paths) != 1 {
		return nil, fmt.Errorf("want one results file in %s, found %d", dir, len(paths))
	}
	b, err := os.ReadFile(paths[0])
	if err != nil {
		return nil, err
	}
	var r results
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("read %s: %w", paths[0], err)
	}
	return &r, nil
}

// compareFigure is one figure of a comparison: its name, and its value in a run's results
// (ok false when the run did not measure it).
type compareFigure struct {
	name string
	get  func(r *results) (float64, bool)
}

// sustainCPU is the sustain phase's CPU ms per notification of one component.
func sustainCPU(component string) func(r *results) (float64, bool) {
	return func(r *results) (float64, bool) {
		if r.Sustain == nil {
			return 0, false
		}
		v, ok := r.Sustain.CPUMSPerNotification[component]
		return v, ok
	}
}

var compareFigures = []compareFigure{
	{"Publish accepted/s", func(r *results) (float64, bool) {
		return figure(r.Publish != nil, func() float64 { return r.Publish.PerSecond })
	}},
	{"Publish p99 ms", func(r *results) (float64, bool) {
		return figure(r.Publish != nil && r.Publish.Latency.Count > 0, func() float64 { return r.Publish.Latency.P99MS })
	}},
	{"PublishBatch notifications/s", func(r *results) (float64, bool) {
		return figure(r.Batch != nil, func() float64 { return r.Batch.PerSecond })
	}},
	{"outbox relay behind PublishBatch, rows/s", func(r *results) (float64, bool) {
		return figure(r.Batch != nil && r.Batch.Relay.Drained, func() float64 { return r.Batch.Relay.PerSecond })
	}},
	{"Publish → FCM p50 ms", func(r *results) (float64, bool) {
		return figure(r.Latency != nil && r.Latency.EndToEnd.Count > 0, func() float64 { return r.Latency.EndToEnd.P50MS })
	}},
	{"Publish → FCM p99 ms", func(r *results) (float64, bool) {
		return figure(r.Latency != nil && r.Latency.EndToEnd.Count > 0, func() float64 { return r.Latency.EndToEnd.P99MS })
	}},
	{"in-memory push server notifications/s", func(r *results) (float64, bool) {
		return figure(r.Reference != nil && r.Reference.Finished, func() float64 { return r.Reference.PerSecond })
	}},
	{"in-memory push server CPU ms/notification, machine", func(r *results) (float64, bool) {
		return figure(r.Reference != nil && r.Reference.Finished, func() float64 {
			return r.Reference.CPUMSPerNotification[groupMachine]
		})
	}},
	{"pipeline notifications/s", func(r *results) (float64, bool) {
		return figure(r.Sustain != nil && r.Sustain.Finished, func() float64 { return r.Sustain.PerSecond })
	}},
	// The same-run ratio: the reference runs in the minute before the pipeline, so it
	// takes out much of the machine's drift between runs.
	{"pipeline vs in-memory push server", func(r *results) (float64, bool) {
		return figure(r.SustainVsReference > 0, func() float64 { return r.SustainVsReference })
	}},
	{"pipeline CPU ms/notification, machine", sustainCPU(groupMachine)},
	{"  postgres", sustainCPU(groupPostgres)},
	{"  producer", sustainCPU("producer")},
	{"  sender", sustainCPU("sender")},
	{"  rabbitmq", sustainCPU(groupRabbitMQ)},
	{"  bench", sustainCPU(groupBench)},
	{"fan-out tokens/s", func(r *results) (float64, bool) {
		return figure(r.Fanout != nil && r.Fanout.Seconds > 0, func() float64 { return r.Fanout.PerSecond })
	}},
	{"fan-out vs raw FCM edge", func(r *results) (float64, bool) {
		return figure(r.Fanout != nil && r.Fanout.Seconds > 0 && r.fanoutBase() > 0, func() float64 {
			return ratio(r.Fanout.PerSecond, r.fanoutBase())
		})
	}},
}

// figure is v() when ok, without calling it otherwise (it may read what is nil then).
func figure(ok bool, v func() float64) (float64, bool) {
	if !ok {
		return 0, false
	}
	return v(), true
}

// printComparison prints each figure some run measured: A's runs and B's, in the order they
// ran, and B's median over A's.
func printComparison(w io.Writer, dirs [2]string, runs [2][]*results, dir string) {
	for side, name := range []string{"A", "B"} {
		n := fmt.Sprintf("%d runs", len(runs[side]))
		if len(runs[side]) == 1 {
			n = "1 run"
		}
		fmt.Fprintf(w, "%s: %s (%s)\n", name, dirs[side], n)
	}
	fmt.Fprintf(w, "runs in %s\n\n", dir)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "FIGURE\tA\tB\tB/A (MEDIANS)")
	for _, f := range compareFigures {
		var vals [2][]float64
		for side := range 2 {
			for _, r := range runs[side] {
				if v, ok := f.get(r); ok {
					vals[side] = append(vals[side], v)
				}
			}
		}
		if len(vals[0]) == 0 && len(vals[1]) == 0 {
			continue
		}
		change := ""
		if a, b := median(vals[0]), median(vals[1]); len(vals[0]) > 0 && len(vals[1]) > 0 && a != 0 {
			change = fmt.Sprintf("%.2f×", b/a)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", f.name, figures(vals[0]), figures(vals[1]), change)
	}
	tw.Flush()
}

// figures prints values as the report prints figures: thousands grouped above 100, three
// decimals below 10 (CPU ms), one otherwise.
func figures(vs []float64) string {
	if len(vs) == 0 {
		return "—"
	}
	out := make([]string, len(vs))
	for i, v := range vs {
		switch {
		case v >= 100:
			out[i] = thousands(v)
		case v < 10:
			out[i] = fmt.Sprintf("%.3f", v)
		default:
			out[i] = fmt.Sprintf("%.1f", v)
		}
	}
	return strings.Join(out, ", ")
}

// median is the middle value of vs (the mean of the two middle ones for an even count).
func median(vs []float64) float64 {
	if len(vs) == 0 {
		return 0
	}
	s := slices.Sorted(slices.Values(vs))
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}
