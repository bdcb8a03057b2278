package main

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	notifyv1 "notify/proto/gen/notify/v1"
)

// maxPageSize is the server's largest page.
const maxPageSize = 1000

// parseWhen reads --since/--until: a duration ago ("90m", "1h", "7d"), an RFC 3339 time,
// or a date ("2026-11-30": its midnight in the local time zone, in which notifyctl shows
// times too).
func parseWhen(flagName, s string, now time.Time) (*timestamppb.Timestamp, error) {
	if s == "" {
		return nil, nil
	}
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return timestamppb.New(t), nil
	}
	if t, err := time.ParseInLocation(time.DateOnly, s, now.Location()); err == nil {
		return timestamppb.New(t), nil
	}
	d, err := parseDays(s)
	if err != nil || d < 0 {
		return nil, usagef("--%s %q: want a duration ago (90m, 1h, 7d), an RFC 3339 time or a date (2026-11-30)", flagName, s)
	}
	return timestamppb.New(now.Add(-d)), nil
}

// parseWindow reads --since and --until (see parseWhen), the second after the first.
func parseWindow(cmd, since, until string, now time.Time) (start, end *timestamppb.Timestamp, err error) {
	if start, err = parseWhen("since", since, now); err != nil {
		return nil, nil, err
	}
	if end, err = parseWhen("until", until, now); err != nil {
		return nil, nil, err
	}
	if start != nil && end != nil && !end.AsTime().After(start.AsTime()) {
		return nil, nil, usagef("%s: --until %s is not after --since %s", cmd, until, since)
	}
	return start, end, nil
}

// parseDays is time.ParseDuration that also takes whole days ("7d"), as every duration
// flag of notifyctl does.
func parseDays(s string) (time.Duration, error) {
	days, ok := strings.CutSuffix(s, "d")
	if !ok {
		return time.ParseDuration(s)
	}
	n, err := strconv.Atoi(days)
	if err != nil {
		return 0, err
	}
	return time.Duration(n) * 24 * time.Hour, nil
}

// daysValue is a duration flag that takes whole days too (see parseDays).
type daysValue struct{ d *time.Duration }

func (v daysValue) String() string {
	if v.d == nil || *v.d == 0 {
		return "0" // pflag's zero: no "(default …)" in the help
	}
	return v.d.String()
}

func (v daysValue) Set(s string) error {
	d, err := parseDays(s)
	if err != nil {
		return fmt.Errorf("want a duration such as 90m, 2h or 7d")
	}
	*v.d = d
	return nil
}

func (daysValue) Type() string { return "duration" }

var statusFlags = map[string]notifyv1.NotificationStatus{
	"pending":   notifyv1.NotificationStatus_NOTIFICATION_STATUS_PENDING,
	"retrying":  notifyv1.NotificationStatus_NOTIFICATION_STATUS_RETRYING,
	"delivered": notifyv1.NotificationStatus_NOTIFICATION_STATUS_DELIVERED,
	"failed":    notifyv1.NotificationStatus_NOTIFICATION_STATUS_FAILED,
	"expired":   notifyv1.NotificationStatus_NOTIFICATION_STATUS_EXPIRED,
	"scheduled": notifyv1.NotificationStatus_NOTIFICATION_STATUS_SCHEDULED,
	"cancelled": notifyv1.NotificationStatus_NOTIFICATION_STATUS_CANCELLED,
}

// enumValue is the value of flag (of command cmd) named by value: as the tables print it
// (high), in any case, or as the API and README spell it (HIGH, PRIORITY_HIGH: apiPrefix is
// "priority_"). The usage error names the value and the choices.
func enumValue[T any](cmd, flag, value, apiPrefix string, values map[string]T, choices string) (T, error) {
	v, ok := values[strings.TrimPrefix(strings.ToLower(value), apiPrefix)]
	if !ok {
		return v, usagef("%s: --%s %q: want %s", cmd, flag, value, choices)
	}
	return v, nil
}

// pageFor is the page size that fetches what remains of limit (0: no limit).
func pageFor(limit, got int) int32 {
	if limit == 0 {
		return maxPageSize
	}
	return int32(min(limit-got, maxPageSize))
}

// morePages says on stderr, after a list that stopped at --limit, how many rows were shown
// and the command line that gets the next page: this one (cmd's flags as given, but for
// --api-key, which is a secret, and --page-token) with --page-token token.
func (c *cli) morePages(cmd *cobra.Command, shown int, token string) {
	newest := "the newest "
	if cmd.Flags().Changed("page-token") {
		newest = ""
	}
	fmt.Fprintf(c.errOut, "(showing %s%d; raise --limit, or --limit 0 for all)\n", newest, shown)
	line := []string{cmd.CommandPath()}
	cmd.Flags().Visit(func(f *pflag.Flag) {
		if f.Name == "api-key" || f.Name == "page-token" {
			return
		}
		if f.Value.Type() == "bool" {
			if f.Value.String() == "true" {
				line = append(line, "--"+f.Name)
			} else {
				line = append(line, "--"+f.Name+"=false")
			}
			return
		}
		values := []string{f.Value.String()}
		if sv, ok := f.Value.(pflag.SliceValue); ok {
			values = sv.GetSlice()
		}
		for _, v := range values {
			line = append(line, "--"+f.Name, shellQuote(v))
		}
	})
	line = append(line, "--page-token", shellQuote(token))
	fmt.Fprintf(c.errOut, "more: %s\n", strings.Join(line, " "))
}

