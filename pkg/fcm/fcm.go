// Package fcm is notify's only door to Firebase Cloud Messaging, shared by the sender and
// the retrier. It sends through the Firebase Admin SDK (SendEachForMulticast, or its Send
// once per token for small multicasts), gives it an HTTP client sized for its 50
// concurrent requests per multicast, and translates every SDK error at the edge
// into a *SendError whose kind (ErrTokenGone, ErrTransient, ErrPermanent) decides what
// happens to the token next.
package fcm

import (
	"context"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"cloud.google.com/go/auth/credentials"
	"cloud.google.com/go/auth/httptransport"
	firebase "firebase.google.com/go/v4"
	"firebase.google.com/go/v4/errorutils"
	"firebase.google.com/go/v4/messaging"
	"google.golang.org/api/option"

	"notify/pkg/fcm/topic"
	"notify/pkg/workers"
)

// Defaults for a zero Config field.
const (
	// DefaultMaxConnsPerHost covers 4 concurrent multicasts of 50 requests each, twice over.
	DefaultMaxConnsPerHost = 512
	DefaultTimeout         = 10 * time.Second
)

// messagingScope is the OAuth scope FCM's HTTP v1 API needs, and all we ask for.
const messagingScope = "https://www.googleapis.com/auth/firebase.messaging"

// Config says where FCM is and how to talk to it.
type Config struct {
	// ProjectID is the Firebase project (FCM_PROJECT_ID). With a CredentialsFile it
	// defaults to the service account's project_id; with only an Endpoint it is required.
	ProjectID string
	// CredentialsFile is a service account key file (FCM_CREDENTIALS_FILE): requests carry
	// an OAuth2 access token for it, fetched from its token_uri and refreshed before expiry.
	// Required unless Endpoint is set.
	CredentialsFile string
	// Endpoint, when set, replaces FCM's URL (FCM_ENDPOINT), e.g. "http://127.0.0.1:9099/v1"
	// for the emulator. Alone, it means no authentication; with a CredentialsFile, requests
	// are authenticated exactly as they would be to FCM, which is how the credentials path
	// is tested against a stand-in.
	Endpoint string
	// MaxConnsPerHost bounds the connections to FCM and sizes the idle pool to match, so
	// connections survive from one chunk to the next instead of being closed and dialled
	// again. Keep it at least 2 × 50 × concurrent multicasts (the SDK sends each multicast
	// with 50 goroutines). 0 means DefaultMaxConnsPerHost.
	MaxConnsPerHost int
	// Timeout bounds each HTTP request, the SDK's own retries each getting a fresh one;
	// bound a whole call with its context. 0 means DefaultTimeout.
	Timeout time.Duration
}

// MaxMulticast is the most tokens FCM takes in one multicast; the SDK refuses more.
const MaxMulticast = 500

// ErrNoTarget is returned for a Config with neither CredentialsFile nor Endpoint: notify
// never falls back to an emulator on its own, so a production deployment that lost its
// credentials setting fails at start instead of "delivering" to nowhere.
var ErrNoTarget = errors.New("FCM_CREDENTIALS_FILE or FCM_ENDPOINT: neither is set; set FCM_CREDENTIALS_FILE to a Firebase " +
	"service-account key file to send through FCM, or FCM_ENDPOINT to an FCM-compatible endpoint such as the local " +
	"fcm-emulator (http://127.0.0.1:9099/v1, as make run does)")

// Client sends multicasts through the Firebase Admin SDK. It is safe for concurrent use.
type Client struct {
	msg *messaging.Client
	// project is the Firebase project sent to: Config.ProjectID, or the credentials file's
	// project_id when that is empty.
	project string
	now     func() time.Time
	// workers send a multicast's messages, on goroutines whose stacks have grown already.
	workers *workers.Pool
}

// Result is the outcome for one token: MessageID on success ("projects/…/messages/…", as
// FCM names it), otherwise Err, a *SendError.
type Result struct {
	Token     string
	MessageID string
	Err       error
}

// New returns a Client for cfg. Every configuration problem is reported at once, each
// naming its environment variable.
//
// Authentication: the SDK is always given our own *http.Client (option.WithHTTPClient), and
// google.golang.org/api then uses that client exactly as it is, ignoring every credential
// option (transport/http.NewClient returns settings.HTTPClient before looking at them).
// With only an Endpoint that is what we want: no auth. With a CredentialsFile the client's
// transport must therefore carry the auth itself: New loads the file with
// credentials.NewCredentialsFromFile, which insists on a service account (the deprecated
// option.WithCredentialsFile accepts any credential type, including external-account files
// that run commands or fetch URLs), and wraps our tuned transport with
// httptransport.NewClient, which adds a cached OAuth2 access token (firebase.messaging
// scope) to every request. The token comes from the key file's token_uri (a JWT-bearer
// grant signed with its private key); cloud.google.com/go/auth refreshes it in the
// background during its last 3m45s and fetches a new one before a request when it has
// expired. Both the token fetch and FCM use the system's CA roots (SSL_CERT_FILE and
// SSL_CERT_DIR are honoured).
func New(ctx context.Context, cfg Config) (*Client, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	hc, projectID, err := cfg.httpClient(ctx, cfg.transport())
	if err != nil {
		return nil, err
	}
	return newClient(ctx, projectID, cfg.Endpoint, hc)
}

