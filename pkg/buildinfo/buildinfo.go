// Package buildinfo says which build of notify is running: for --version, and for
// anything else (a metric, a log line) that should name the build.
//
// The Go toolchain stamps the module version and the VCS revision into every binary built
// from a git checkout (runtime/debug.ReadBuildInfo); builds without one (an image built from
// a source tarball) can set them with
//
//	-ldflags "-X notify/pkg/buildinfo.version=v1.2.3 -X notify/pkg/buildinfo.commit=abc1234"
//
// which `make build` does from `git describe`.
package buildinfo

import (
	"fmt"
	"runtime"
	"runtime/debug"
	"strings"
)

// Set by -ldflags -X; they take precedence over what the toolchain stamped.
var (
	version string
	commit  string
)

// Info describes one build.
type Info struct {
	Version   string // module version or -X version; "(devel)" when unknown
	Commit    string // VCS revision; "" when unknown
	Time      string // commit time (RFC 3339); "" when unknown
	Modified  bool   // built from a checkout with uncommitted changes
	GoVersion string // e.g. go1.26.0
	Platform  string // GOOS/GOARCH
}

// Read returns the running binary's build information.
func Read() Info {
	i := Info{Version: "(devel)", GoVersion: runtime.Version(), Platform: runtime.GOOS + "/" + runtime.GOARCH}
	if bi, ok := debug.ReadBuildInfo(); ok {
		if bi.Main.Version != "" {
			i.Version = bi.Main.Version
		}
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				i.Commit = s.Value
			case "vcs.time":
				i.Time = s.Value
			case "vcs.modified":
				i.Modified = s.Value == "true"
			}
		}
	}
	if version != "" {
		i.Version = version
	}
	if commit != "" {
		i.Commit = commit
	}
	return i
}

// String is one line: version, commit (shortened), commit time, whether modified, Go
// version and platform, leaving out what is unknown.
func (i Info) String() string {
	var b strings.Builder
	b.WriteString(i.Version)
	if i.Commit != "" {
		fmt.Fprintf(&b, " commit %s", short(i.Commit))
		if i.Time != "" {
			fmt.Fprintf(&b, " (%s)", i.Time)
		}
		if i.Modified {
			b.WriteString(" modified")
		}
	}
	fmt.Fprintf(&b, " %s %s", i.GoVersion, i.Platform)
	return b.String()
}

func short(commit string) string {
	if len(commit) > 12 {
		return commit[:12]
	}
	return commit
}
