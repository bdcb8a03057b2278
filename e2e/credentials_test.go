package e2e

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"notify/pkg/fcmemu"
	"notify/pkg/tlstest"
	notifyv1 "notify/proto/gen/notify/v1"
)

// accessTokenTTL is the lifetime of the access tokens the test's OAuth2 server issues:
// short enough that one expires during the test and the sender must fetch another.
const accessTokenTTL = 3 * time.Second

// oauthServer stands in for Google's OAuth2 token endpoint (a service account key's
// token_uri): it takes a JWT-bearer grant, checks the assertion's RS256 signature against
// the service account's public key and its iss/aud/scope/exp claims, and issues
// short-lived access tokens.
type oauthServer struct {
	srv      *httptest.Server
	key      *rsa.PublicKey
	keyID    string
	email    string
	tokenURL string

	mu       sync.Mutex
	issued   map[string]time.Time // access token → expiry
	order    []string             // tokens in the order issued
	failures []string             // why grants were refused
}

// grant checks one token request and returns the access token to issue.
func (o *oauthServer) grant(r *http.Request) (string, error) {
	if r.Method != http.MethodPost {
		return "", fmt.Errorf("method %s", r.Method)
	}
	if err := r.ParseForm(); err != nil {
		return "", err
	}
	if g := r.PostForm.Get("grant_type"); g != "urn:ietf:params:oauth:grant-type:jwt-bearer" {
		return "", fmt.Errorf("grant_type %q", g)
	}
	parts := strings.Split(r.PostForm.Get("assertion"), ".")
	if len(parts) != 3 {
		return "", errors.New("assertion is not a JWS")
	}
	var header struct{ Alg, Kid string }
	var claims struct {
		Iss, Aud, Scope string
		Iat, Exp        int64
	}
	for i, v := range []any{&header, &claims} {
		b, err := base64.RawURLEncoding.DecodeString(parts[i])
		if err != nil {
			return "", err
		}
		if err := json.Unmarshal(b, v); err != nil {
			return "", err
		}
	}
	sig, err := base64.RawURLEncoding.DecodeString(parts[2])
	if err != nil {
		return "", err
	}
	digest := sha256.Sum256([]byte(parts[0] + "." + parts[1]))
	now := time.Now()
	switch {
	case header.Alg != "RS256" || header.Kid != o.keyID:
		return "", fmt.Errorf("header alg %q kid %q", header.Alg, header.Kid)
	case rsa.VerifyPKCS1v15(o.key, crypto.SHA256, digest[:], sig) != nil:
		return "", errors.New("assertion signature does not verify with the service account's key")
	case claims.Iss != o.email:
		return "", fmt.Errorf("iss %q", claims.Iss)
	case claims.Aud != o.tokenURL:
		return "", fmt.Errorf("aud %q, want %q", claims.Aud, o.tokenURL)
	case claims.Scope != "https://www.googleapis.com/auth/firebase.messaging":
		return "", fmt.Errorf("scope %q", claims.Scope)
	case claims.Exp < now.Unix() || claims.Iat > now.Add(time.Minute).Unix():
		return "", fmt.Errorf("iat %d exp %d at %d", claims.Iat, claims.Exp, now.Unix())
	}
	token := "ya29.e2e-" + randomHex(8)
	o.mu.Lock()
	o.issued[token] = now.Add(accessTokenTTL)
	o.order = append(o.order, token)
	o.mu.Unlock()
	return token, nil
}

func (o *oauthServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	token, err := o.grant(r)
	if err != nil {
		o.mu.Lock()
		o.failures = append(o.failures, err.Error())
		o.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusBadRequest)
		_, _ = fmt.Fprintf(w, `{"error":"invalid_grant","error_description":%q}`, err.Error())
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = fmt.Fprintf(w, `{"access_token":%q,"token_type":"Bearer","expires_in":%d}`, token, int(accessTokenTTL/time.Second))
}

