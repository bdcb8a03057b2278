package main

import (
	"cmp"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	amqp "github.com/rabbitmq/amqp091-go"

	"notify/pkg/logging"
	"notify/pkg/rabbit"
)

// config is everything the deadletter service reads from the environment.
type config struct {
	DatabaseURL string
	AMQPURL     string
	Topology    string // AMQP_TOPOLOGY: exchange name and queue prefix
	LogLevel    slog.Level
	MetricsAddr string

	// Where alerts go: SLACK_WEBHOOK_URL, or SLACK_BOT_TOKEN with SLACK_CHANNEL (and
	// SLACK_API_URL to point the client elsewhere); none of them: the log.
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
	c := config{
		DatabaseURL:     cmp.Or(getenv("DATABASE_URL"), "postgres://notify:notify@127.0.0.1:5432/notify?sslmode=disable"),
		AMQPURL:         cmp.Or(getenv("AMQP_URL"), "amqp://guest:guest@127.0.0.1:5672/"),
		Topology:        cmp.Or(getenv("AMQP_TOPOLOGY"), rabbit.DefaultName),
		MetricsAddr:     cmp.Or(getenv("METRICS_ADDR"), "127.0.0.1:9104"),
		SlackWebhookURL: getenv("SLACK_WEBHOOK_URL"),
		SlackBotToken:   getenv("SLACK_BOT_TOKEN"),
		SlackChannel:    getenv("SLACK_CHANNEL"),
		SlackAPIURL:     getenv("SLACK_API_URL"),
	}
	var errs []error
	var err error
	if c.LogLevel, err = logging.ParseLevel(getenv("LOG_LEVEL")); err != nil {
		errs = append(errs, fmt.Errorf("LOG_LEVEL: %w", err))
	}
	if _, err := pgxpool.ParseConfig(c.DatabaseURL); err != nil {
		errs = append(errs, fmt.Errorf("DATABASE_URL: %w", err))
	}
	if _, err := amqp.ParseURI(c.AMQPURL); err != nil {
		errs = append(errs, fmt.Errorf("AMQP_URL: %w", err))
	}
	if _, _, err := net.SplitHostPort(c.MetricsAddr); err != nil {
		errs = append(errs, fmt.Errorf("METRICS_ADDR: %w", err))
	}

	httpURL := func(name, value string) {
		if value == "" {
			return
		}
		u, err := url.Parse(value)
		switch {
		case err != nil:
			// url.Parse quotes the whole value, which for a webhook is its secret.
			errs = append(errs, fmt.Errorf("%s: not a URL", name))
		case u.Scheme != "http" && u.Scheme != "https" || u.Host == "":
			errs = append(errs, fmt.Errorf("%s: want an http(s) URL with a host", name))
		}
	}
	httpURL("SLACK_WEBHOOK_URL", c.SlackWebhookURL)
	httpURL("SLACK_API_URL", c.SlackAPIURL)
	switch {
	case c.SlackWebhookURL != "" && (c.SlackBotToken != "" || c.SlackChannel != ""):
		errs = append(errs, errors.New("SLACK_WEBHOOK_URL: set either it or SLACK_BOT_TOKEN with SLACK_CHANNEL, not both"))
	case c.SlackBotToken != "" && c.SlackChannel == "":
		errs = append(errs, errors.New("SLACK_CHANNEL: required with SLACK_BOT_TOKEN"))
	case c.SlackChannel != "" && c.SlackBotToken == "":
		errs = append(errs, errors.New("SLACK_BOT_TOKEN: required with SLACK_CHANNEL"))
	}

	duration := func(name, def string) time.Duration {
		d, err := time.ParseDuration(cmp.Or(getenv(name), def))
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("%s: %w", name, err))
		case d < time.Millisecond:
			errs = append(errs, fmt.Errorf("%s: %s is below the minimum 1ms", name, d))
		}
		return d
	}
	c.AlertInterval = duration("ALERT_INTERVAL", "30s")
	c.AlertMinInterval = duration("ALERT_MIN_INTERVAL", "1m")
	c.ShutdownTimeout = duration("SHUTDOWN_TIMEOUT", "30s")

	c.Workers, err = strconv.Atoi(cmp.Or(getenv("DEADLETTER_WORKERS"), "4"))
	switch {
	case err != nil:
		errs = append(errs, fmt.Errorf("DEADLETTER_WORKERS: %w", err))
	case c.Workers < 1 || c.Workers > 256:
		errs = append(errs, fmt.Errorf("DEADLETTER_WORKERS: %d is outside 1..256", c.Workers))
	}
	return c, errors.Join(errs...)
}
