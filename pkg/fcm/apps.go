package fcm

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
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

// appFields are the fields an app may have, as written in the file.
const appFields = "name, project_id, credentials_file or endpoint, rate_per_minute"

var errNoApps = errors.New("no apps: want a list of apps (" + appFields + ")")

// appEntry is one element of an apps file as written, with where each field is.
type appEntry struct {
	Name            string
	ProjectID       string
	CredentialsFile string
	Endpoint        string
	RatePerMinute   *int

	line    int             // the entry's first line, for problems of no one field
	lines   map[string]int  // each field's line; nil when the entry is not a mapping
	invalid map[string]bool // fields whose value could not be read (already reported)
}

// at is the line of field, or of the entry when the field is not set.
func (e appEntry) at(field string) int {
	if l, ok := e.lines[field]; ok {
		return l
	}
	return e.line
}

// entryError is one thing wrong with an entry: the field ("" for the entry as a whole), the
// line and what is wrong.
type entryError struct {
	field string
	line  int
	msg   string
}

// LoadApps reads an apps file (FCM_APPS_FILE): a YAML or JSON list of apps, each with name,
// project_id, credentials_file and/or endpoint, and rate_per_minute (default
// DefaultRatePerMinute). Every problem is reported at once, one line each (errors.Join),
// each naming the variable, the file, the entry, the field and the line. base carries the
// settings shared by every app (Timeout, MaxConnsPerHost).
func LoadApps(path string, base Config) ([]App, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("FCM_APPS_FILE: %w", err)
	}
	apps, err := ParseApps(b, base)
	if err != nil {
		joined, ok := err.(interface{ Unwrap() []error })
		if !ok {
			return nil, fmt.Errorf("FCM_APPS_FILE %s: %w", path, err)
		}
		var errs []error
		for _, e := range joined.Unwrap() {
			errs = append(errs, fmt.Errorf("FCM_APPS_FILE %s: %w", path, e))
		}
		return nil, errors.Join(errs...)
	}
	return apps, nil
}

