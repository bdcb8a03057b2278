package main

import (
	"context"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

func TestRunServesUntilCancelled(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // run listens on it again; another process taking it first would fail the test loudly

	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, func(k string) string {
			return map[string]string{"FCM_EMULATOR_ADDR": addr, "LOG_LEVEL": "error"}[k]
		})
	}()

	url := "http://" + addr + "/healthz"
	deadline := time.Now().Add(5 * time.Second)
	for {
		resp, err := http.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("GET /healthz = %d", resp.StatusCode)
			}
			break
		}
		select {
		case err := <-done:
			t.Fatalf("run returned before serving: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("emulator not serving after 5 s: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("run after cancel: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("run did not return within 10 s of cancel")
	}
}

func TestRunRejectsBadConfig(t *testing.T) {
	t.Parallel()
	err := run(t.Context(), func(k string) string {
		return map[string]string{"FCM_EMULATOR_LATENCY": "slow"}[k]
	})
	if err == nil {
		t.Fatal("run with FCM_EMULATOR_LATENCY=slow: no error")
	}
}

// TestRunNamesTheVariable: an address that cannot be listened on is reported as
// FCM_EMULATOR_ADDR (it said only "listen on …").
func TestRunNamesTheVariable(t *testing.T) {
	t.Parallel()
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { taken.Close() })
	addr := taken.Addr().String()
	err = run(t.Context(), func(k string) string { return map[string]string{"FCM_EMULATOR_ADDR": addr, "LOG_LEVEL": "error"}[k] })
	if err == nil || !strings.Contains(err.Error(), "FCM_EMULATOR_ADDR: listen on "+addr+": ") {
		t.Errorf("run on a taken address = %v, want an error naming FCM_EMULATOR_ADDR", err)
	}
}