// shellQuote is s as one word for a POSIX shell: as is when it is plain, else in single quotes.
func shellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-./:@,+=%") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

func (c *cli) listCommand() *cobra.Command {
	var (
		st, typ, since, until, pageToken string
		limit                            int
	)
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List notifications, newest first",
		Long: "List notifications (AdminService.ListNotifications), newest first, by status, type and time. " +
			"Its token counts are get's: they add up to TOKENS. " +
			"When there are more than --limit, stderr ends with the command line of the next page (more: … --page-token TOKEN).",
		Example: `  notifyctl list --status failed --since 1h
  notifyctl list --type order.shipped --since 2026-05-01T00:00:00Z --limit 0 -o json`,
		Args: positional(0, ""),
	}
	f := cmd.Flags()
	f.StringVar(&st, "status", "", "only this `status`: scheduled, pending, retrying, delivered, failed, expired or cancelled")
	f.StringVar(&typ, "type", "", "only this notification `type`")
	f.StringVar(&since, "since", "", "created at or after `W`: a duration ago (90m, 1h, 7d), an RFC 3339 time or a date (local midnight)")
	f.StringVar(&until, "until", "", "created before `W`: a duration ago, an RFC 3339 time or a date")
	f.IntVar(&limit, "limit", 50, "at most `N` (0: all)")
	f.StringVar(&pageToken, "page-token", "", "start after the rows of an earlier list: the `token` it printed (more: …) or its nextPageToken")
	enumFlag(cmd, "status", "scheduled", "pending", "retrying", "delivered", "failed", "expired", "cancelled")
	cmd.RunE = c.action(func(ctx context.Context, _ []string) error {
		req := &notifyv1.ListNotificationsRequest{Type: typ, PageToken: pageToken}
		if st != "" {
			s, err := enumValue("list", "status", st, "notification_status_", statusFlags,
				"scheduled, pending, retrying, delivered, failed, expired or cancelled")
			if err != nil {
				return err
			}
			req.Status = s
		}
		var err error
		if req.StartTime, req.EndTime, err = parseWindow("list", since, until, time.Now()); err != nil {
			return err
		}
		if limit < 0 {
			return usagef("list: --limit must be 0 (all) or more")
		}
		conn, err := c.client()
		if err != nil {
			return err
		}
		admin := notifyv1.NewAdminServiceClient(conn)
		all := &notifyv1.ListNotificationsResponse{}
		for {
			req.PageSize = pageFor(limit, len(all.Notifications))
			callCtx, cancel := c.callCtx(ctx)
			resp, err := admin.ListNotifications(callCtx, req)
			cancel()
			if err != nil {
				return err
			}
			all.Notifications = append(all.Notifications, resp.GetNotifications()...)
			all.NextPageToken = resp.GetNextPageToken()
			if all.NextPageToken == "" || (limit > 0 && len(all.Notifications) >= limit) {
				break
			}
			req.PageToken = all.NextPageToken
		}
		if err := c.emit(all, func() error {
			// SEND AT only when a row was scheduled: most lists have none, and the column would
			// be dashes.
			scheduled := slices.ContainsFunc(all.Notifications, func(n *notifyv1.Notification) bool { return n.GetSendTime() != nil })
			header := []string{"ID", "CREATED", "TYPE", "CALLER", "STATUS", "TOKENS", "DELIVERED", "INVALID", "RETRYING", "FAILED", "EXPIRED",
				"SKIPPED", "CANCELLED", "PENDING", "REPLAYS"}
			if scheduled {
				header = slices.Insert(header, 2, "SEND AT")
			}
			tw := c.table(header...)
			for _, n := range all.Notifications {
				k := n.GetCounts()
				sendAt := ""
				if scheduled {
					sendAt = stamp(n.GetSendTime()) + "\t"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s%s\t%s\t%s\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\n", n.GetId(), stamp(n.GetCreateTime()), sendAt,
					n.GetType(), n.GetCaller(), shortStatus(n.GetStatus()), k.GetTotal(), k.GetDelivered(), k.GetInvalid(), k.GetRetrying(),
					k.GetFailed(), k.GetExpired(), k.GetSkipped(), k.GetCancelled(), k.GetPending(), n.GetReplayCount())
			}
			return tw.Flush()
		}); err != nil {
			return err
		}
		if all.NextPageToken != "" {
			c.morePages(cmd, len(all.Notifications), all.NextPageToken)
		}
		if len(all.Notifications) == 0 && pageToken == "" {
			c.explainNoNotifications(ctx, admin, req, window(since, until))
		}
		return nil
	})
	return cmd
}