// valid reports whether token was issued here and has not expired.
func (o *oauthServer) valid(token string) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	exp, ok := o.issued[token]
	return ok && time.Now().Before(exp)
}

// issuedTokens returns the tokens issued so far, oldest first, and when the last expires.
func (o *oauthServer) issuedTokens() ([]string, time.Time) {
	o.mu.Lock()
	defer o.mu.Unlock()
	var last time.Time
	for _, exp := range o.issued {
		if exp.After(last) {
			last = exp
		}
	}
	return append([]string(nil), o.order...), last
}

// authFCM puts FCM's authentication in front of the emulator: a send without a bearer
// token the oauthServer issued, or with one that has expired, is answered 401
// UNAUTHENTICATED as FCM does.
type authFCM struct {
	emu   http.Handler
	oauth *oauthServer

	mu       sync.Mutex
	accepted map[string]int // access token → sends it authorised
	projects map[string]bool
	refused  []string
}

func (a *authFCM) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	a.mu.Lock()
	if !ok || !a.oauth.valid(token) {
		a.refused = append(a.refused, fmt.Sprintf("%s %q", r.URL.Path, r.Header.Get("Authorization")))
		a.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusUnauthorized)
		_, _ = w.Write([]byte(`{"error":{"code":401,"message":"Request had invalid authentication credentials.","status":"UNAUTHENTICATED"}}`))
		return
	}
	a.accepted[token]++
	if p, ok := strings.CutPrefix(r.URL.Path, "/v1/projects/"); ok {
		a.projects[strings.Split(p, "/")[0]] = true
	}
	a.mu.Unlock()
	a.emu.ServeHTTP(w, r)
}

