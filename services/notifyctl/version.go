package main

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"

	"notify/pkg/buildinfo"
)

func (c *cli) versionCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version, commit and Go version notifyctl was built with (also --version)",
		Args:  positional(0, ""),
		RunE: c.action(func(context.Context, []string) error {
			v := buildinfo.Read()
			if c.output == formatTable {
				fmt.Fprintf(c.out, "notifyctl %s\n", v)
				return nil
			}
			return c.printTree(map[string]any{
				"version": v.Version, "commit": v.Commit, "commitTime": v.Time, "modified": v.Modified,
				"goVersion": v.GoVersion, "platform": v.Platform,
			})
		}),
	}
}
