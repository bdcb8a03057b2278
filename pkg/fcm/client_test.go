package fcm

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestNewConfig(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	userCreds := filepath.Join(dir, "user.json")
	if err := os.WriteFile(userCreds, []byte(`{"type":"authorized_user","client_id":"c","client_secret":"s","refresh_token":"r"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	brokenKey := filepath.Join(dir, "broken.json")
	if err := os.WriteFile(brokenKey, []byte(`{"type":"service_account","project_id":"demo","client_email":"a@demo.iam.gserviceaccount.com","private_key":"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		cfg  Config
		want []string // substrings of the error; none means success
	}{
		{"empty", Config{}, []string{"FCM_CREDENTIALS_FILE", "FCM_ENDPOINT", "fcm-emulator"}},
		{"emulator", Config{ProjectID: "demo", Endpoint: "http://127.0.0.1:9099/v1"}, nil},
		{"endpoint without project", Config{Endpoint: "http://127.0.0.1:9099/v1"}, []string{"FCM_PROJECT_ID"}},
		{"credentials", Config{CredentialsFile: writeServiceAccount(t, "https://oauth2.example/token", "demo")}, nil},
		{"credentials without project_id", Config{CredentialsFile: writeServiceAccount(t, "https://oauth2.example/token", "")}, []string{"FCM_PROJECT_ID", "project_id"}},
		{"credentials with a broken key", Config{CredentialsFile: brokenKey}, []string{"FCM_CREDENTIALS_FILE", "private_key"}},
		{"endpoint with credentials", Config{Endpoint: "http://127.0.0.1:9099/v1", CredentialsFile: writeServiceAccount(t, "https://oauth2.example/token", "demo")}, nil},
		{"endpoint with missing credentials", Config{ProjectID: "demo", Endpoint: "http://127.0.0.1:9099/v1", CredentialsFile: filepath.Join(dir, "missing.json")}, []string{"FCM_CREDENTIALS_FILE"}},
		{"endpoint without scheme", Config{ProjectID: "demo", Endpoint: "127.0.0.1:9099"}, []string{"FCM_ENDPOINT"}},
		{"endpoint not http", Config{ProjectID: "demo", Endpoint: "ftp://example.com/v1"}, []string{"FCM_ENDPOINT"}},
		{"credentials file missing", Config{ProjectID: "demo", CredentialsFile: filepath.Join(dir, "missing.json")}, []string{"FCM_CREDENTIALS_FILE"}},
		{"credentials not a service account", Config{ProjectID: "demo", CredentialsFile: userCreds}, []string{"FCM_CREDENTIALS_FILE", "service_account"}},
		{"negative limits", Config{ProjectID: "demo", Endpoint: "http://x/v1", MaxConnsPerHost: -1, Timeout: -time.Second}, []string{"max conns", "timeout"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c, err := New(t.Context(), tt.cfg)
			if len(tt.want) == 0 {
				if err != nil || c == nil {
					t.Fatalf("New = %v, %v; want a client", c, err)
				}
				return
			}
			if err == nil {
				t.Fatalf("New succeeded, want an error mentioning %q", tt.want)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

func TestTransport(t *testing.T) {
	t.Parallel()
	type limits struct{ MaxIdleConns, MaxIdleConnsPerHost, MaxConnsPerHost int }
	tests := []struct {
		max  int
		want limits
	}{
		{0, limits{512, 512, 512}},
		{1000, limits{1000, 1000, 1000}},
	}
	for _, tt := range tests {
		tr := Config{MaxConnsPerHost: tt.max}.transport()
		got := limits{tr.MaxIdleConns, tr.MaxIdleConnsPerHost, tr.MaxConnsPerHost}
		if diff := cmp.Diff(tt.want, got); diff != "" {
			t.Errorf("MaxConnsPerHost %d (-want +got):\n%s", tt.max, diff)
		}
	}
}

// TestCredentialsAuth checks that our own HTTP client still authenticates: a service
// account's token is fetched from its token_uri and sent to FCM with every request.
func TestCredentialsAuth(t *testing.T) {
	t.Parallel()
	const accessToken = "ya29.test-token"

	var tokenRequests atomic.Int32
	var scope atomic.Value
	tokenSrv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tokenRequests.Add(1)
		if err := r.ParseForm(); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		scope.Store(jwtClaim(r.PostForm.Get("assertion"), "scope"))
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"access_token":"` + accessToken + `","token_type":"Bearer","expires_in":3600}`))
	}))
	t.Cleanup(tokenSrv.Close)

	var (
		mu    sync.Mutex
		auths []string
	)
	fcmSrv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		auths = append(auths, r.Method+" "+r.URL.Path+" "+r.Header.Get("Authorization"))
		mu.Unlock()
		_, _ = w.Write([]byte(`{"name":"projects/demo/messages/1"}`))
	}))
	t.Cleanup(fcmSrv.Close)

	cfg := Config{CredentialsFile: writeServiceAccount(t, tokenSrv.URL, "demo")}
	if err := cfg.validate(); err != nil {
		t.Fatal(err)
	}
	// Production sends to fcm.googleapis.com; route it to the stub under the auth layer.
	target, err := url.Parse(fcmSrv.URL)
	if err != nil {
		t.Fatal(err)
	}
	base := cfg.transport()
	hc, project, err := cfg.httpClient(t.Context(), roundTripFunc(func(r *http.Request) (*http.Response, error) {
		if r.URL.Host != "fcm.googleapis.com" {
			t.Errorf("request to %s, want fcm.googleapis.com", r.URL.Host)
		}
		r = r.Clone(r.Context())
		r.URL.Scheme, r.URL.Host = target.Scheme, target.Host
		return base.RoundTrip(r)
	}))
	if err != nil {
		t.Fatal(err)
	}
	if project != "demo" {
		t.Errorf("project %q, want the service account's demo", project)
	}
	c, err := newClient(t.Context(), project, cfg.Endpoint, hc)
	if err != nil {
		t.Fatal(err)
	}

	res, err := c.SendMulticast(t.Context(), Message{Title: "t"}, []string{"a", "b", "c"})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range res {
		if r.Err != nil {
			t.Errorf("token %s: %v", r.Token, r.Err)
		}
	}
	want := slices.Repeat([]string{"POST /v1/projects/demo/messages:send Bearer " + accessToken}, 3)
	mu.Lock()
	defer mu.Unlock()
	if diff := cmp.Diff(want, auths); diff != "" {
		t.Errorf("requests FCM received (-want +got):\n%s", diff)
	}
	if n := tokenRequests.Load(); n != 1 {
		t.Errorf("%d token requests, want 1 (the token is cached)", n)
	}
	if got := scope.Load(); got != messagingScope {
		t.Errorf("token requested for scope %q, want %q", got, messagingScope)
	}
}

// TestCredentialsWithEndpoint: FCM_ENDPOINT together with FCM_CREDENTIALS_FILE sends to
// the endpoint with the service account's token, as it would to FCM.
func TestCredentialsWithEndpoint(t *testing.T) {
	t.Parallel()
	tokenSrv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"access_token":"ya29.endpoint","token_type":"Bearer","expires_in":3600}`))
	}))
	t.Cleanup(tokenSrv.Close)
	var got atomic.Value
	fcmSrv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got.Store(r.URL.Path + " " + r.Header.Get("Authorization"))
		_, _ = w.Write([]byte(`{"name":"projects/from-key/messages/1"}`))
	}))
	t.Cleanup(fcmSrv.Close)

	c, err := New(t.Context(), Config{Endpoint: fcmSrv.URL + "/v1", CredentialsFile: writeServiceAccount(t, tokenSrv.URL, "from-key")})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.SendMulticast(t.Context(), Message{Title: "t"}, []string{"a"}); err != nil {
		t.Fatal(err)
	}
	if want := "/v1/projects/from-key/messages:send Bearer ya29.endpoint"; got.Load() != want {
		t.Errorf("endpoint received %q, want %q", got.Load(), want)
	}
}

