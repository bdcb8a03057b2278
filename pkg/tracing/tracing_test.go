package tracing_test

import (
	"bytes"
	"encoding/hex"
	"errors"
	"log/slog"
	"slices"
	"strings"
	"testing"

	"go.opentelemetry.io/otel"

	"notify/pkg/tracing"
	"notify/pkg/tracing/tracingtest"
)

func env(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

// TestOffByDefault: without OTEL_TRACES_EXPORTER nothing is installed; spans are no-ops.
func TestOffByDefault(t *testing.T) {
	for _, v := range []string{"", "none"} {
		shutdown, err := tracing.Setup(t.Context(), "x", discard, env(map[string]string{"OTEL_TRACES_EXPORTER": v}))
		if err != nil {
			t.Fatalf("%q: %v", v, err)
		}
		_, span := otel.Tracer("t").Start(t.Context(), "s")
		if span.SpanContext().IsValid() || span.IsRecording() {
			t.Errorf("%q: span %v is recorded, want the no-op provider", v, span.SpanContext())
		}
		if err := shutdown(t.Context()); err != nil {
			t.Error(err)
		}
	}
}

// TestRefusals: an unsupported exporter or protocol is refused, naming the variable.
func TestRefusals(t *testing.T) {
	for _, tt := range []struct {
		name string
		env  map[string]string
	}{
		{"OTEL_TRACES_EXPORTER", map[string]string{"OTEL_TRACES_EXPORTER": "jaeger"}},
		{"OTEL_EXPORTER_OTLP_PROTOCOL", map[string]string{"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}},
		{"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", map[string]string{"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "udp"}},
		// The SDK printed a plain "unsupported sampler: sometimes" line and sampled every
		// trace; with an argument it cannot read, every trace too (1% is not a ratio).
		{"OTEL_TRACES_SAMPLER", map[string]string{"OTEL_TRACES_EXPORTER": "otlp", "OTEL_TRACES_SAMPLER": "sometimes"}},
		{"OTEL_TRACES_SAMPLER_ARG", map[string]string{"OTEL_TRACES_EXPORTER": "otlp", "OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "1%"}},
		{"OTEL_TRACES_SAMPLER_ARG", map[string]string{"OTEL_TRACES_EXPORTER": "otlp", "OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "1.5"}},
	} {
		_, err := tracing.Setup(t.Context(), "x", discard, env(tt.env))
		if err == nil || !strings.HasPrefix(err.Error(), tt.name+":") {
			t.Errorf("%v: err %v, want one naming %s", tt.env, err, tt.name)
		}
	}
	// The SDK's own spellings are taken (it lowercases the name).
	shutdown, err := tracing.Setup(t.Context(), "x", discard, env(map[string]string{"OTEL_TRACES_EXPORTER": "otlp",
		"OTEL_TRACES_SAMPLER": "ParentBased_TraceIDRatio", "OTEL_TRACES_SAMPLER_ARG": " 0.01 "}))
	if err != nil {
		t.Fatalf("a valid sampler: %v", err)
	}
	if err := shutdown(t.Context()); err != nil {
		t.Error(err)
	}
}

// TestExportsOverOTLP: with OTEL_TRACES_EXPORTER=otlp over gRPC a span reaches the
// collector on shutdown, under the service's name.
func TestExportsOverOTLP(t *testing.T) {
	c := tracingtest.Start(t)
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", c.Endpoint()) // read by the exporter itself
	prev := otel.GetTracerProvider()
	t.Cleanup(func() { otel.SetTracerProvider(prev) })
	shutdown, err := tracing.Setup(t.Context(), "sender", discard, env(map[string]string{
		"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
	}))
	if err != nil {
		t.Fatal(err)
	}
	_, span := otel.Tracer("t").Start(t.Context(), "work")
	span.End()
	if err := shutdown(t.Context()); err != nil {
		t.Fatal(err)
	}
	spans := c.Spans()
	if len(spans) != 1 {
		t.Fatalf("collector got %d spans, want 1", len(spans))
	}
	got := spans[0]
	want := span.SpanContext().TraceID()
	if got.Service != "sender" || got.Name != "work" || hex.EncodeToString(got.TraceId) != want.String() {
		t.Errorf("got span %q of %q in trace %x, want work of sender in %s", got.Name, got.Service, got.TraceId, want)
	}
	if !slices.Contains(otel.GetTextMapPropagator().Fields(), "traceparent") {
		t.Error("global propagator does not carry traceparent")
	}
}

var discard = slog.New(slog.DiscardHandler)

// TestSDKErrorsAreLogged: what the SDK reports on its own (an export the collector refused
// or did not answer, every few seconds while it is down) goes to the service's JSON log;
// the SDK printed it as a plain line ("2026/11/30 16:13:32 traces export: …") among the JSON.
func TestSDKErrorsAreLogged(t *testing.T) {
	prevProvider, prevHandler := otel.GetTracerProvider(), otel.GetErrorHandler()
	t.Cleanup(func() { otel.SetTracerProvider(prevProvider); otel.SetErrorHandler(prevHandler) })
	var buf bytes.Buffer
	shutdown, err := tracing.Setup(t.Context(), "x", slog.New(slog.NewJSONHandler(&buf, nil)),
		env(map[string]string{"OTEL_TRACES_EXPORTER": "otlp"}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = shutdown(t.Context()) })
	otel.Handle(errors.New("traces export: connection refused"))
	if !strings.Contains(buf.String(), `"level":"WARN","msg":"opentelemetry","err":"traces export: connection refused"`) {
		t.Errorf("log: %s, want the SDK's error as a JSON line", buf.String())
	}
}
