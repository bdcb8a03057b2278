package e2e

import (
	"maps"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	notifyv1 "notify/proto/gen/notify/v1"
)

// TestProducerGRPCMetrics: the producer's /metrics counts every RPC by method and code,
// calls refused for want of an API key included, times them, and shows every method at
// zero before its first call.
func TestProducerGRPCMetrics(t *testing.T) {
	s := newStack(t)
	producer := s.start("producer", nil)

	_, body := producer.get(t, "/metrics")
	for _, want := range []string{
		`grpc_server_handled_total{grpc_code="OK",grpc_method="Publish",grpc_service="notify.v1.NotificationService",grpc_type="unary"} 0`,
		`grpc_server_handled_total{grpc_code="Unavailable",grpc_method="Replay",grpc_service="notify.v1.AdminService",grpc_type="unary"} 0`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics before any call lacks\n%s", want)
		}
	}

	notifications, _, _ := s.clients()
	req := &notifyv1.PublishRequest{
		Type:       "e2e.metrics",
		Recipients: &notifyv1.Recipients{Target: &notifyv1.Recipients_UserIds{UserIds: &notifyv1.UserIDs{UserIds: []string{"ana"}}}},
		Content:    &notifyv1.Content{Title: "Counted"},
	}
	if _, err := notifications.Publish(ctxT(t), req); err != nil {
		t.Fatal(err)
	}
	anonymous, _, _, _ := dial(t, s.grpcAddr, "")
	if _, err := anonymous.Publish(ctxT(t), req); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("Publish without a key = %v, want Unauthenticated", err)
	}

	want := []string{
		`grpc_server_handled_total{grpc_code="OK",grpc_method="Publish",grpc_service="notify.v1.NotificationService",grpc_type="unary"} 1`,
		`grpc_server_handled_total{grpc_code="Unauthenticated",grpc_method="Publish",grpc_service="notify.v1.NotificationService",grpc_type="unary"} 1`,
		`grpc_server_started_total{grpc_method="Publish",grpc_service="notify.v1.NotificationService",grpc_type="unary"} 2`,
		`grpc_server_handling_seconds_count{grpc_method="Publish",grpc_service="notify.v1.NotificationService",grpc_type="unary"} 2`,
	}
	waitFor(t, 10*time.Second, "Publish counted by code in /metrics", func() bool {
		_, body = producer.get(t, "/metrics")
		for _, w := range want {
			if !strings.Contains(body, w) {
				return false
			}
		}
		return true
	})
}

// TestEveryServiceMetrics: every service's /metrics names its build and shows its
// PostgreSQL pool; no series has a job or instance label (Prometheus's own target labels:
// scraped, such a label would be renamed exported_job); and every metric the Grafana dashboard and the Prometheus rules name
// (deployments/grafana/notify.json, deployments/prometheus/rules.yml, the runbook text
// included) is exported by at least one of them, so neither can silently show nothing or never
// fire after a metric is renamed. The services are scraped until they export everything
// (queue depths and job timestamps appear after their first sample or run).
func TestEveryServiceMetrics(t *testing.T) {
	s := newStack(t)
	buildInfo := regexp.MustCompile(`(?m)^notify_build_info\{commit="[0-9a-f]*",go_version="go[^"]+",version="[^"]+"\} 1$`)
	targetLabel := regexp.MustCompile(`(?m)^[a-z_:0-9]+\{(?:.*,)?(?:job|instance)="[^\n]*$`)
	var procs []*proc
	for _, name := range []string{"producer", "sender", "retrier", "deadletter"} {
		p := s.startUntil(name, map[string]string{"FCM_ENDPOINT": "http://127.0.0.1:1/v1"}, "/livez")
		procs = append(procs, p)
		status, body := p.get(t, "/metrics")
		if status != 200 {
			t.Errorf("%s: /metrics = %d", name, status)
			continue
		}
		if !buildInfo.MatchString(body) {
			t.Errorf("%s: /metrics lacks notify_build_info{commit,go_version,version} 1", name)
		}
		for _, line := range targetLabel.FindAllString(body, -1) {
			t.Errorf("%s: %s has a label Prometheus reserves for the target", name, line)
		}
		if name == "producer" && !strings.Contains(body, `notify_job_runs_total{name="redrive",result="ok"} `) {
			t.Errorf("producer: /metrics lacks notify_job_runs_total{name=\"redrive\",result=\"ok\"}")
		}
		for _, want := range []string{"\nnotify_db_pool_max_conns ", "\nnotify_db_pool_acquired_conns ", "\nnotify_db_pool_acquire_waits_total "} {
			if !strings.Contains(body, want) {
				t.Errorf("%s: /metrics lacks %s", name, strings.TrimSpace(want))
			}
		}
	}
	dashboardAndRulesMetricsExist(t, procs)
}

// dashboardAndRulesMetricsExist fails the test for every metric the dashboard or the rules
// name that none of procs exports within 90 seconds.
func dashboardAndRulesMetricsExist(t *testing.T, procs []*proc) {
	t.Helper()
	metricName := regexp.MustCompile(`\b(?:notify|grpc_server|process)_[a-z0-9_]+`)
	want := map[string][]string{} // metric -> the files naming it
	for _, file := range []string{"../deployments/grafana/notify.json", "../deployments/prometheus/rules.yml"} {
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		for _, name := range metricName.FindAllString(string(b), -1) {
			if !slices.Contains(want[name], file) {
				want[name] = append(want[name], file)
			}
		}
	}
	if len(want) < 20 {
		t.Fatalf("found only %d metric names in the dashboard and rules: %v", len(want), slices.Sorted(maps.Keys(want)))
	}

	exported := map[string]bool{}
	var missing []string
	deadline := time.Now().Add(90 * time.Second)
	for {
		for _, p := range procs {
			_, body := p.get(t, "/metrics")
			for line := range strings.SplitSeq(body, "\n") {
				if name, _, ok := strings.Cut(line, "{"); ok && !strings.HasPrefix(line, "#") {
					exported[name] = true
				} else if name, _, ok := strings.Cut(line, " "); ok && !strings.HasPrefix(line, "#") {
					exported[name] = true
				}
			}
		}
		missing = missing[:0]
		for name := range want {
			if !exported[name] {
				missing = append(missing, name)
			}
		}
		if len(missing) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(time.Second)
	}
	slices.Sort(missing)
	for _, name := range missing {
		t.Errorf("%s is named by %v but exported by no service", name, want[name])
	}
}