// TestAppsStringNamesTheProjectSentTo: the start-up log's "sending for apps" names the
// project each app sends to; with FCM_PROJECT_ID empty that is the credentials file's
// project_id (it said "default=", an empty project).
func TestAppsStringNamesTheProjectSentTo(t *testing.T) {
	t.Parallel()
	apps, err := NewApps(t.Context(), []App{
		{Name: "default", FCM: Config{CredentialsFile: writeServiceAccount(t, "https://oauth2.example/token", "from-key")}},
		{Name: "staff", FCM: Config{ProjectID: "given", CredentialsFile: writeServiceAccount(t, "https://oauth2.example/token", "other")}},
		{Name: "emulated", FCM: Config{ProjectID: "emu", Endpoint: "http://127.0.0.1:9099/v1"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := apps.String(), "default=from-key,emulated=emu,staff=given"; got != want {
		t.Errorf("String() = %q, want %q", got, want)
	}
}

// writeServiceAccount writes a service account key file whose token_uri is tokenURL.
func writeServiceAccount(t *testing.T, tokenURL, projectID string) string {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	sa, err := json.Marshal(map[string]string{
		"type":           "service_account",
		"project_id":     projectID,
		"private_key_id": "k1",
		"private_key":    string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})),
		"client_email":   "notify@demo.iam.gserviceaccount.com",
		"client_id":      "1",
		"token_uri":      tokenURL,
	})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "sa.json")
	if err := os.WriteFile(path, sa, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// jwtClaim returns a string claim of a JWT without verifying it ("" if absent).
func jwtClaim(jwt, name string) string {
	parts := strings.Split(jwt, ".")
	if len(parts) != 3 {
		return ""
	}
	b, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return ""
	}
	var claims map[string]any
	if err := json.Unmarshal(b, &claims); err != nil {
		return ""
	}
	s, _ := claims[name].(string)
	return s
}