func (cfg Config) validate() error {
	var errs []error
	if cfg.Endpoint == "" && cfg.CredentialsFile == "" {
		errs = append(errs, ErrNoTarget)
	} else if cfg.ProjectID == "" && cfg.CredentialsFile == "" {
		errs = append(errs, errors.New("FCM_PROJECT_ID: required with FCM_ENDPOINT and no FCM_CREDENTIALS_FILE"))
	}
	if cfg.Endpoint != "" {
		if err := CheckEndpoint(cfg.Endpoint); err != nil {
			errs = append(errs, fmt.Errorf("FCM_ENDPOINT: %w", err))
		}
	}
	if cfg.MaxConnsPerHost < 0 {
		errs = append(errs, fmt.Errorf("max conns per host %d: must not be negative", cfg.MaxConnsPerHost))
	}
	if cfg.Timeout < 0 {
		errs = append(errs, fmt.Errorf("FCM timeout %s: must not be negative", cfg.Timeout))
	}
	return errors.Join(errs...)
}

// CheckEndpoint reports what is wrong with an FCM endpoint URL (FCM_ENDPOINT, an apps
// file's endpoint), or nil.
func CheckEndpoint(endpoint string) error {
	if u, err := url.Parse(endpoint); err != nil || u.Scheme != "http" && u.Scheme != "https" || u.Host == "" {
		return fmt.Errorf("%q: want an http(s) URL such as http://127.0.0.1:9099/v1", endpoint)
	}
	return nil
}

// transport is the base transport for FCM. Go's defaults keep at most 100 idle connections
// in all (MaxIdleConns) and 2 per host (DefaultMaxIdleConnsPerHost); the SDK's own client
// raises only the per-host limit. With 50 requests in flight per multicast, and several
// multicasts at once, either cap makes connections close after each request and be dialled
// again for the next.
func (cfg Config) transport() *http.Transport {
	n := cfg.MaxConnsPerHost
	if n == 0 {
		n = DefaultMaxConnsPerHost
	}
	return &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           (&net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          n,
		MaxIdleConnsPerHost:   n,
		MaxConnsPerHost:       n,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   10 * time.Second,
		ExpectContinueTimeout: time.Second,
	}
}

// httpClient returns the client the SDK sends with, and the project to send to: base as
// is without a CredentialsFile, base wrapped with service-account auth otherwise (see New).
func (cfg Config) httpClient(ctx context.Context, base http.RoundTripper) (*http.Client, string, error) {
	timeout := cfg.Timeout
	if timeout == 0 {
		timeout = DefaultTimeout
	}
	if cfg.CredentialsFile == "" {
		return &http.Client{Transport: base, Timeout: timeout}, cfg.ProjectID, nil
	}
	creds, err := credentials.NewCredentialsFromFile(credentials.ServiceAccount, cfg.CredentialsFile,
		&credentials.DetectOptions{Scopes: []string{messagingScope}})
	if err != nil {
		return nil, "", fmt.Errorf("FCM_CREDENTIALS_FILE %s: %w", cfg.CredentialsFile, err)
	}
	projectID := cfg.ProjectID
	if projectID == "" {
		// A service account key names its project; no request is made for it.
		if projectID, err = creds.ProjectID(ctx); err != nil || projectID == "" {
			return nil, "", errors.Join(fmt.Errorf("FCM_PROJECT_ID: not set, and FCM_CREDENTIALS_FILE %s names no project_id", cfg.CredentialsFile), err)
		}
	}
	// The key is only used at the first token fetch; a broken one should stop the start.
	if err := checkPrivateKey(creds.JSON()); err != nil {
		return nil, "", fmt.Errorf("FCM_CREDENTIALS_FILE %s: %w", cfg.CredentialsFile, err)
	}
	hc, err := httptransport.NewClient(&httptransport.Options{
		Credentials:      creds,
		BaseRoundTripper: base,
		// Telemetry would wrap every request in OpenTelemetry; notify measures with
		// Prometheus, and this is the hot path.
		DisableTelemetry: true,
	})
	if err != nil {
		return nil, "", fmt.Errorf("FCM_CREDENTIALS_FILE %s: %w", cfg.CredentialsFile, err)
	}
	hc.Timeout = timeout
	return hc, projectID, nil
}

