package fcm_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"notify/pkg/fcm"
)

func TestParseApps(t *testing.T) {
	t.Parallel()
	base := fcm.Config{Timeout: 3 * time.Second}
	app := func(name, project, creds, endpoint string, rate int) fcm.App {
		return fcm.App{Name: name, RatePerMinute: rate, FCM: fcm.Config{
			ProjectID: project, CredentialsFile: creds, Endpoint: endpoint, Timeout: 3 * time.Second,
		}}
	}
	tests := []struct {
		name    string
		file    string
		want    []fcm.App
		wantErr []string // each must appear in the error
	}{
		{
			name: "yaml",
			file: `
- name: customer
  project_id: customer-prod
  credentials_file: /secrets/customer.json
- name: staff
  endpoint: http://127.0.0.1:9099/v1
  project_id: staff-dev
  rate_per_minute: 3000
`,
			want: []fcm.App{
				app("customer", "customer-prod", "/secrets/customer.json", "", fcm.DefaultRatePerMinute),
				app("staff", "staff-dev", "", "http://127.0.0.1:9099/v1", 3000),
			},
		},
		{
			name: "json",
			file: `[{"name":"a","credentials_file":"/k.json"},{"name":"b-2","project_id":"p","endpoint":"https://fcm.example/v1","rate_per_minute":1}]`,
			want: []fcm.App{
				app("a", "", "/k.json", "", fcm.DefaultRatePerMinute),
				app("b-2", "p", "", "https://fcm.example/v1", 1),
			},
		},
		{name: "empty", file: "", wantErr: []string{"no apps"}},
		{name: "empty list", file: "[]", wantErr: []string{"no apps"}},
		{name: "not a list", file: `name: a`, wantErr: []string{"want a YAML or JSON list"}},
		{name: "unknown field", file: `[{"name":"a","endpoint":"http://x/v1","project_id":"p","rate":5}]`, wantErr: []string{"rate"}},
		{
			name: "every problem, naming entry and field",
			file: `
- name: Customer
  endpoint: http://x/v1
  project_id: p1
- name: staff
- name: staff
  endpoint: ftp://x
  project_id: p2
- endpoint: http://x/v1
- name: ops
  endpoint: http://x/v1
  project_id: p1
  rate_per_minute: 0
`,
			wantErr: []string{
				`app 1 ("Customer"): name: "Customer": want lowercase`,
				`app 2 ("staff"): credentials_file: neither credentials_file nor endpoint`,
				`app 3 ("staff"): name: already used by app 2`,
				`app 3 ("staff"): endpoint: "ftp://x": want an http(s) URL`,
				`app 4: name: required`,
				`app 4: project_id: required with endpoint`,
				`app 5 ("ops"): project_id: "p1" is app "Customer"'s too`,
				`app 5 ("ops"): rate_per_minute: 0: want at least 1`,
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, err := fcm.ParseApps([]byte(tc.file), base)
			if tc.wantErr != nil {
				if err == nil {
					t.Fatalf("ParseApps = %+v, want an error", got)
				}
				for _, w := range tc.wantErr {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error %q does not contain %q", err, w)
					}
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseApps: %v", err)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("apps (-want +got):\n%s", diff)
			}
		})
	}
}

func TestLoadAppsNamesTheFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	if _, err := fcm.LoadApps(filepath.Join(dir, "missing.yaml"), fcm.Config{}); err == nil || !strings.Contains(err.Error(), "FCM_APPS_FILE") {
		t.Errorf("missing file: %v, want an error naming FCM_APPS_FILE", err)
	}
	path := filepath.Join(dir, "apps.yaml")
	if err := os.WriteFile(path, []byte("- name: a\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := fcm.LoadApps(path, fcm.Config{})
	if err == nil || !strings.Contains(err.Error(), "FCM_APPS_FILE "+path+": app 1 (\"a\")") {
		t.Errorf("bad file: %v, want an error naming the file and the entry", err)
	}
}

func TestNewAppsOneClientPerApp(t *testing.T) {
	t.Parallel()
	apps, err := fcm.NewApps(t.Context(), []fcm.App{
		{Name: "b", FCM: fcm.Config{ProjectID: "pb", Endpoint: "http://127.0.0.1:1/v1"}, RatePerMinute: 5},
		{Name: "a", FCM: fcm.Config{ProjectID: "pa", Endpoint: "http://127.0.0.1:1/v1"}, RatePerMinute: 6},
	})
	if err != nil {
		t.Fatalf("NewApps: %v", err)
	}
	if diff := cmp.Diff([]string{"a", "b"}, apps.Names()); diff != "" {
		t.Errorf("names (-want +got):\n%s", diff)
	}
	ca, _ := apps.Client("a")
	cb, _ := apps.Client("b")
	if ca == nil || cb == nil || ca == cb {
		t.Errorf("clients a %p, b %p: want two distinct clients", ca, cb)
	}
	if _, ok := apps.Client("c"); ok {
		t.Errorf("Client(c) found an app that is not configured")
	}
	if a, _ := apps.App("b"); a.RatePerMinute != 5 {
		t.Errorf("App(b).RatePerMinute = %d, want 5", a.RatePerMinute)
	}
	_, err = fcm.NewApps(t.Context(), []fcm.App{{Name: "bad", FCM: fcm.Config{}}})
	if err == nil || !strings.Contains(err.Error(), `app "bad"`) {
		t.Errorf("NewApps with a broken app: %v, want an error naming it", err)
	}
}
