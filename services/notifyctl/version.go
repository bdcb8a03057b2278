package main

import (
	"context"
	"fmt"
	"runtime"
	"runtime/debug"

	"github.com/spf13/cobra"
)

// version is what this binary was built from: the go command stamps the module version
// and the VCS state into every binary it builds, so no -ldflags are needed.
type version struct {
	version, commit, commitTime, goVersion string
	modified                               bool
}

func buildVersion() version {
	v := version{version: "(devel)", commit: "unknown", goVersion: runtime.Version()}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return v
	}
	if bi.Main.Version != "" {
		v.version = bi.Main.Version
	}
	v.goVersion = bi.GoVersion
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			v.commit = s.Value
		case "vcs.time":
			v.commitTime = s.Value
		case "vcs.modified":
			v.modified = s.Value == "true"
		}
	}
	return v
}

func (v version) String() string {
	commit := v.commit
	if v.commitTime != "" {
		commit += " " + v.commitTime
	}
	if v.modified {
		commit += " (modified)"
	}
	return fmt.Sprintf("%s, commit %s, %s %s/%s", v.version, commit, v.goVersion, runtime.GOOS, runtime.GOARCH)
}

func (v version) tree() map[string]any {
	return map[string]any{
		"version":    v.version,
		"commit":     v.commit,
		"commitTime": v.commitTime,
		"modified":   v.modified,
		"goVersion":  v.goVersion,
		"platform":   runtime.GOOS + "/" + runtime.GOARCH,
	}
}

func (c *cli) versionCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version, commit and Go version notifyctl was built with (also --version)",
		Args:  positional(0, ""),
		RunE: c.action(func(context.Context, []string) error {
			v := buildVersion()
			if c.output == formatTable {
				fmt.Fprintf(c.out, "notifyctl %s\n", v)
				return nil
			}
			return c.printTree(v.tree())
		}),
	}
}
