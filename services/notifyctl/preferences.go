package main

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"

	notifyv1 "notify/proto/gen/notify/v1"
)

func (c *cli) preferencesCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "preferences",
		Aliases: []string{"prefs"},
		Short:   "Show and set the notification types a user muted",
		RunE:    group,
	}
	cmd.AddCommand(c.preferencesGetCommand(), c.preferencesSetCommand())
	return cmd
}

func (c *cli) preferencesGetCommand() *cobra.Command {
	var user string
	cmd := &cobra.Command{
		Use:   "get --user U",
		Short: "Show the notification types a user muted",
		Long: `Show the notification types a user muted (DeviceService.GetPreferences), one per line,
sorted. A user who muted nothing (or whom notify does not know) has none.`,
		Example: `  notifyctl preferences get --user ana
  notifyctl preferences get --user ana -o json`,
		Args: positional(0, ""),
	}
	cmd.Flags().StringVar(&user, "user", "", "user `id`")
	_ = cmd.MarkFlagRequired("user")
	cmd.RunE = c.action(func(ctx context.Context, _ []string) error {
		conn, callCtx, cancel, err := c.open(ctx)
		if err != nil {
			return err
		}
		defer cancel()
		resp, err := notifyv1.NewDeviceServiceClient(conn).GetPreferences(callCtx, &notifyv1.GetPreferencesRequest{UserId: user})
		if err != nil {
			return err
		}
		return c.emit(resp, func() error { return c.printMuted(user, resp.GetMutedTypes()) })
	})
	return cmd
}

func (c *cli) preferencesSetCommand() *cobra.Command {
	var (
		user  string
		muted []string
		none  bool
	)
	cmd := &cobra.Command{
		Use:   "set --user U (--mute TYPE… | --none)",
		Short: "Replace the notification types a user muted",
		Long: `Replace the notification types a user muted (DeviceService.SetPreferences). The list given is
the whole list: types muted before and not given again are unmuted. --none unmutes everything.
Publish by user ids and broadcasts skip the user's devices for a muted type (outcome
skipped_preference), unless the notification sets ignore_preferences. Prints the list as
stored (sorted, without duplicates).`,
		Example: `  notifyctl preferences set --user ana --mute marketing.weekly --mute comment.liked
  notifyctl preferences set --user ana --mute marketing.weekly,comment.liked
  notifyctl preferences set --user ana --none`,
		Args: positional(0, ""),
	}
	f := cmd.Flags()
	f.StringVar(&user, "user", "", "user `id`")
	f.StringSliceVar(&muted, "mute", nil, "a notification `type` to mute (repeatable, or comma-separated)")
	f.BoolVar(&none, "none", false, "mute nothing: unmute every type")
	_ = cmd.MarkFlagRequired("user")
	cmd.RunE = c.action(func(ctx context.Context, _ []string) error {
		switch {
		case none && len(muted) > 0:
			return usagef("preferences set: give --mute or --none, not both")
		case !none && len(muted) == 0:
			return usagef("preferences set: give the types to mute with --mute, or --none to unmute everything")
		}
		conn, callCtx, cancel, err := c.open(ctx)
		if err != nil {
			return err
		}
		defer cancel()
		resp, err := notifyv1.NewDeviceServiceClient(conn).SetPreferences(callCtx,
			&notifyv1.SetPreferencesRequest{UserId: user, MutedTypes: muted})
		if err != nil {
			return err
		}
		return c.emit(resp, func() error {
			if len(resp.GetMutedTypes()) == 0 {
				// --none: what was done is the answer, not a table without rows (a summary:
				// on stderr with --no-headers, so that stdout has no rows as with get).
				c.summary("user %s mutes no notification type\n", user)
				return nil
			}
			return c.printMuted(user, resp.GetMutedTypes())
		})
	})
	return cmd
}

// printMuted prints a user's muted types as a one-column table; when there are none, it
// says so on stderr (stdout stays a table with no rows, for scripts).
func (c *cli) printMuted(user string, muted []string) error {
	tw := c.table("MUTED TYPE")
	for _, t := range muted {
		fmt.Fprintln(tw, t)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(muted) == 0 {
		fmt.Fprintf(c.errOut, "user %s mutes no notification type\n", user)
	}
	return nil
}
