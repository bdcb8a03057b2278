package main

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestCompareOrder(t *testing.T) {
	t.Parallel()
	if diff := cmp.Diff([]int{0, 1, 1, 0, 0, 1}, compareOrder(3)); diff != "" {
		t.Errorf("three pairs (-want +got):\n%s", diff)
	}
}

// fakeBin is a directory with a file named after each service, as -bin and -compare want.
func fakeBin(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for _, s := range serviceNames {
		if err := os.WriteFile(filepath.Join(dir, s), nil, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// Each run of a comparison takes the flags given, but those the comparison sets itself.
func TestCompareRunArgs(t *testing.T) {
	t.Parallel()
	a, b := fakeBin(t), fakeBin(t)
	getenv := func(string) string { return "" }
	cfg, err := loadConfig([]string{"-phases", "sustain", "--compare", a + "," + b, "-pairs=3", "-out", t.TempDir(),
		"-sustain-notifications", "30000"}, getenv, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Compare != [2]string{a, b} || cfg.Pairs != 3 {
		t.Errorf("compare %q, pairs %d; want %q, %q and 3", cfg.Compare, cfg.Pairs, a, b)
	}
	if diff := cmp.Diff([]string{"-phases=sustain", "-sustain-notifications=30000"}, cfg.RunArgs); diff != "" {
		t.Errorf("the runs' flags (-want +got):\n%s", diff)
	}

	_, err = loadConfig([]string{"-compare", a + "," + b, "-bin", a}, getenv, nil, nil)
	if err == nil || !strings.Contains(err.Error(), "-bin: not with -compare") {
		t.Errorf("-bin with -compare: %v, want it refused", err)
	}
}

func TestPrintComparison(t *testing.T) {
	t.Parallel()
	run := func(pipeline, machine, publish float64) *results {
		return &results{
			Publish: &publishResult{PerSecond: publish},
			Sustain: &sustainResult{Finished: true, PerSecond: pipeline, CPUMSPerNotification: map[string]float64{
				"machine": machine, groupPostgres: machine / 3,
			}},
			Reference:          &sustainResult{Finished: true, PerSecond: 4000, CPUMSPerNotification: map[string]float64{"machine": 0.4}},
			SustainVsReference: ratio(pipeline, 4000),
		}
	}
	runs := [2][]*results{
		{run(1230, 1.54, 1711), run(1220, 1.53, 1650)},
		{run(1219, 1.52, 1746), run(1311, 1.42, 1700)},
	}
	var out strings.Builder
	printComparison(&out, [2]string{"/a", "/b"}, runs, "/runs")
	for _, line := range []string{
		`(?m)^A: /a \(2 runs\)$`,
		`(?m)^pipeline notifications/s\s+1,230, 1,220\s+1,219, 1,311\s+1\.03×$`,
		`(?m)^pipeline CPU ms/notification, machine\s+1\.540, 1\.530\s+1\.520, 1\.420\s+0\.96×$`,
		`(?m)^  postgres\s+0\.513, 0\.510\s+0\.507, 0\.473\s+0\.96×$`,
		`(?m)^Publish accepted/s\s+1,711, 1,650\s+1,746, 1,700\s+1\.03×$`,
		`(?m)^pipeline vs in-memory push server\s+0\.308, 0\.305\s+0\.305, 0\.328\s+1\.03×$`,
		`(?m)^in-memory push server CPU ms/notification, machine\s+0\.400, 0\.400\s+0\.400, 0\.400\s+1\.00×$`,
	} {
		if !regexp.MustCompile(line).MatchString(out.String()) {
			t.Errorf("comparison does not match %s:\n%s", line, out.String())
		}
	}
	// What no run measured is left out.
	if strings.Contains(out.String(), "fan-out") || strings.Contains(out.String(), "PublishBatch") {
		t.Errorf("figures no run measured are shown:\n%s", out.String())
	}
}
