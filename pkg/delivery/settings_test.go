package delivery

import (
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"notify/pkg/envconfig"
)

// load reads the settings from m.
func load(m map[string]string) (Settings, error) {
	r := envconfig.New(func(k string) string { return m[k] })
	s := LoadSettings(r)
	return s, r.Err()
}

func TestLoadSettingsDefaults(t *testing.T) {
	t.Parallel()
	s, err := load(map[string]string{"FCM_ENDPOINT": "http://127.0.0.1:9099/v1"})
	if err != nil {
		t.Fatal(err)
	}
	if s.FCM.ProjectID != "notify-dev" {
		t.Errorf("with an endpoint: project %q, want notify-dev", s.FCM.ProjectID)
	}
	want := []time.Duration{10 * time.Second, 20 * time.Second, 40 * time.Second, 80 * time.Second, 160 * time.Second, 320 * time.Second}
	topo := s.Topology()
	if diff := cmp.Diff(want, topo.WaitDelays); diff != "" || topo.Name != "notify" || s.MaxAttempts != 8 {
		t.Errorf("topology %s attempts %d, wait levels (-want +got):\n%s", topo.Name, s.MaxAttempts, diff)
	}
}

func TestLoadSettingsFCMTarget(t *testing.T) {
	t.Parallel()
	// No FCM settings at all: refuse, saying what to set, rather than use an emulator.
	_, err := load(nil)
	for _, want := range []string{"FCM_CREDENTIALS_FILE", "FCM_ENDPOINT", "service-account", "http://127.0.0.1:9099/v1"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("no FCM settings: error %v, want one mentioning %q", err, want)
		}
	}

	// Credentials mean real FCM, and the project comes from the key file unless set.
	s, err := load(map[string]string{"FCM_CREDENTIALS_FILE": "/etc/notify/sa.json"})
	if err != nil || s.FCM.Endpoint != "" || s.FCM.ProjectID != "" {
		t.Errorf("with credentials: endpoint %q project %q (%v), want neither", s.FCM.Endpoint, s.FCM.ProjectID, err)
	}
	// Both: the endpoint with the credentials' auth (a stand-in of FCM).
	s, err = load(map[string]string{"FCM_CREDENTIALS_FILE": "/etc/notify/sa.json", "FCM_ENDPOINT": "https://fcm.test/v1", "FCM_PROJECT_ID": "p"})
	if err != nil || s.FCM.Endpoint != "https://fcm.test/v1" || s.FCM.CredentialsFile == "" || s.FCM.ProjectID != "p" {
		t.Errorf("with both: %+v (%v)", s.FCM, err)
	}
}

func TestLoadSettingsNamesEveryBadVariable(t *testing.T) {
	t.Parallel()
	_, err := load(map[string]string{
		"FCM_TIMEOUT":              "soon",
		"RETRY_BASE_DELAY":         "0s",
		"RETRY_MAX_ATTEMPTS":       "0",
		"FCM_MAX_CONCURRENT_SENDS": "many",
	})
	if err == nil {
		t.Fatal("bad settings accepted")
	}
	for _, name := range []string{"FCM_TIMEOUT", "RETRY_BASE_DELAY", "RETRY_MAX_ATTEMPTS", "FCM_MAX_CONCURRENT_SENDS"} {
		if !strings.Contains(err.Error(), name) {
			t.Errorf("error %q does not name %s", err, name)
		}
	}
	_, err = load(map[string]string{"RETRY_BASE_DELAY": "1m", "RETRY_MAX_DELAY": "10s"})
	if err == nil || !strings.Contains(err.Error(), "RETRY_MAX_DELAY") {
		t.Errorf("max below base: %v, want an error naming RETRY_MAX_DELAY", err)
	}
}
