package delivery

import (
	"cmp"
	"errors"
	"fmt"
	"strconv"
	"time"

	"notify/pkg/fcm"
	"notify/pkg/rabbit"
)

// EmulatorEndpoint is where FCM requests go when neither FCM_ENDPOINT nor
// FCM_CREDENTIALS_FILE is set: the local fcm-emulator that `make run` starts.
const EmulatorEndpoint = "http://127.0.0.1:9099/v1"

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
	var errs []error
	s := Settings{TopologyName: cmp.Or(getenv("AMQP_TOPOLOGY"), rabbit.DefaultName), FCM: fcm.Config{
		ProjectID:       getenv("FCM_PROJECT_ID"),
		CredentialsFile: getenv("FCM_CREDENTIALS_FILE"),
		Endpoint:        getenv("FCM_ENDPOINT"),
	}}
	if s.FCM.CredentialsFile == "" && s.FCM.Endpoint == "" {
		s.FCM.Endpoint = EmulatorEndpoint
	}
	if s.FCM.Endpoint != "" && s.FCM.ProjectID == "" {
		s.FCM.ProjectID = "notify-dev"
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
	integer := func(name, def string, lo, hi int) int {
		n, err := strconv.Atoi(cmp.Or(getenv(name), def))
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("%s: %w", name, err))
		case n < lo || n > hi:
			errs = append(errs, fmt.Errorf("%s: %d is outside %d..%d", name, n, lo, hi))
		}
		return n
	}
	s.FCM.Timeout = duration("FCM_TIMEOUT", "10s")
	s.RetryBase = duration("RETRY_BASE_DELAY", "10s")
	s.RetryMax = duration("RETRY_MAX_DELAY", "320s")
	if s.RetryMax < s.RetryBase {
		errs = append(errs, fmt.Errorf("RETRY_MAX_DELAY: %s is below RETRY_BASE_DELAY %s", s.RetryMax, s.RetryBase))
	}
	s.MaxAttempts = integer("RETRY_MAX_ATTEMPTS", "8", 1, 100)
	s.MaxConcurrentSends = integer("FCM_MAX_CONCURRENT_SENDS", "4", 1, 64)
	return s, errors.Join(errs...)
}