// checkPrivateKey checks that a service account key file's private_key is an RSA key in
// PEM, as the token fetch will need it.
func checkPrivateKey(keyFile []byte) error {
	var f struct {
		PrivateKey string `json:"private_key"`
	}
	if err := json.Unmarshal(keyFile, &f); err != nil {
		return err
	}
	block, _ := pem.Decode([]byte(f.PrivateKey))
	if block == nil {
		return errors.New("private_key: no PEM block")
	}
	key, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		if _, err1 := x509.ParsePKCS1PrivateKey(block.Bytes); err1 == nil {
			return nil
		}
		return fmt.Errorf("private_key: %w", err)
	}
	if _, ok := key.(*rsa.PrivateKey); !ok {
		return fmt.Errorf("private_key: a %T, want an RSA key", key)
	}
	return nil
}

// newClient builds the SDK's messaging client. hc nil leaves the SDK to build its own HTTP
// client (only the benchmark wants that, to compare).
func newClient(ctx context.Context, projectID, endpoint string, hc *http.Client) (*Client, error) {
	var opts []option.ClientOption
	if endpoint != "" {
		opts = append(opts, option.WithEndpoint(strings.TrimSuffix(endpoint, "/")))
	}
	switch {
	case hc != nil:
		// hc carries its own auth, or none (see New).
		opts = append(opts, option.WithHTTPClient(hc))
	case endpoint != "":
		opts = append(opts, option.WithoutAuthentication())
	}
	app, err := firebase.NewApp(ctx, &firebase.Config{ProjectID: projectID}, opts...)
	if err != nil {
		return nil, fmt.Errorf("firebase app: %w", err)
	}
	msg, err := app.Messaging(ctx)
	if err != nil {
		return nil, fmt.Errorf("firebase messaging client: %w", err)
	}
	return &Client{msg: msg, project: projectID, now: time.Now, workers: workers.New(workers.Idle)}, nil
}

// SendMulticast sends m to tokens (1 to MaxMulticast of them) and returns one Result per
// token, in the order of tokens. The request is built once for all of them.
//
// A "token" may also be a topic or condition key (topic.Key, topic.ConditionKey): that one
// is sent as a single FCM message to the topic or condition, not as part of the multicast,
// and its Result is that send's.
//
// A call-level error is a *SendError too:
//   - 0 or more than MaxMulticast tokens, or a message the SDK refuses (a malformed
//     image URL, a negative TTL): ErrPermanent, returned before any I/O, results nil;
//   - some token failed and ctx has ended, or no request got an HTTP answer at all (FCM
//     unreachable): ErrTransient (code CANCELED, TIMEOUT, UNAVAILABLE or NETWORK). The
//     results come with it, complete: tokens sent before ctx ended did get their message,
//     which a caller that wants to avoid duplicates can use.
//
// The SDK itself retries network errors and 503s up to 4 times within the call (waiting
// 0, 1, 2, 4 s or Retry-After up to 2 minutes); 429 and 500 come back at once. Bound the
// whole call with ctx.
func (c *Client) SendMulticast(ctx context.Context, m Message, tokens []string) ([]Result, error) {
	if len(tokens) == 0 || len(tokens) > MaxMulticast {
		return nil, &SendError{Code: codeInvalidRequest, Kind: ErrPermanent,
			Err: fmt.Errorf("multicast to %d tokens: want 1 to %d", len(tokens), MaxMulticast)}
	}
	now := c.now()
	results := make([]Result, len(tokens))
	var regular []int // indexes of the registration tokens
	for i, tok := range tokens {
		results[i].Token = tok
		if !topic.IsKey(tok) {
			regular = append(regular, i)
		}
	}
	if len(regular) < len(tokens) {
		c.sendTopics(ctx, m, results, now)
	}
	if len(regular) > 0 {
		multi := tokens
		if len(regular) < len(tokens) {
			multi = make([]string, len(regular))
			for j, i := range regular {
				multi[j] = tokens[i]
			}
		}
		var responses []*messaging.SendResponse
		var err error
		if len(multi) <= sdkWorkers {
			responses, err = c.sendEach(ctx, m, multi, now)
		} else {
			var br *messaging.BatchResponse
			if br, err = c.msg.SendEachForMulticast(ctx, m.multicast(multi, now)); err == nil {
				responses = br.Responses
			}
		}
		if err != nil {
			// The SDK fails a multicast as a whole only while checking the request, before
			// sending anything; per-send failures are in the responses.
			if ctx.Err() != nil {
				return nil, classify(ctx.Err(), now)
			}
			return nil, &SendError{Code: codeInvalidMessage, Kind: ErrPermanent, Err: err}
		}
		if len(responses) != len(multi) {
			return nil, &SendError{Code: codeUnknown, Kind: ErrPermanent,
				Err: fmt.Errorf("sdk answered %d responses for %d tokens", len(responses), len(multi))}
		}
		// The call may have taken a while (the SDK's retries): an HTTP-date Retry-After is
		// measured from now, not from when the call started.
		now = c.now()
		for j, r := range responses {
			i := regular[j]
			if r.Success {
				results[i].MessageID = r.MessageID
				continue
			}
			results[i].Err = classify(r.Error, now)
		}
	}
	failed, noAnswer := 0, 0
	for _, r := range results {
		if r.Err == nil {
			continue
		}
		failed++
		if se, ok := r.Err.(*SendError); ok && se.noAnswer {
			noAnswer++
		}
	}
	switch {
	case failed == 0:
		// Everything went out, even if ctx ended just after.
		return results, nil
	case ctx.Err() != nil:
		return results, classify(ctx.Err(), now)
	case noAnswer == len(tokens):
		return results, results[0].Err
	}
	return results, nil
}