// deadFilterFlags are the dead-letter filter flags of dead list and replay --dead.
type deadFilterFlags struct{ reason, since, until string }

func (d *deadFilterFlags) add(fs *pflag.FlagSet) {
	fs.StringVar(&d.reason, "reason", "", "only dead letters with this `reason` (e.g. retries_exhausted, permanent_error)")
	fs.StringVar(&d.since, "since", "", "dead-lettered at or after `W`: a duration ago (90m, 1h, 7d), an RFC 3339 time or a date (local midnight)")
	fs.StringVar(&d.until, "until", "", "dead-lettered before `W`: a duration ago, an RFC 3339 time or a date")
}

// filter is the filter the flags give, for command cmd (its messages).
func (d *deadFilterFlags) filter(cmd string) (*notifyv1.DeadLetterFilter, error) {
	f := &notifyv1.DeadLetterFilter{Reason: d.reason}
	var err error
	if f.StartTime, f.EndTime, err = parseWindow(cmd, d.since, d.until, time.Now()); err != nil {
		return nil, err
	}
	return f, nil
}

func (c *cli) deadCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "dead", Short: "Dead letters: what could not be delivered", RunE: group}
	cmd.AddCommand(c.deadListCommand())
	return cmd
}

func (c *cli) deadListCommand() *cobra.Command {
	var (
		filter               deadFilterFlags
		replayed, unreplayed bool
		limit                int
		pageToken            string
	)
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List dead letters, newest first",
		Long: "List dead letters (AdminService.ListDeadLetters), newest first, by reason, time and whether they were replayed. " +
			"When there are more than --limit, stderr ends with the command line of the next page (more: … --page-token TOKEN).",
		Example: "  notifyctl dead list --reason retries_exhausted --since 1h --unreplayed",
		Args:    positional(0, ""),
	}
	f := cmd.Flags()
	filter.add(f)
	f.BoolVar(&replayed, "replayed", false, "only dead letters already replayed")
	f.BoolVar(&unreplayed, "unreplayed", false, "only dead letters not yet replayed")
	f.IntVar(&limit, "limit", 50, "at most `N` (0: all)")
	f.StringVar(&pageToken, "page-token", "", "start after the rows of an earlier list: the `token` it printed (more: …) or its nextPageToken")
	cmd.RunE = c.action(func(ctx context.Context, _ []string) error {
		f, err := filter.filter("dead list")
		if err != nil {
			return err
		}
		switch {
		case replayed && unreplayed:
			return usagef("dead list: give at most one of --replayed and --unreplayed")
		case replayed:
			f.Replayed = proto.Bool(true)
		case unreplayed:
			f.Replayed = proto.Bool(false)
		}
		if limit < 0 {
			return usagef("dead list: --limit must be 0 (all) or more")
		}
		conn, err := c.client()
		if err != nil {
			return err
		}
		admin := notifyv1.NewAdminServiceClient(conn)
		req := &notifyv1.ListDeadLettersRequest{Filter: f, PageToken: pageToken}
		all := &notifyv1.ListDeadLettersResponse{}
		for {
			req.PageSize = pageFor(limit, len(all.DeadLetters))
			callCtx, cancel := c.callCtx(ctx)
			resp, err := admin.ListDeadLetters(callCtx, req)
			cancel()
			if err != nil {
				return err
			}
			all.DeadLetters = append(all.DeadLetters, resp.GetDeadLetters()...)
			all.NextPageToken = resp.GetNextPageToken()
			if all.NextPageToken == "" || (limit > 0 && len(all.DeadLetters) >= limit) {
				break
			}
			req.PageToken = all.NextPageToken
		}
		if err := c.emit(all, func() error {
			tw := c.table("ID", "CREATED", "NOTIFICATION", "REASON", "TOKENS", "ATTEMPTS", "ERROR", "REPLAYED", "BY")
			for _, d := range all.DeadLetters {
				fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%d\t%d\t%s\t%s\t%s\n", d.GetId(), stamp(d.GetCreateTime()), dash(d.GetNotificationId()),
					d.GetReason(), d.GetTokenCount(), d.GetAttempts(), dash(d.GetErrorCode()), stamp(d.GetReplayTime()), dash(d.GetReplayedBy()))
			}
			return tw.Flush()
		}); err != nil {
			return err
		}
		if all.NextPageToken != "" {
			c.morePages(cmd, len(all.DeadLetters), all.NextPageToken)
		}
		if len(all.DeadLetters) == 0 && pageToken == "" {
			c.explainNoDeadLetters(ctx, admin, f, window(filter.since, filter.until), false, "leave out --unreplayed to list them")
		}
		return nil
	})
	return cmd
}
