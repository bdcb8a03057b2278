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
		name      string
		file      string
		want      []fcm.App
		wantErr   []string // each must appear in the error
		wantLines int      // when set, the number of problems (lines) the error has
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
		{name: "not a list", file: `name: a`, wantErr: []string{"want a YAML or JSON list of apps (name, project_id, credentials_file or endpoint, rate_per_minute), got a mapping (line 1)"}},
		{name: "not yaml", file: "- {name: a\n", wantErr: []string{"want a YAML or JSON list of apps: yaml: line 1:"}},
		{
			name: "unknown field",
			file: `
- name: a
  bogus: 1
  endpoint: http://x/v1
  project_id: p
`,
			wantErr: []string{`app 1 ("a"): bogus: unknown field; want name, project_id, credentials_file or endpoint, rate_per_minute (line 3)`},
		},
		{
			name:    "unknown field, json",
			file:    `[{"name":"a","endpoint":"http://x/v1","project_id":"p","rate":5}]`,
			wantErr: []string{`app 1 ("a"): rate: unknown field; want name,`},
		},
		{
			name: "rate not a number",
			file: `
- name: a
  endpoint: http://x/v1
  project_id: p
  rate_per_minute: abc
`,
			wantErr: []string{`app 1 ("a"): rate_per_minute: "abc": want a whole number (line 5)`},
		},
		{
			name: "decode and semantic problems together",
			file: `
- name: a
  endpoint: http://x/v1
  bogus: 1
  project_id: p
  rate_per_minute: 1.5
- name: Default
  endpoint: http://x/v1
  project_id: q
- name: [b]
  credentials_file: /k.json
- just a word
- name: c
  name: d
  credentials_file: {path: /k.json}
`,
			wantErr: []string{
				`app 1 ("a"): bogus: unknown field; want name, project_id, credentials_file or endpoint, rate_per_minute (line 4)`,
				`app 1 ("a"): rate_per_minute: "1.5": want a whole number (line 6)`,
				`app 2 ("Default"): name: "Default": want lowercase`,
				`app 3: name: want a string, got a list (line 10)`,
				`app 4: want a mapping of fields (name, project_id, credentials_file or endpoint, rate_per_minute), got "just a word" (line 12)`,
				`app 5 ("c"): name: set twice (first at line 13) (line 14)`,
				`app 5 ("c"): credentials_file: want a string, got a mapping (line 15)`,
			},
			wantLines: 7,
		},
		{
			// Only "name: [b]" is reported of app 3: not also "name: required".
			name:      "a field that cannot be read is reported once",
			file:      "- {name: [b], credentials_file: /k.json}\n",
			wantErr:   []string{`app 1: name: want a string, got a list (line 1)`},
			wantLines: 1,
		},
		{
			name: "an unknown anchor",
			file: `
- &emu {name: a, endpoint: "http://x/v1", project_id: pa, rate_per_minute: 600_000}
- <<: *emu
  name: b
  project_id: pb
- {name: c, endpoint: *e, project_id: pc}
`,
			wantErr: []string{"unknown anchor"},
		},
		{
			name: "anchors and merge keys, defined",
			file: `
- &emu {name: a, endpoint: &e "http://x/v1", project_id: pa, rate_per_minute: 600_000}
- <<: *emu
  name: b
  project_id: pb
- {name: c, endpoint: *e, project_id: pc, rate_per_minute: ~}
`,
			want: []fcm.App{
				app("a", "pa", "", "http://x/v1", 600_000),
				app("b", "pb", "", "http://x/v1", 600_000),
				app("c", "pc", "", "http://x/v1", fcm.DefaultRatePerMinute),
			},
		},
		{
			name:      "a merge of something not a mapping",
			file:      "- {<<: 5, name: a, credentials_file: /k.json}\n",
			wantErr:   []string{`app 1 ("a"): <<: map merge requires map or sequence of maps as the value (line 1)`},
			wantLines: 1,
		},
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
				// The file's terms, not the decoder's: no Go types, no YAML tags.
				for _, internal := range []string{"fcm.", "appEntry", "unmarshal", "!!", "into ", "type "} {
					if strings.Contains(err.Error(), internal) {
						t.Errorf("error %q mentions %q", err, internal)
					}
				}
				if lines := strings.Count(err.Error(), "\n") + 1; tc.wantLines != 0 && lines != tc.wantLines {
					t.Errorf("error has %d lines, want %d:\n%s", lines, tc.wantLines, err)
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
	// Every problem is a line of its own naming the variable and the file.
	if err := os.WriteFile(path, []byte("- {name: a, bogus: 1}\n- {name: Default, endpoint: http://x/v1}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = fcm.LoadApps(path, fcm.Config{})
	if err == nil {
		t.Fatal("LoadApps of a file with problems: no error")
	}
	lines := strings.Split(err.Error(), "\n")
	if len(lines) != 4 {
		t.Errorf("error has %d lines, want 4 (a: bogus, credentials_file; Default: name, project_id):\n%s", len(lines), err)
	}
	for _, l := range lines {
		if !strings.HasPrefix(l, "FCM_APPS_FILE "+path+": app ") {
			t.Errorf("line %q does not start with FCM_APPS_FILE %s: app", l, path)
		}
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