// ParseApps parses the contents of an apps file; see LoadApps.
//
// The file is read as YAML nodes and each entry decoded field by field, rather than
// unmarshalled into a struct: the struct decoder stops at the first error and words it in
// Go types ("field bogus not found in type fcm.appEntry", "cannot unmarshal !!str into
// int"), while here a wrong field is one more problem of its entry, reported with the
// others. Only a file that is not YAML at all is reported alone.
func ParseApps(b []byte, base Config) ([]App, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(b, &doc); err != nil {
		return nil, fmt.Errorf("want a YAML or JSON list of apps: %w", err)
	}
	if len(doc.Content) == 0 || isNull(doc.Content[0]) {
		return nil, errNoApps
	}
	list := resolve(doc.Content[0])
	if list.Kind != yaml.SequenceNode {
		return nil, fmt.Errorf("want a YAML or JSON list of apps (%s), got %s (line %d)", appFields, describe(list), list.Line)
	}
	if len(list.Content) == 0 {
		return nil, errNoApps
	}
	var errs []error
	apps := make([]App, 0, len(list.Content))
	seen := make(map[string]int)
	projects := make(map[string]string)
	for i, n := range list.Content {
		e, problems := decodeEntry(n)
		where := fmt.Sprintf("app %d", i+1)
		if e.Name != "" {
			where = fmt.Sprintf("app %d (%q)", i+1, e.Name)
		}
		report := func(p entryError) {
			if p.field == "" {
				errs = append(errs, fmt.Errorf("%s: %s (line %d)", where, p.msg, p.line))
				return
			}
			errs = append(errs, fmt.Errorf("%s: %s: %s (line %d)", where, p.field, p.msg, p.line))
		}
		for _, p := range problems {
			report(p)
		}
		if e.lines == nil {
			continue // not a mapping: nothing more to say
		}
		problem := func(field, format string, args ...any) {
			report(entryError{field: field, line: e.at(field), msg: fmt.Sprintf(format, args...)})
		}
		if !e.invalid["name"] {
			if err := schema.CheckAppName(e.Name); err != nil {
				problem("name", "%v", err)
			} else if j, dup := seen[e.Name]; dup {
				problem("name", "already used by app %d", j+1)
			}
			seen[e.Name] = i
		}
		a := App{Name: e.Name, FCM: base, RatePerMinute: DefaultRatePerMinute}
		a.FCM.ProjectID, a.FCM.CredentialsFile, a.FCM.Endpoint = e.ProjectID, e.CredentialsFile, e.Endpoint
		switch {
		case e.invalid["credentials_file"] || e.invalid["endpoint"] || e.invalid["project_id"]:
			// reported above; whether the rest is enough is unknown
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

// decodeEntry decodes one entry of the list, returning what it could read and the
// problems of its form (not a mapping, a field unknown or of the wrong kind), ordered by
// line. Fields with such a problem are left empty and marked invalid; an entry that is
// not a mapping has no lines.
func decodeEntry(n *yaml.Node) (appEntry, []entryError) {
	n = resolve(n)
	if n.Kind != yaml.MappingNode {
		return appEntry{line: n.Line}, []entryError{{line: n.Line, msg: fmt.Sprintf("want a mapping of fields (%s), got %s", appFields, describe(n))}}
	}
	e := appEntry{line: n.Line, lines: map[string]int{}, invalid: map[string]bool{}}
	var problems []entryError
	values := map[string]*yaml.Node{}
	var names, merges []*yaml.Node // field names in the order written; "<<" keys
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := resolve(n.Content[i]), n.Content[i+1]
		switch _, dup := values[k.Value]; {
		case k.Kind != yaml.ScalarNode:
			problems = append(problems, entryError{line: k.Line, msg: "want a field name, got " + describe(k)})
		case k.Tag == "!!merge":
			merges = append(merges, n.Content[i], v)
		case dup:
			problems = append(problems, entryError{field: k.Value, line: k.Line,
				msg: fmt.Sprintf("set twice (first at line %d)", e.lines[k.Value])})
		default:
			values[k.Value], e.lines[k.Value] = v, k.Line
			names = append(names, k)
		}
	}
	// "<<: *anchor" adds the anchor's fields the entry does not set itself; the decoder knows
	// the rules (a mapping or a list of them).
	for i := 0; i < len(merges); i += 2 {
		var merged map[string]yaml.Node
		m := &yaml.Node{Kind: yaml.MappingNode, Content: merges[i : i+2]}
		if err := m.Decode(&merged); err != nil {
			problems = append(problems, entryError{field: "<<", line: merges[i].Line, msg: strings.TrimPrefix(err.Error(), "yaml: ")})
			continue
		}
		var added []*yaml.Node
		for name, v := range merged {
			if _, set := values[name]; !set {
				values[name], e.lines[name] = &v, v.Line
				added = append(added, &yaml.Node{Value: name, Line: v.Line})
			}
		}
		slices.SortFunc(added, func(a, b *yaml.Node) int { return cmp.Or(cmp.Compare(a.Line, b.Line), cmp.Compare(a.Value, b.Value)) })
		names = append(names, added...)
	}
	for _, k := range names {
		name, v := k.Value, values[k.Value]
		bad := func(format string, args ...any) {
			problems = append(problems, entryError{field: name, line: e.lines[name], msg: fmt.Sprintf(format, args...)})
			e.invalid[name] = true
		}
		var s *string
		switch name {
		case "name":
			s = &e.Name
		case "project_id":
			s = &e.ProjectID
		case "credentials_file":
			s = &e.CredentialsFile
		case "endpoint":
			s = &e.Endpoint
		case "rate_per_minute":
			var r int
			switch {
			case isNull(v): // the default
			case resolve(v).Tag != "!!int" || v.Decode(&r) != nil:
				// By tag: the decoder would take 1.5 as 1.
				bad("%s: want a whole number", describe(v))
			default:
				e.RatePerMinute = &r
			}
			continue
		default:
			bad("unknown field; want %s", appFields)
			continue
		}
		switch v := resolve(v); {
		case isNull(v):
		case v.Kind == yaml.ScalarNode:
			*s = v.Value
		default:
			bad("want a string, got %s", describe(v))
		}
	}
	slices.SortStableFunc(problems, func(a, b entryError) int { return cmp.Compare(a.line, b.line) })
	return e, problems
}

// resolve returns the node an alias (*anchor) stands for, or n itself.
func resolve(n *yaml.Node) *yaml.Node {
	for n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	return n
}

func isNull(n *yaml.Node) bool {
	n = resolve(n)
	return n.Kind == yaml.ScalarNode && n.Tag == "!!null"
}

// describe says what a node is in the file's terms: a scalar quoted as written, otherwise
// its YAML kind.
func describe(n *yaml.Node) string {
	n = resolve(n)
	switch n.Kind {
	case yaml.SequenceNode:
		return "a list"
	case yaml.MappingNode:
		return "a mapping"
	case yaml.ScalarNode:
		if n.Tag == "!!null" {
			return "nothing"
		}
		return strconv.Quote(n.Value)
	}
	return "nothing"
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

// String lists the apps and the projects they send to, for the start-up log: an app
// without a project_id of its own (FCM_PROJECT_ID empty) shows its credentials file's.
func (a *Apps) String() string {
	parts := make([]string, 0, len(a.names))
	for _, n := range a.names {
		project := a.apps[n].FCM.ProjectID
		if c := a.clients[n]; c != nil && c.project != "" {
			project = c.project
		}
		parts = append(parts, n+"="+project)
	}
	return strings.Join(parts, ",")
}
