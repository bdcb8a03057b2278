package delivery

import (
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"notify/pkg/envconfig"
	"notify/pkg/fcm"
	"notify/pkg/pace"
	"notify/pkg/rabbit"
)

// Settings are the environment settings the sender and the retrier share. They must agree
// on the retry settings: those name the wait queues both of them publish to.
type Settings struct {
	// FCM is the app "default" as the FCM_* variables define it (zero with FCM_APPS_FILE).
	FCM fcm.Config
	// Apps are the Firebase apps to send for: those of FCM_APPS_FILE, or the one app
	// "default" of the FCM_* variables (with FCM_RATE_PER_MINUTE).
	Apps        []fcm.App
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

// AppOptions are Options with the configured apps: each app's FCM client from apps, the
// send budget every replica shares (pace, in pool) and the app names for the metrics.
func (s Settings) AppOptions(apps *fcm.Apps, pool *pgxpool.Pool, reg prometheus.Registerer) Options {
	opts := s.Options()
	opts.Apps = func(app string) (Pusher, bool) {
		c, ok := apps.Client(app)
		return c, ok
	}
	opts.Pacer = pace.New(pool, s.PaceApps(), reg)
	for _, app := range s.Apps {
		opts.AppNames = append(opts.AppNames, app.Name)
	}
	return opts
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
		},
		RetryBase:          r.Duration("RETRY_BASE_DELAY", 10*time.Second, time.Millisecond),
		RetryMax:           r.Duration("RETRY_MAX_DELAY", 320*time.Second, time.Millisecond),
		MaxAttempts:        r.Int("RETRY_MAX_ATTEMPTS", 8, 1, 100),
		MaxConcurrentSends: r.Int("FCM_MAX_CONCURRENT_SENDS", 4, 1, 64),
	}
	base := fcm.Config{Timeout: r.Duration("FCM_TIMEOUT", 10*time.Second, time.Millisecond)}
	rate := r.Int("FCM_RATE_PER_MINUTE", fcm.DefaultRatePerMinute, 1, 1_000_000_000)
	if file := r.String("FCM_APPS_FILE", ""); file != "" {
		if s.FCM != (fcm.Config{}) || r.String("FCM_RATE_PER_MINUTE", "") != "" {
			r.Errorf("FCM_APPS_FILE", "set together with FCM_PROJECT_ID, FCM_CREDENTIALS_FILE, FCM_ENDPOINT or "+
				"FCM_RATE_PER_MINUTE; with an apps file every app, \"default\" included, is defined in the file")
		}
		apps, err := fcm.LoadApps(file, base)
		if err != nil {
			// LoadApps joins one error per problem, each naming FCM_APPS_FILE, the file, the
			// entry, the field and the line (as "FCM_APPS_FILE: …" when it cannot read the
			// file): one problem each, naming the variable once.
			problems := []error{err}
			if joined, ok := err.(interface{ Unwrap() []error }); ok {
				problems = joined.Unwrap()
			}
			for _, p := range problems {
				msg := strings.TrimPrefix(strings.TrimPrefix(p.Error(), "FCM_APPS_FILE: "), "FCM_APPS_FILE ")
				r.Errorf("FCM_APPS_FILE", "%s", msg)
			}
		}
		s.Apps = apps
		s.FCM = fcm.Config{}
		return s.checkRetry(r)
	}
	s.FCM.Timeout = base.Timeout
	if s.FCM.Endpoint != "" {
		r.Check("FCM_ENDPOINT", fcm.CheckEndpoint(s.FCM.Endpoint))
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
	s.Apps = []fcm.App{{Name: fcm.DefaultApp, FCM: s.FCM, RatePerMinute: rate}}
	return s.checkRetry(r)
}

func (s Settings) checkRetry(r *envconfig.Reader) Settings {
	if s.RetryMax < s.RetryBase {
		r.Errorf("RETRY_MAX_DELAY", "%s is below RETRY_BASE_DELAY %s", s.RetryMax, s.RetryBase)
	}
	return s
}

// TaskTimeout is the default deadline of one step of a send or retry task
// (SEND_TASK_TIMEOUT, RETRY_TASK_TIMEOUT; see Deadline): room for two multicasts of 500
// tokens in which every request times out (the SDK sends 50 at a time, so one such
// multicast takes 10 × FCM_TIMEOUT; the longest of the apps'), plus a minute for the
// database and the broker. 4m20s with the default FCM_TIMEOUT of 10s: with the consumer's
// rabbit.DefaultHoldFor (10 min) before it, still below RabbitMQ's consumer_timeout (30 min
// by default), so a step that hangs ends by our deadline and is tried again or handed back
// by us, not by the broker closing the channel.
func (s Settings) TaskTimeout() time.Duration {
	longest := time.Duration(0)
	for _, a := range s.Apps {
		longest = max(longest, a.FCM.Timeout)
	}
	if longest <= 0 {
		longest = fcm.DefaultTimeout
	}
	return 2*10*longest + time.Minute
}

// PaceApps are the apps and their quotas, for the shared send budget.
func (s Settings) PaceApps() []pace.App {
	out := make([]pace.App, len(s.Apps))
	for i, a := range s.Apps {
		out[i] = pace.App{Name: a.Name, RatePerMinute: a.RatePerMinute}
	}
	return out
}
