// Package tracing sets up OpenTelemetry tracing for a notify service, configured only by the
// standard OTEL_* environment variables. Tracing is off unless OTEL_TRACES_EXPORTER=otlp:
// the global tracer provider then stays OpenTelemetry's no-op one, so a span started in a
// hot path costs a context lookup and nothing else.
package tracing

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.26.0"
)

// Env lists, for a service's --help, the variables Setup reads itself and the ones an
// operator sets to turn tracing on (the endpoint, the service's resource attributes, the
// sampler). The exporter and the SDK read the rest of the standard ones (_HEADERS,
// _TIMEOUT, OTEL_BSP_*...), which README.md's Configuration points to.
var Env = []string{
	"OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
	"OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_SERVICE_NAME",
	"OTEL_RESOURCE_ATTRIBUTES", "OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLER_ARG",
}

// Setup installs the global tracer provider and W3C trace context propagator as the
// environment asks, naming the service service (unless OTEL_SERVICE_NAME does), and returns
// the function that flushes the spans still buffered and stops the exporter, to call on
// stop; what the SDK reports on its own (failed exports) goes to log. With tracing off it
// installs nothing and the returned function does nothing.
func Setup(ctx context.Context, service string, log *slog.Logger, getenv func(string) string) (shutdown func(context.Context) error, err error) {
	nothing := func(context.Context) error { return nil }
	switch v := getenv("OTEL_TRACES_EXPORTER"); v {
	case "", "none":
		return nothing, nil
	case "otlp":
	default:
		return nil, fmt.Errorf("OTEL_TRACES_EXPORTER: %q is not supported (none or otlp)", v)
	}
	if err := checkSampler(getenv); err != nil {
		return nil, err
	}
	protocol, from := getenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"), "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"
	if protocol == "" {
		protocol, from = getenv("OTEL_EXPORTER_OTLP_PROTOCOL"), "OTEL_EXPORTER_OTLP_PROTOCOL"
	}
	var exporter sdktrace.SpanExporter
	switch protocol {
	case "", "http/protobuf": // the specification's default
		exporter, err = otlptracehttp.New(ctx)
	case "grpc":
		exporter, err = otlptracegrpc.New(ctx)
	default:
		return nil, fmt.Errorf("%s: %q is not supported (grpc or http/protobuf)", from, protocol)
	}
	if err != nil {
		return nil, fmt.Errorf("OTEL_EXPORTER_OTLP_ENDPOINT: %w", err)
	}
	// Defaults first: OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES override them.
	res, err := resource.New(ctx,
		resource.WithAttributes(semconv.ServiceName(service)),
		resource.WithFromEnv(),
		resource.WithTelemetrySDK(),
	)
	if err != nil && !errors.Is(err, resource.ErrPartialResource) {
		return nil, fmt.Errorf("OTEL_RESOURCE_ATTRIBUTES: %w", err)
	}
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exporter), sdktrace.WithResource(res))
	// What the SDK reports on its own (exports that fail while the collector is down) goes
	// to the service's log, not the standard library's plain-text logger.
	otel.SetErrorHandler(otel.ErrorHandlerFunc(func(err error) { log.Warn("opentelemetry", "err", err.Error()) }))
	otel.SetTracerProvider(tp)
	otel.SetTextMapPropagator(propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{}))
	return tp.Shutdown, nil
}

// checkSampler refuses an OTEL_TRACES_SAMPLER or OTEL_TRACES_SAMPLER_ARG the SDK cannot
// honour. The SDK reads them itself, but on a value it does not know it only prints a plain
// line on stderr and samples every trace: "parentbased_traceidratio" with "1%" meant to keep
// one trace in a hundred and kept them all.
func checkSampler(getenv func(string) string) error {
	switch sampler := strings.ToLower(strings.TrimSpace(getenv("OTEL_TRACES_SAMPLER"))); sampler {
	case "", "always_on", "always_off", "parentbased_always_on", "parentbased_always_off":
	case "traceidratio", "parentbased_traceidratio":
		arg := strings.TrimSpace(getenv("OTEL_TRACES_SAMPLER_ARG"))
		if arg == "" {
			return nil // the SDK's default ratio, 1
		}
		if r, err := strconv.ParseFloat(arg, 64); err != nil || r < 0 || r > 1 {
			return fmt.Errorf("OTEL_TRACES_SAMPLER_ARG: %q: want a ratio from 0 to 1 (0.01 keeps one trace in a hundred)", arg)
		}
	default:
		return fmt.Errorf("OTEL_TRACES_SAMPLER: %q is not supported (always_on, always_off, traceidratio, "+
			"parentbased_always_on, parentbased_always_off or parentbased_traceidratio)", sampler)
	}
	return nil
}
