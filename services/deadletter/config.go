package main

import (
	"log/slog"
	"time"

	"notify/pkg/envconfig"
	"notify/pkg/rabbit"
	"notify/pkg/schema"
)

// defaultHTTPAddr is where the service serves /readyz (and /metrics) when METRICS_ADDR is not set.
const defaultHTTPAddr = "127.0.0.1:9104"

// config is everything the deadletter service reads from the environment.
type config struct {
	// Settings is every variable's effective value, secrets redacted: the start log.
	Settings slog.Value

	DatabaseURL string
	AMQPURL     string
	Topology    string // AMQP_TOPOLOGY: exchange name and queue prefix
	LogLevel    slog.Level
	GCPercent   int // GOGC unset: envconfig.DefaultGOGC, set by run; 0: the Go runtime's own
	MetricsAddr string

	// Where alerts go: SLACK_WEBHOOK_URL, or SLACK_BOT_TOKEN with SLACK_CHANNEL (and
	// SLACK_API_URL to point the client elsewhere); none of them: the log. The webhook URL
	// and the bot token are secrets, also read from SLACK_WEBHOOK_URL_FILE and
	// SLACK_BOT_TOKEN_FILE.
	SlackWebhookURL string
	SlackBotToken   string
	SlackChannel    string
	SlackAPIURL     string

	AlertInterval    time.Duration // ALERT_INTERVAL: how often to look for unalerted dead letters
	AlertMinInterval time.Duration // ALERT_MIN_INTERVAL: the least time between two alerts
	Workers          int           // DEADLETTER_WORKERS: dead letters stored at once
	ShutdownTimeout  time.Duration // SHUTDOWN_TIMEOUT: how long in-flight messages may finish on SIGTERM
}

func loadConfig(getenv func(string) string) (config, error) {
	e := envconfig.New(getenv)
	c := config{
		DatabaseURL: schema.DatabaseURL(e),
		AMQPURL:     e.AMQPURL(),
		Topology:    e.String("AMQP_TOPOLOGY", rabbit.DefaultName),
		LogLevel:    e.LogLevel(),
		GCPercent:   e.GCPercent(),
		MetricsAddr: e.Addr("METRICS_ADDR", defaultHTTPAddr),

		SlackWebhookURL: e.HTTPURL("SLACK_WEBHOOK_URL", ""),
		SlackBotToken:   e.Secret("SLACK_BOT_TOKEN", ""),
		SlackChannel:    e.String("SLACK_CHANNEL", ""),
		SlackAPIURL:     e.HTTPURL("SLACK_API_URL", ""),

		AlertInterval:    e.Duration("ALERT_INTERVAL", 30*time.Second, time.Millisecond),
		AlertMinInterval: e.Duration("ALERT_MIN_INTERVAL", time.Minute, time.Millisecond),
		ShutdownTimeout:  e.Duration("SHUTDOWN_TIMEOUT", 30*time.Second, time.Millisecond),
		Workers:          e.Int("DEADLETTER_WORKERS", 4, 1, 256),
	}
	switch {
	case c.SlackWebhookURL != "" && (c.SlackBotToken != "" || c.SlackChannel != ""):
		e.Errorf("SLACK_WEBHOOK_URL", "set either it or SLACK_BOT_TOKEN with SLACK_CHANNEL, not both")
	case c.SlackBotToken != "" && c.SlackChannel == "":
		e.Errorf("SLACK_CHANNEL", "required with SLACK_BOT_TOKEN")
	case c.SlackChannel != "" && c.SlackBotToken == "":
		e.Errorf("SLACK_BOT_TOKEN", "required with SLACK_CHANNEL")
	}
	c.Settings = e.Settings()
	return c, e.Err()
}
