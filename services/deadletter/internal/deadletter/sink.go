package deadletter

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"time"

	"github.com/slack-go/slack"
)

// Webhook posts alerts to a Slack incoming webhook.
type Webhook struct {
	url string
}

// NewWebhook returns a sink for the incoming-webhook URL.
func NewWebhook(webhookURL string) *Webhook { return &Webhook{url: webhookURL} }

// Name names the sink in metrics.
func (w *Webhook) Name() string { return "slack_webhook" }

// Post posts the alert's text.
func (w *Webhook) Post(ctx context.Context, a Alert) error {
	err := slack.PostWebhookContext(ctx, w.url, &slack.WebhookMessage{Text: a.Text()})
	return redactURL(err)
}

// Bot posts alerts to a channel with a bot token (chat.postMessage).
type Bot struct {
	client  *slack.Client
	channel string
}

// NewBot returns a sink that posts to channel with token. apiURL, when not empty, replaces
// https://slack.com/api/ (tests, proxies); a trailing slash is added when missing, because
// slack-go appends method names to it directly.
func NewBot(token, channel, apiURL string) *Bot {
	var opts []slack.Option
	if apiURL != "" {
		opts = append(opts, slack.OptionAPIURL(strings.TrimRight(apiURL, "/")+"/"))
	}
	return &Bot{client: slack.New(token, opts...), channel: channel}
}

// Name names the sink in metrics.
func (b *Bot) Name() string { return "slack_bot" }

// Post posts the alert's text to the channel.
func (b *Bot) Post(ctx context.Context, a Alert) error {
	_, _, err := b.client.PostMessageContext(ctx, b.channel,
		slack.MsgOptionText(a.Text(), false), slack.MsgOptionDisableLinkUnfurl())
	return redactURL(err)
}

// Log writes alerts to the log when no Slack is configured: one WARN record per alert,
// with the same grouped content a Slack message has.
type Log struct {
	log *slog.Logger
}

// NewLog returns a sink that writes to log.
func NewLog(log *slog.Logger) *Log { return &Log{log: log} }

// Name names the sink in metrics.
func (l *Log) Name() string { return "log" }

// Post writes the alert as one WARN record.
func (l *Log) Post(ctx context.Context, a Alert) error {
	type reason struct {
		Reason  string   `json:"reason"`
		Count   int      `json:"count"`
		Tokens  int      `json:"tokens"`
		Samples []string `json:"sample_notification_ids,omitempty"`
		Replay  string   `json:"replay"`
	}
	reasons := make([]reason, len(a.Groups))
	since, until := a.Window()
	for i, g := range a.Groups {
		reasons[i] = reason{Reason: g.Reason, Count: g.Count, Tokens: g.Tokens, Samples: g.Samples, Replay: g.ReplayCommand(since, until)}
	}
	l.log.WarnContext(ctx, "dead letters need attention",
		"alert", true,
		"total", a.Total,
		"tokens", a.Tokens,
		"from", a.From.UTC().Format(time.RFC3339),
		"to", a.To.UTC().Format(time.RFC3339),
		"reasons", reasons,
		"remaining", a.Remaining,
		"list", ListCommand,
	)
	return nil
}

// redactURL replaces an HTTP client error, whose text quotes the request's URL, with one
// that names only the host: an incoming webhook's URL is its secret and must not reach the
// logs. The cause (a timeout, a refused connection) stays wrapped.
func redactURL(err error) error {
	var uerr *url.Error
	if !errors.As(err, &uerr) {
		return err
	}
	host := "(unparseable URL)"
	if u, perr := url.Parse(uerr.URL); perr == nil {
		host = u.Scheme + "://" + u.Host
	}
	return fmt.Errorf("%s %s: %w", uerr.Op, host, uerr.Err)
}
