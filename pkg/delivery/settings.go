package delivery

import (
	"strings"
	"time"

	"notify/pkg/envconfig"
	"notify/pkg/fcm"
	"notify/pkg/rabbit"
)

// Settings are the environment settings the sender and the retrier share. They must agree
// on the retry settings: those name the wait queues both of them publish to.
type Settings struct {
	FCM         fcm.Config
	RetryBase   time.Duration // RETRY_BASE_DELAY: the first wait
	RetryMax    time.Duration // RETRY_MAX_DELAY: the longest wait
	MaxAttempts int           // RETRY_MAX_ATTEMPTS: sends per token in all, the first included
	// MaxConcurrentSends (FCM_MAX_CONCURRENT_SENDS) bounds the multicasts in flight per process.
	MaxConcurrentSends int
	// TopologyName (AMQP_TOPOLOGY) names the exchange and prefixes every queue.
	TopologyName string
}

// Topology is the RabbitMQ topology these settings imply.
func (s Settings) Topology() rabbit.Topology {
	return rabbit.NewTopology(s.TopologyName, rabbit.WaitDelays(s.RetryBase, s.RetryMax))
}

// Options are the Deliverer options these settings imply.
func (s Settings) Options() Options {
	return Options{MaxAttempts: s.MaxAttempts, MaxConcurrentSends: s.MaxConcurrentSends}
}

// LoadSettings reads the shared settings through r, which collects every problem, each
// naming its variable. The sender and the retrier both read them here, so they cannot
// disagree on a default.
func LoadSettings(r *envconfig.Reader) Settings {
	s := Settings{
		TopologyName: r.String("AMQP_TOPOLOGY", rabbit.DefaultName),
		FCM: fcm.Config{
			ProjectID:       r.String("FCM_PROJECT_ID", ""),
			CredentialsFile: r.String("FCM_CREDENTIALS_FILE", ""),
			Endpoint:        r.String("FCM_ENDPOINT", ""),
			Timeout:         r.Duration("FCM_TIMEOUT", 10*time.Second, time.Millisecond),
		},
		RetryBase:          r.Duration("RETRY_BASE_DELAY", 10*time.Second, time.Millisecond),
		RetryMax:           r.Duration("RETRY_MAX_DELAY", 320*time.Second, time.Millisecond),
		MaxAttempts:        r.Int("RETRY_MAX_ATTEMPTS", 8, 1, 100),
		MaxConcurrentSends: r.Int("FCM_MAX_CONCURRENT_SENDS", 4, 1, 64),
	}
	switch {
	case s.FCM.CredentialsFile == "" && s.FCM.Endpoint == "":
		// Never a silent default: without this a production deployment that lost its
		// credentials would "deliver" to an emulator that is not there.
		// fcm.ErrNoTarget's text names both variables and says what to set.
		r.Errorf("FCM_CREDENTIALS_FILE or FCM_ENDPOINT", "%s",
			strings.TrimPrefix(fcm.ErrNoTarget.Error(), "FCM_CREDENTIALS_FILE or FCM_ENDPOINT: "))
	case s.FCM.CredentialsFile == "" && s.FCM.ProjectID == "":
		// An emulator takes any project; with credentials the key file names it.
		s.FCM.ProjectID = "notify-dev"
	}
	if s.RetryMax < s.RetryBase {
		r.Errorf("RETRY_MAX_DELAY", "%s is below RETRY_BASE_DELAY %s", s.RetryMax, s.RetryBase)
	}
	return s
}
