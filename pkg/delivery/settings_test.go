package delivery

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"notify/pkg/envconfig"
	"notify/pkg/fcm"
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
		// Checked with the others, as an apps file's endpoint is: it was reported alone, by
		// the FCM client after start (and after a "sending to an FCM emulator" line).
		"FCM_ENDPOINT": "127.0.0.1:9099",
	})
	if err == nil {
		t.Fatal("bad settings accepted")
	}
	for _, name := range []string{"FCM_TIMEOUT", "RETRY_BASE_DELAY", "RETRY_MAX_ATTEMPTS", "FCM_MAX_CONCURRENT_SENDS", "FCM_ENDPOINT: \"127.0.0.1:9099\": want an http(s) URL"} {
		if !strings.Contains(err.Error(), name) {
			t.Errorf("error %q does not name %s", err, name)
		}
	}
	_, err = load(map[string]string{"RETRY_BASE_DELAY": "1m", "RETRY_MAX_DELAY": "10s"})
	if err == nil || !strings.Contains(err.Error(), "RETRY_MAX_DELAY") {
		t.Errorf("max below base: %v, want an error naming RETRY_MAX_DELAY", err)
	}
}

func TestLoadSettingsApps(t *testing.T) {
	t.Parallel()
	// Without FCM_APPS_FILE the FCM_* variables are the one app "default".
	s, err := load(map[string]string{"FCM_ENDPOINT": "http://127.0.0.1:9099/v1", "FCM_TIMEOUT": "3s"})
	if err != nil {
		t.Fatal(err)
	}
	want := []fcm.App{{Name: "default", RatePerMinute: 600_000, FCM: fcm.Config{
		ProjectID: "notify-dev", Endpoint: "http://127.0.0.1:9099/v1", Timeout: 3 * time.Second,
	}}}
	if diff := cmp.Diff(want, s.Apps); diff != "" {
		t.Errorf("apps without a file (-want +got):\n%s", diff)
	}
	s, err = load(map[string]string{"FCM_ENDPOINT": "http://127.0.0.1:9099/v1", "FCM_RATE_PER_MINUTE": "3000"})
	if err != nil || len(s.Apps) != 1 || s.Apps[0].RatePerMinute != 3000 {
		t.Errorf("FCM_RATE_PER_MINUTE=3000: apps %+v (%v)", s.Apps, err)
	}

	dir := t.TempDir()
	file := filepath.Join(dir, "apps.yaml")
	if err := os.WriteFile(file, []byte(`
- {name: default, project_id: a, endpoint: "http://127.0.0.1:9099/v1"}
- {name: staff, project_id: b, endpoint: "http://127.0.0.1:9099/v1", rate_per_minute: 3000}
`), 0o600); err != nil {
		t.Fatal(err)
	}
	s, err = load(map[string]string{"FCM_APPS_FILE": file, "FCM_TIMEOUT": "2s"})
	if err != nil {
		t.Fatal(err)
	}
	want = []fcm.App{
		{Name: "default", RatePerMinute: 600_000, FCM: fcm.Config{ProjectID: "a", Endpoint: "http://127.0.0.1:9099/v1", Timeout: 2 * time.Second}},
		{Name: "staff", RatePerMinute: 3000, FCM: fcm.Config{ProjectID: "b", Endpoint: "http://127.0.0.1:9099/v1", Timeout: 2 * time.Second}},
	}
	if diff := cmp.Diff(want, s.Apps); diff != "" {
		t.Errorf("apps from %s (-want +got):\n%s", file, diff)
	}

	// Both ways at once is ambiguous; a broken file is reported with its entry and field.
	_, err = load(map[string]string{"FCM_APPS_FILE": file, "FCM_ENDPOINT": "http://x/v1"})
	if err == nil || !strings.Contains(err.Error(), "FCM_APPS_FILE: set together with") {
		t.Errorf("FCM_APPS_FILE with FCM_ENDPOINT: %v", err)
	}
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte("- {name: staff, rate_per_minute: -1, endpoint: http://x/v1, project_id: p}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = load(map[string]string{"FCM_APPS_FILE": bad})
	if err == nil || !strings.Contains(err.Error(), `FCM_APPS_FILE: `+bad+`: app 1 ("staff"): rate_per_minute`) {
		t.Errorf("bad apps file: %v", err)
	}
	// Each of the file's problems is a line of its own naming the variable.
	if err := os.WriteFile(bad, []byte("- {name: staff, rate_per_minute: abc, endpoint: http://x/v1, project_id: p}\n- {name: Default, credentials_file: /k.json}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = load(map[string]string{"FCM_APPS_FILE": bad})
	wantLines := []string{
		`FCM_APPS_FILE: ` + bad + `: app 1 ("staff"): rate_per_minute: "abc": want a whole number (line 1)`,
		`FCM_APPS_FILE: ` + bad + `: app 2 ("Default"): name: "Default": want lowercase letters, digits, '-' and '_', starting with a letter or digit (line 2)`,
	}
	if err == nil {
		t.Errorf("apps file with two problems: no error")
	} else if diff := cmp.Diff(wantLines, strings.Split(err.Error(), "\n")); diff != "" {
		t.Errorf("apps file with two problems (-want +got):\n%s", diff)
	}
	// A file that cannot be read is named once: it said "FCM_APPS_FILE: FCM_APPS_FILE: open …".
	missing := filepath.Join(dir, "missing.yaml")
	_, err = load(map[string]string{"FCM_APPS_FILE": missing})
	if err == nil || err.Error() != "FCM_APPS_FILE: open "+missing+": no such file or directory" {
		t.Errorf("missing apps file: %v, want FCM_APPS_FILE: open %s: no such file or directory", err, missing)
	}
}