// sdkWorkers is how many goroutines SendEachForMulticast starts for every multicast,
// whatever its size, each sending one token's request at a time.
const sdkWorkers = 50

// sendEach sends m to each of tokens (at most sdkWorkers) as SendEachForMulticast would:
// one FCM request per token through the SDK's Send, all at once, answered in the order of
// tokens. It makes them itself because SendEachForMulticast starts sdkWorkers goroutines
// and two channels for any multicast, which for the common one- to three-token
// notification cost more CPU than its requests. The first token is sent on the calling
// goroutine, each other one on a goroutine of its own.
//
// Like SendEachForMulticast it fails as a whole, having sent nothing, when the SDK refuses
// the message before sending it (a request that never reached the HTTP transport); should
// it refuse only some tokens' messages (it checks each token too), those fail alone,
// permanently, and the others keep their results.
func (c *Client) sendEach(ctx context.Context, m Message, tokens []string, now time.Time) ([]*messaging.SendResponse, error) {
	base := m.single(now)
	responses := make([]*messaging.SendResponse, len(tokens))
	answers := make([]messaging.SendResponse, len(tokens))
	refused := make([]error, len(tokens))
	send := func(i int) {
		msg := *base
		msg.Token = tokens[i]
		// An *http.Transport calls GetConn, on this goroutine, for every request the SDK
		// lets through to it.
		reached := false
		tctx := httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{GetConn: func(string) { reached = true }})
		id, err := c.msg.Send(tctx, &msg)
		switch {
		case err == nil:
			answers[i] = messaging.SendResponse{Success: true, MessageID: id}
		case refusedUnsent(ctx, err, reached):
			refused[i] = err
			answers[i] = messaging.SendResponse{Error: &SendError{Code: codeInvalidMessage, Kind: ErrPermanent, Err: err}}
		default:
			answers[i] = messaging.SendResponse{Error: err}
		}
		responses[i] = &answers[i]
	}
	var wg sync.WaitGroup
	for i := 1; i < len(tokens); i++ {
		c.workers.Go(&wg, func() { send(i) })
	}
	send(0)
	wg.Wait()
	if !slices.Contains(refused, nil) {
		return nil, refused[0]
	}
	return responses, nil
}

// refusedUnsent reports whether the SDK's Send failed with err because it refused the
// message before sending it: no request reached the transport, ctx is live, and err is
// neither an HTTP answer nor what the SDK makes of a failed round trip (a transport that
// is not an *http.Transport, as in tests, may not report reaching it).
func refusedUnsent(ctx context.Context, err error, reached bool) bool {
	return !reached && ctx.Err() == nil && errorutils.HTTPResponse(err) == nil &&
		!errorutils.IsUnknown(err) && !errorutils.IsUnavailable(err) && !errorutils.IsDeadlineExceeded(err)
}

// sendTopics sends m to each topic or condition key among results' tokens, one FCM
// message each, and fills in their results.
func (c *Client) sendTopics(ctx context.Context, m Message, results []Result, now time.Time) {
	for i := range results {
		name, condition, ok := topic.FromKey(results[i].Token)
		if !ok {
			continue
		}
		msg := m.single(now)
		msg.Topic, msg.Condition = name, condition
		// A message the SDK refuses before sending (it checks what SendEachForMulticast
		// checks) fails this target alone, as a permanent error.
		id, err := c.msg.Send(ctx, msg)
		if err != nil {
			results[i].Err = classify(err, c.now())
			continue
		}
		results[i].MessageID = id
	}
}
