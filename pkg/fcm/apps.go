package fcm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"

	"go.yaml.in/yaml/v3"

	"notify/pkg/schema"
)

// DefaultApp is the app the FCM_* variables define, and the app of every device,
// notification and API key that names none.
const DefaultApp = schema.DefaultApp

// DefaultRatePerMinute is FCM's default per-project quota: 600,000 messages a minute,
// errors included.
const DefaultRatePerMinute = 600_000

// App is one Firebase project notify sends for.
type App struct {
	// Name is how devices, notifications, API keys and metrics refer to the app: 1 to 63
	// lowercase letters, digits, '-' and '_', starting with a letter or digit.
	Name string
	// FCM says where the project is and how to authenticate (ProjectID, CredentialsFile,
	// Endpoint); its connection settings are shared by every app.
	FCM Config
	// RatePerMinute is the project's FCM quota: every sender and retrier together send at
	// most this many messages a minute for the app.
	RatePerMinute int
}

// appEntry is one element of an apps file as written.
type appEntry struct {
	Name            string `yaml:"name"`
	ProjectID       string `yaml:"project_id"`
	CredentialsFile string `yaml:"credentials_file"`
	Endpoint        string `yaml:"endpoint"`
	RatePerMinute   *int   `yaml:"rate_per_minute"`
}

// LoadApps reads an apps file (FCM_APPS_FILE): a YAML or JSON list of apps, each with name,
// project_id, credentials_file and/or endpoint, and rate_per_minute (default
// DefaultRatePerMinute). Every problem is reported at once, each naming the file, the entry
// and the field. base carries the settings shared by every app (Timeout, MaxConnsPerHost).
func LoadApps(path string, base Config) ([]App, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("FCM_APPS_FILE: %w", err)
	}
	apps, err := ParseApps(b, base)
	if err != nil {
		return nil, fmt.Errorf("FCM_APPS_FILE %s: %w", path, err)
	}
	return apps, nil
}

// ParseApps parses the contents of an apps file; see LoadApps.
func ParseApps(b []byte, base Config) ([]App, error) {
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true) // a misspelt field is an error, not a silent default
	var entries []appEntry
	if err := dec.Decode(&entries); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, errors.New("no apps: want a list of apps (name, project_id, credentials_file or endpoint, rate_per_minute)")
		}
		return nil, fmt.Errorf("want a YAML or JSON list of apps: %w", err)
	}
	if len(entries) == 0 {
		return nil, errors.New("no apps: want a list of apps (name, project_id, credentials_file or endpoint, rate_per_minute)")
	}
	var errs []error
	apps := make([]App, 0, len(entries))
	seen := make(map[string]int)
	projects := make(map[string]string)
	for i, e := range entries {
		where := fmt.Sprintf("app %d", i+1)
		if e.Name != "" {
			where = fmt.Sprintf("app %d (%q)", i+1, e.Name)
		}
		problem := func(field, format string, args ...any) {
			errs = append(errs, fmt.Errorf("%s: %s: %s", where, field, fmt.Sprintf(format, args...)))
		}
		if err := schema.CheckAppName(e.Name); err != nil {
			problem("name", "%v", err)
		} else if j, dup := seen[e.Name]; dup {
			problem("name", "already used by app %d", j+1)
		}
		seen[e.Name] = i
		a := App{Name: e.Name, FCM: base, RatePerMinute: DefaultRatePerMinute}
		a.FCM.ProjectID, a.FCM.CredentialsFile, a.FCM.Endpoint = e.ProjectID, e.CredentialsFile, e.Endpoint
		switch {
		case e.CredentialsFile == "" && e.Endpoint == "":
			problem("credentials_file", "neither credentials_file nor endpoint is set; set credentials_file to a "+
				"Firebase service-account key file, or endpoint to an FCM-compatible URL such as the fcm-emulator's")
		case e.CredentialsFile == "" && e.ProjectID == "":
			problem("project_id", "required with endpoint and no credentials_file")
		}
		if e.Endpoint != "" {
			if err := CheckEndpoint(e.Endpoint); err != nil {
				problem("endpoint", "%v", err)
			}
		}
		if e.ProjectID != "" {
			if other, dup := projects[e.ProjectID]; dup {
				problem("project_id", "%q is app %q's too; one project has one quota, so it is one app", e.ProjectID, other)
			}
			projects[e.ProjectID] = e.Name
		}
		if e.RatePerMinute != nil {
			a.RatePerMinute = *e.RatePerMinute
			if a.RatePerMinute < 1 {
				problem("rate_per_minute", "%d: want at least 1 (FCM's default quota is %d)", a.RatePerMinute, DefaultRatePerMinute)
			}
		}
		apps = append(apps, a)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return apps, nil
}

// Apps is one Client per app, by name. It is safe for concurrent use.
type Apps struct {
	clients map[string]*Client
	apps    map[string]App
	names   []string
}

// NewApps builds a Client for each app; every app's problem is reported at once, naming it.
func NewApps(ctx context.Context, apps []App) (*Apps, error) {
	a := &Apps{clients: make(map[string]*Client, len(apps)), apps: make(map[string]App, len(apps))}
	var errs []error
	for _, app := range apps {
		c, err := New(ctx, app.FCM)
		if err != nil {
			errs = append(errs, fmt.Errorf("app %q: %w", app.Name, err))
			continue
		}
		a.clients[app.Name] = c
		a.apps[app.Name] = app
		a.names = append(a.names, app.Name)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	slices.Sort(a.names)
	return a, nil
}

// NewAppsOf returns an Apps of ready clients (tests and benchmarks).
func NewAppsOf(clients map[string]*Client, apps ...App) *Apps {
	a := &Apps{clients: clients, apps: make(map[string]App)}
	for name := range clients {
		a.names = append(a.names, name)
	}
	for _, app := range apps {
		a.apps[app.Name] = app
	}
	slices.Sort(a.names)
	return a
}

// Client returns the app's client, or false for an app that is not configured.
func (a *Apps) Client(name string) (*Client, bool) {
	c, ok := a.clients[name]
	return c, ok
}

// App returns the app's configuration.
func (a *Apps) App(name string) (App, bool) {
	app, ok := a.apps[name]
	return app, ok
}

// Names returns the configured apps' names, sorted.
func (a *Apps) Names() []string { return slices.Clone(a.names) }

// String lists the apps and their projects, for the start-up log.
func (a *Apps) String() string {
	parts := make([]string, 0, len(a.names))
	for _, n := range a.names {
		parts = append(parts, n+"="+a.apps[n].FCM.ProjectID)
	}
	return strings.Join(parts, ",")
}