// TestCredentialsPathWithTokenRefresh runs the sender and retrier as in production, with a
// service account key file (FCM_CREDENTIALS_FILE and nothing else of FCM's but the
// endpoint): OAuth2 over TLS to the key's token_uri, FCM over TLS with the bearer token,
// both trusted only through SSL_CERT_FILE, and the project taken from the key file. An
// access token expires between two notifications, and the second goes out with a new one.
func TestCredentialsPathWithTokenRefresh(t *testing.T) {
	s := newStack(t)
	dir := t.TempDir()
	ca := tlstest.NewCA(t, "e2e CA")
	pair := ca.Server(t, "127.0.0.1", "localhost")
	cert, err := tls.X509KeyPair(pair.CertPEM, pair.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	serveTLS := func(h http.Handler) *httptest.Server {
		srv := httptest.NewUnstartedServer(h)
		srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
		srv.StartTLS()
		t.Cleanup(srv.Close)
		return srv
	}

	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	oauth := &oauthServer{key: &key.PublicKey, keyID: "e2e-key-1", email: "notify-sender@notify-e2e.iam.gserviceaccount.com",
		issued: map[string]time.Time{}}
	oauth.srv = serveTLS(oauth)
	oauth.tokenURL = oauth.srv.URL + "/token"
	fcm := &authFCM{emu: fcmemu.New(fcmemu.Config{}), oauth: oauth, accepted: map[string]int{}, projects: map[string]bool{}}
	fcmSrv := serveTLS(fcm)

	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	sa, err := json.Marshal(map[string]string{
		"type":           "service_account",
		"project_id":     "notify-e2e-project",
		"private_key_id": oauth.keyID,
		"private_key":    string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})),
		"client_email":   oauth.email,
		"client_id":      "1234567890",
		"token_uri":      oauth.tokenURL,
	})
	if err != nil {
		t.Fatal(err)
	}
	saFile := filepath.Join(dir, "service-account.json")
	if err := os.WriteFile(saFile, sa, 0o600); err != nil {
		t.Fatal(err)
	}

	fcmEnv := map[string]string{
		"FCM_CREDENTIALS_FILE": saFile,
		"FCM_ENDPOINT":         fcmSrv.URL + "/v1",
		"SSL_CERT_FILE":        ca.WriteCA(t, dir, "ca.pem"),
		"RETRY_BASE_DELAY":     "300ms",
		"RETRY_MAX_DELAY":      "1s",
	}
	s.start("producer", nil)
	s.start("sender", fcmEnv)
	s.start("retrier", fcmEnv)
	notifications, devices, admin := s.clients()

	// flaky1-: the emulator fails the first send, so the retrier sends it again.
	registerOne(t, devices, "ana", "ana-token")
	registerOne(t, devices, "rita", "flaky1-rita")
	first := publishTo(t, notifications, "ana", "rita")
	waitFor(t, 30*time.Second, "the first notification to be delivered", func() bool {
		return waitStatus(t, admin, first) == notifyv1.NotificationStatus_NOTIFICATION_STATUS_DELIVERED
	})

	// Let every token issued so far expire: the next send needs a new one.
	before, lastExpiry := oauth.issuedTokens()
	if len(before) == 0 {
		t.Fatal("the first notification was delivered without any access token issued")
	}
	time.Sleep(time.Until(lastExpiry) + 100*time.Millisecond)
	second := publishTo(t, notifications, "ana")
	waitFor(t, 30*time.Second, "the second notification to be delivered", func() bool {
		return waitStatus(t, admin, second) == notifyv1.NotificationStatus_NOTIFICATION_STATUS_DELIVERED
	})

	after, _ := oauth.issuedTokens()
	oauth.mu.Lock()
	grantFailures := oauth.failures
	oauth.mu.Unlock()
	fcm.mu.Lock()
	defer fcm.mu.Unlock()
	t.Logf("token endpoint issued %d tokens (%d before the expiry); FCM accepted sends with %d of them", len(after), len(before), len(fcm.accepted))
	if len(grantFailures) > 0 {
		t.Errorf("token grants refused: %q", grantFailures)
	}
	if len(fcm.refused) > 0 {
		t.Errorf("FCM refused %d unauthenticated sends, e.g. %s", len(fcm.refused), fcm.refused[0])
	}
	if len(after) < 2 || len(after) == len(before) {
		t.Errorf("token endpoint issued %d tokens, %d of them after the first ones expired; want a refresh", len(after), len(after)-len(before))
	}
	usedBefore, usedAfter := 0, 0
	for _, tok := range after {
		if fcm.accepted[tok] == 0 {
			continue
		}
		if slices.Contains(before, tok) {
			usedBefore++
		} else {
			usedAfter++
		}
	}
	if usedBefore == 0 || usedAfter == 0 {
		t.Errorf("FCM accepted sends with %d token(s) from before the expiry and %d from after; want both", usedBefore, usedAfter)
	}
	if len(fcm.projects) != 1 || !fcm.projects["notify-e2e-project"] {
		t.Errorf("sends went to projects %v, want the key file's notify-e2e-project", fcm.projects)
	}
	// Four sends in all: ana and rita's failing first try (sender), rita again (retrier), ana again.
	total := 0
	for _, n := range fcm.accepted {
		total += n
	}
	if total != 4 {
		t.Errorf("FCM authorised %d sends, want 4 (ana, rita failing, rita retried, ana again)", total)
	}
}

func waitStatus(t *testing.T, admin notifyv1.AdminServiceClient, id string) notifyv1.NotificationStatus {
	t.Helper()
	resp, err := admin.GetNotification(ctxT(t), &notifyv1.GetNotificationRequest{NotificationId: id, PageSize: 1})
	if err != nil {
		t.Fatalf("GetNotification: %v", err)
	}
	st := resp.GetNotification().GetStatus()
	if st == notifyv1.NotificationStatus_NOTIFICATION_STATUS_FAILED {
		t.Fatalf("notification %s FAILED: %v", id, resp.GetDeliveries())
	}
	return st
}
