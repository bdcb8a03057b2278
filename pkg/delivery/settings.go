package delivery

import (
	"fmt"
	"time"

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

// LoadSettings reads the shared settings through getenv, reporting every problem at once,
// each naming its variable.
func LoadSettings(getenv func(string) string) (Settings, error) {
	e := NewEnv(getenv)
	s := Settings{
		TopologyName: e.String("AMQP_TOPOLOGY", rabbit.DefaultName),
		FCM: fcm.Config{
			ProjectID:       getenv("FCM_PROJECT_ID"),
			CredentialsFile: getenv("FCM_CREDENTIALS_FILE"),
			Endpoint:        getenv("FCM_ENDPOINT"),
			Timeout:         e.Duration("FCM_TIMEOUT", 10*time.Second, time.Millisecond),
		},
		RetryBase:          e.Duration("RETRY_BASE_DELAY", 10*time.Second, time.Millisecond),
		RetryMax:           e.Duration("RETRY_MAX_DELAY", 320*time.Second, time.Millisecond),
		MaxAttempts:        e.Int("RETRY_MAX_ATTEMPTS", 8, 1, 100),
		MaxConcurrentSends: e.Int("FCM_MAX_CONCURRENT_SENDS", 4, 1, 64),
	}
	switch {
	case s.FCM.CredentialsFile == "" && s.FCM.Endpoint == "":
		// Never a silent default: without this a production deployment that lost its
		// credentials would "deliver" to an emulator that is not there.
		e.Errs = append(e.Errs, fcm.ErrNoTarget)
	case s.FCM.CredentialsFile == "" && s.FCM.ProjectID == "":
		// An emulator takes any project; with credentials the key file names it.
		s.FCM.ProjectID = "notify-dev"
	}
	if s.RetryMax < s.RetryBase {
		e.Errs = append(e.Errs, fmt.Errorf("RETRY_MAX_DELAY: %s is below RETRY_BASE_DELAY %s", s.RetryMax, s.RetryBase))
	}
	return s, e.Err()
}
