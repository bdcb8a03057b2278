package main

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"time"
)

// referencePhase is the sustain phase against the in-memory push server (memserver.go)
// instead of notify: the same devices (one per user, registered through RegisterDevices),
// the same one-token notifications from the same number of Publish clients, the same
// emulator, timed from the first call until the server has every FCM answer. The sustain
// figure is shown as a ratio of it: what this machine allows a push server with no
// database and no broker, in the same minutes.
func referencePhase(ctx context.Context, st *stack, emu *emulator, prog *progress, cpu *cpuTracker, f *findings) (*sustainResult, error) {
	prog.set("reference: starting the in-memory push server", nil)
	if err := st.startService(ctx, memserverBinary, memserverBinary, nil); err != nil {
		return nil, err
	}
	var health string
	for _, s := range st.services {
		if s.name == memserverBinary && !s.exited() {
			health = s.healthURL
		}
	}
	mem := &memClient{url: strings.TrimSuffix(health, "/healthz") + "/stats", hc: &http.Client{Timeout: 10 * time.Second}}
	res, err := oneTokenPhase(ctx, st, emu, prog, cpu, f, oneTokenTarget{
		phase: phaseReference,
		dial:  st.dialReference,
		unfinished: func(ctx context.Context) (int64, error) {
			s, err := mem.stats(ctx)
			return s.Accepted - s.Finished, err
		},
		delivered: func(ctx context.Context) (int64, error) {
			s, err := mem.stats(ctx)
			if err == nil && s.FailedTokens > 0 {
				f.fail(fmt.Sprintf("reference: the in-memory push server failed to send %d tokens: %v", s.FailedTokens, s.Failures))
			}
			return s.Delivered, err
		},
	})
	prog.set("reference: stopping the in-memory push server", nil)
	if stopErr := st.stopService(memserverBinary); stopErr != nil {
		f.fail("reference: " + stopErr.Error())
	}
	cpu.mark("reference: stop")
	return res, err
}

// memClient reads the in-memory push server's counters.
type memClient struct {
	url string
	hc  *http.Client
}

func (m *memClient) stats(ctx context.Context) (memStats, error) {
	var s memStats
	if err := doJSON(ctx, m.hc, http.MethodGet, m.url, nil, nil, &s); err != nil {
		return s, fmt.Errorf("read the in-memory push server's counters: %w", err)
	}
	return s, nil
}
