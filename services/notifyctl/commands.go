package main

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	notifyv1 "notify/proto/gen/notify/v1"
)

func (c *cli) publishCommand() *cobra.Command {
	var (
		users, tokens, data                              []string
		all, ignorePrefs                                 bool
		typ, title, body, image, key, priority, collapse string
		at                                               string
		ttl                                              time.Duration
		file, topicName, condition, app                  string
	)
	cmd := &cobra.Command{
		Use:   "publish (--user ID… | --token T… | --all | --topic T | --condition C | --file FILE) [flags]",
		Short: "Publish a notification, or many from a file",
		Long: `Publish a notification through NotificationService.Publish and print its id.

Give exactly one kind of recipient: --user (every active device of those users, repeatable),
--token (raw FCM tokens, repeatable), --all (a broadcast to every active device), --topic (an
FCM topic's subscribers) or --condition (an FCM condition such as "'a' in topics && 'b' in
topics"). Reusing an --idempotency-key prints the first notification's id, says "duplicate" and sends nothing.
With --at the notification is scheduled (status scheduled) and sent at that time, in the future and at most 30
days ahead; until then 'notifyctl cancel ID' stops it.

--file FILE (or - for stdin) publishes many notifications instead: one PublishRequest per
line in protobuf JSON (the field names of notification.proto), sent with PublishBatch 500 at
a time (fewer when they are over the 4 MiB a call may carry). One result is printed per request with its line number: the id (and "duplicate"),
or why it was refused and nothing was written for it (with -o json or yaml each result has its
"line"; blank lines are skipped but counted). Valid requests are accepted even when
others in the file are refused; the exit code is 1 when any was refused. A line that is not a
PublishRequest stops everything before anything is sent. A call refused by the API key's rate
limit (RESOURCE_EXHAUSTED) wrote nothing and is sent again after the delay the server asks (at
most a minute at a time; Ctrl-C stops). When a call fails otherwise, the results of the calls
before it are printed, then the failure and the first line of the failed call; that call is not
sent again, since it may have been written (send the rest again with the same idempotency keys).`,
		Example: `  notifyctl publish --user ana --user bob --title 'Your order shipped' --body 'Parcel 42 is on its way' \
    --data order_id=42 --priority high --ttl 1h --idempotency-key order-42-shipped-cli
  notifyctl publish --all --title 'Maintenance tonight' --at 6h   # or an RFC 3339 time or a date (local midnight), at most 30 days ahead
  notifyctl publish --user ana --title 'Reminder' --at 90m
  notifyctl publish --file reminders.jsonl   # lines like:
    {"idempotencyKey":"r-1","type":"reminder","recipients":{"userIds":{"userIds":["ana"]}},"content":{"title":"Table ready"}}`,
		Args: positional(0, ""),
	}
	f := cmd.Flags()
	f.StringArrayVar(&users, "user", nil, "recipient user `id`: every active device of that user (repeatable)")
	f.StringArrayVar(&tokens, "token", nil, "recipient FCM `token` (repeatable)")
	f.BoolVar(&all, "all", false, "broadcast to every active device")
	f.StringVar(&topicName, "topic", "", "FCM `topic`: every app instance subscribed to it")
	f.StringVar(&condition, "condition", "", "FCM `condition` over topics, e.g. \"'a' in topics && 'b' in topics\"")
	f.StringVar(&typ, "type", "notifyctl.test", "notification `type`")
	f.StringVar(&app, "app", "", "the `app` to send through (default: the app \"default\")")
	f.StringVar(&title, "title", "", "notification title")
	f.StringVar(&body, "body", "", "notification body")
	f.StringVar(&image, "image", "", "https image `URL`")
	f.StringArrayVar(&data, "data", nil, "data entry `key=value` (repeatable)")
	f.StringVar(&key, "idempotency-key", "", "idempotency `key`: the same key returns the first notification")
	f.Var(daysValue{&ttl}, "ttl", "time to live (90m, 2h, 7d), at most 28d (default: the server's, 28 days)")
	f.StringVar(&priority, "priority", "normal", "normal or high")
	f.StringVar(&collapse, "collapse-key", "", "collapse `key`: FCM keeps only the newest with it")
	f.StringVar(&file, "file", "", "publish the PublishRequests in this JSON-lines `file` (- for stdin) with PublishBatch")
	f.StringVar(&at, "at", "", "send at `W`: an RFC 3339 time, a date (local midnight) or a duration from now (90m, 2h, 7d); at most 30 days ahead")
	f.BoolVar(&ignorePrefs, "ignore-preferences", false,
		"send also to users who muted the type (security messages; needs an admin key or one allowed to)")
	enumFlag(cmd, "priority", "normal", "high")

	cmd.RunE = c.action(func(ctx context.Context, _ []string) error {
		if file != "" {
			for _, name := range []string{"user", "token", "all", "topic", "condition", "type", "app", "title", "body", "image", "data",
				"idempotency-key", "ttl", "priority", "collapse-key", "at", "ignore-preferences"} {
				if f.Changed(name) {
					return usagef("publish: --file takes the requests from the file; --%s cannot be combined with it", name)
				}
			}
			return c.publishFile(ctx, file, cmd.InOrStdin())
		}
		req := &notifyv1.PublishRequest{
			IdempotencyKey: key,
			Type:           typ,
			App:            app,
			Recipients:     &notifyv1.Recipients{},
			Content:        &notifyv1.Content{Title: title, Body: body, ImageUrl: image},
			Options:        &notifyv1.Options{CollapseKey: collapse, IgnorePreferences: ignorePrefs},
		}
		switch targets := boolCount(len(users) > 0, len(tokens) > 0, all, topicName != "", condition != ""); {
		case targets != 1:
			return usagef("publish: give exactly one of --user, --token, --all, --topic or --condition (or --file)")
		case topicName != "":
			req.Recipients.Target = &notifyv1.Recipients_Topic{Topic: topicName}
		case condition != "":
			req.Recipients.Target = &notifyv1.Recipients_Condition{Condition: condition}
		case len(users) > 0:
			req.Recipients.Target = &notifyv1.Recipients_UserIds{UserIds: &notifyv1.UserIDs{UserIds: users}}
		case len(tokens) > 0:
			req.Recipients.Target = &notifyv1.Recipients_Tokens{Tokens: &notifyv1.Tokens{Tokens: tokens}}
		default:
			req.Recipients.Target = &notifyv1.Recipients_AllDevices{AllDevices: &notifyv1.AllDevices{}}
		}
		if len(data) > 0 {
			req.Data = map[string]string{}
			for _, kv := range data {
				k, v, ok := strings.Cut(kv, "=")
				if !ok {
					return usagef("publish: --data %q is not key=value", kv)
				}
				if _, dup := req.Data[k]; dup {
					return usagef("publish: --data %s: key %q given twice", kv, k)
				}
				req.Data[k] = v
			}
		}
		if cmd.Flags().Changed("ttl") {
			if ttl <= 0 {
				return usagef("publish: --ttl %s: want more than 0, at most 28d (leave it out for the server's 28 days)", ttl)
			}
			if ttl > maxTTL {
				return usagef("publish: --ttl %s is more than %d days, the longest a notification can live (FCM's limit)", daysText(ttl), maxTTL/(24*time.Hour))
			}
			req.Options.Ttl = durationpb.New(ttl)
		}
		if at != "" {
			when, err := parseAt(at, time.Now())
			if err != nil {
				return err
			}
			req.Options.SendAt = when
		}
		p, err := enumValue("publish", "priority", priority, "priority_", priorityFlags, "normal or high")
		if err != nil {
			return err
		}
		req.Options.Priority = p

		conn, callCtx, cancel, err := c.open(ctx)
		if err != nil {
			return err
		}
		defer cancel()
		resp, err := notifyv1.NewNotificationServiceClient(conn).Publish(callCtx, req)
		if err != nil {
			return err
		}
		return c.emit(resp, func() error {
			suffix := ""
			if resp.GetDuplicate() {
				suffix = " (duplicate: this idempotency key was used before)"
			}
			fmt.Fprintf(c.out, "%s%s\n", resp.GetNotificationId(), suffix)
			return nil
		})
	})
	return cmd
}

// maxScheduleAhead is how far ahead Publish accepts options.send_at: the API's limit
// ("at most 30 days ahead", notification.proto), which the producer enforces with its own
// server.MaxScheduleAhead. That one sits in the producer's internal package, which
// notifyctl cannot import; the two change together with the API's comment.
const maxScheduleAhead = 30 * 24 * time.Hour

// maxTTL is the longest options.ttl Publish accepts: the API's limit ("at most 28 days
// (FCM's limit)", notification.proto), enforced by the producer's server.MaxTTL, which
// notifyctl cannot import (see maxScheduleAhead).
const maxTTL = 28 * 24 * time.Hour

// daysText shows d as --ttl takes it: whole days as 29d, anything else as a
// duration (700h0m0s).
func daysText(d time.Duration) string {
	if d > 0 && d%(24*time.Hour) == 0 {
		return fmt.Sprintf("%dd", d/(24*time.Hour))
	}
	return d.String()
}

// parseAt reads --at: an RFC 3339 time, a date (its midnight in now's time zone, as --since
// reads one), or a duration from now. Any must be in the future: Publish sends a send_at
// that is not at once, so a mistyped date would send now what was meant for later (a
// broadcast, say). Any must also be at most maxScheduleAhead away, which Publish would refuse.
func parseAt(s string, now time.Time) (*timestamppb.Timestamp, error) {
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		t, err = time.ParseInLocation(time.DateOnly, s, now.Location())
	}
	if err == nil {
		if !t.After(now) {
			return nil, usagef("publish: --at %s is in the past; leave out --at to send now", s)
		}
	} else {
		d, err := parseDays(s)
		if err != nil || d < 0 {
			return nil, usagef("publish: --at %q: want an RFC 3339 time, a date (2026-11-30, local midnight) or a duration from now (90m, 2h, 7d)", s)
		}
		if d == 0 {
			return nil, usagef("publish: --at %s is not in the future; leave out --at to send now", s)
		}
		t = now.Add(d)
	}
	if t.Sub(now) > maxScheduleAhead {
		return nil, usagef("publish: --at %s is more than %d days ahead, the most a notification can be scheduled", s, maxScheduleAhead/(24*time.Hour))
	}
	return timestamppb.New(t), nil
}

func (c *cli) cancelCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "cancel ID",
		Short: "Cancel a scheduled, pending or retrying notification",
		Long: `Cancel a notification (NotificationService.Cancel) that is scheduled, pending or retrying: it
ends cancelled and no token not yet sent is sent, nor retried: tokens waiting for a retry end
with outcome cancelled. Prints how many tokens had already been sent (delivered, invalid and
failed ones keep their outcomes) and how many of them waited for a retry. A final notification
cannot be cancelled (exit 1); only the key that published it, or an admin key, may cancel it.`,
		Example: `  notifyctl cancel 0190a1b2-…`,
		Args:    positional(1, "one notification ID"),
	}
	cmd.RunE = c.action(func(ctx context.Context, args []string) error {
		conn, callCtx, cancel, err := c.open(ctx)
		if err != nil {
			return err
		}
		defer cancel()
		resp, err := notifyv1.NewNotificationServiceClient(conn).Cancel(callCtx, &notifyv1.CancelRequest{NotificationId: args[0]})
		if err != nil {
			return err
		}
		return c.emit(resp, func() error {
			fmt.Fprintf(c.out, "cancelled %s (%d tokens had been sent; %d of them waited for a retry, now cancelled)\n",
				args[0], resp.GetSent(), resp.GetRetryCancelled())
			return nil
		})
	})
	return cmd
}

func boolCount(bs ...bool) int {
	n := 0
	for _, b := range bs {
		if b {
			n++
		}
	}
	return n
}

func (c *cli) getCommand() *cobra.Command {
	var (
		wait  time.Duration
		limit int
	)
	cmd := &cobra.Command{
		Use:   "get ID",
		Short: "Show a notification, its counts and per-token outcomes",
		Long: `Show a notification (AdminService.GetNotification): its status, token counts, and each
token's outcome with attempts and the last FCM error; a scheduled notification's header also
shows when it is to be sent (send at). With --no-headers only the
per-token rows are printed.`,
		Args: positional(1, "one notification ID"),
	}
	cmd.Flags().DurationVar(&wait, "wait", 0, "poll until the notification is no longer pending, for at most this long")
	cmd.Flags().IntVar(&limit, "limit", 100, "per-token outcomes to show")
	cmd.RunE = c.action(func(ctx context.Context, args []string) error {
		if limit < 1 || limit > maxPageSize {
			return usagef("get: --limit must be 1 to %d", maxPageSize)
		}
		if wait < 0 {
			return usagef("get: --wait must not be negative")
		}
		conn, err := c.client()
		if err != nil {
			return err
		}
		admin := notifyv1.NewAdminServiceClient(conn)
		req := &notifyv1.GetNotificationRequest{NotificationId: args[0], PageSize: int32(limit)}
		deadline := time.Now().Add(wait)
		var resp *notifyv1.GetNotificationResponse
		ranOut := false // --wait passed with the notification still pending or scheduled
		for {
			callCtx, cancel := c.callCtx(ctx)
			resp, err = admin.GetNotification(callCtx, req)
			cancel()
			if err != nil {
				return err
			}
			st := resp.GetNotification().GetStatus()
			if st != notifyv1.NotificationStatus_NOTIFICATION_STATUS_PENDING && st != notifyv1.NotificationStatus_NOTIFICATION_STATUS_SCHEDULED {
				break
			}
			if time.Now().After(deadline) {
				ranOut = wait > 0
				break
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(200 * time.Millisecond):
			}
		}
		if err := c.emit(resp, func() error { return c.printNotification(resp) }); err != nil {
			return err
		}
		if ranOut {
			fmt.Fprintf(c.errOut, "notifyctl: still %s after --wait %s\n", shortStatus(resp.GetNotification().GetStatus()), wait)
		}
		return nil
	})
	return cmd
}

func (c *cli) printNotification(resp *notifyv1.GetNotificationResponse) error {
	n := resp.GetNotification()
	if !c.noHeaders {
		cnt := n.GetCounts()
		sendAt := ""
		if n.GetSendTime() != nil {
			sendAt = "  send at " + stamp(n.GetSendTime())
		}
		fmt.Fprintf(c.out, "notification %s  type %s  app %s  caller %s  created %s%s\n", n.GetId(), n.GetType(), n.GetApp(), n.GetCaller(),
			stamp(n.GetCreateTime()), sendAt)
		fmt.Fprintf(c.out, "status %s  tokens %d: delivered %d, invalid %d, retrying %d, failed %d, expired %d, skipped %d, "+
			"cancelled %d, pending %d\n",
			shortStatus(n.GetStatus()), cnt.GetTotal(), cnt.GetDelivered(), cnt.GetInvalid(), cnt.GetRetrying(),
			cnt.GetFailed(), cnt.GetExpired(), cnt.GetSkipped(), cnt.GetCancelled(), cnt.GetPending())
		if len(resp.GetDeliveries()) == 0 {
			return nil
		}
		fmt.Fprintln(c.out)
	}
	tw := c.table("TOKEN", "USER", "DEVICE", "OUTCOME", "ATTEMPTS", "ERROR")
	for _, d := range resp.GetDeliveries() {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\n", d.GetToken(), dash(d.GetUserId()), dash(d.GetDeviceId()),
			shortOutcome(d.GetOutcome()), d.GetAttempts(), dash(d.GetErrorCode()))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if resp.GetNextPageToken() != "" {
		fmt.Fprintf(c.errOut, "(showing %d per-token outcomes; raise --limit for more)\n", len(resp.GetDeliveries()))
	}
	return nil
}

func shortStatus(s notifyv1.NotificationStatus) string {
	return strings.ToLower(strings.TrimPrefix(s.String(), "NOTIFICATION_STATUS_"))
}

func shortOutcome(o notifyv1.DeliveryOutcome) string {
	return strings.ToLower(strings.TrimPrefix(o.String(), "DELIVERY_OUTCOME_"))
}

var priorityFlags = map[string]notifyv1.Priority{
	"normal": notifyv1.Priority_PRIORITY_NORMAL,
	"high":   notifyv1.Priority_PRIORITY_HIGH,
}

var platformFlags = map[string]notifyv1.Platform{
	"android": notifyv1.Platform_PLATFORM_ANDROID,
	"ios":     notifyv1.Platform_PLATFORM_IOS,
	"web":     notifyv1.Platform_PLATFORM_WEB,
}

func (c *cli) devicesCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "devices",
		Short: "Register, list, check and unregister a user's devices",
		RunE:  group,
	}
	cmd.AddCommand(c.devicesRegisterCommand(), c.devicesCheckCommand(), c.devicesListCommand(), c.devicesUnregisterCommand())
	return cmd
}

func (c *cli) devicesRegisterCommand() *cobra.Command {
	var user, device, token, platform, app string
	cmd := &cobra.Command{
		Use:   "register --user U --device D --token T [--platform android|ios|web] [--app A]",
		Short: "Register (or update, or reactivate) a device's FCM token",
		Args:  positional(0, ""),
	}
	f := cmd.Flags()
	f.StringVar(&user, "user", "", "user `id`")
	f.StringVar(&device, "device", "", "device `id`")
	f.StringVar(&token, "token", "", "FCM registration `token`")
	f.StringVar(&platform, "platform", "android", "android, ios or web")
	f.StringVar(&app, "app", "", "the `app` the token belongs to (default: the app \"default\")")
	for _, name := range []string{"user", "device", "token"} {
		_ = cmd.MarkFlagRequired(name)
	}
	enumFlag(cmd, "platform", "android", "ios", "web")
	cmd.RunE = c.action(func(ctx context.Context, _ []string) error {
		p, err := enumValue("devices register", "platform", platform, "platform_", platformFlags, "android, ios or web")
		if err != nil {
			return err
		}
		conn, callCtx, cancel, err := c.open(ctx)
		if err != nil {
			return err
		}
		defer cancel()
		resp, err := notifyv1.NewDeviceServiceClient(conn).RegisterDevice(callCtx, &notifyv1.RegisterDeviceRequest{
			UserId: user, DeviceId: device, Token: token, Platform: p, App: app,
		})
		if err != nil {
			return err
		}
		return c.emit(resp, func() error {
			what := "updated"
			switch {
			case resp.GetCreated():
				what = "created"
			case resp.GetReactivated():
				what = "reactivated"
			}
			fmt.Fprintf(c.out, "device %s of user %s %s\n", device, user, what)
			return nil
		})
	})
	return cmd
}

func (c *cli) devicesCheckCommand() *cobra.Command {
	var user, device, app string
	cmd := &cobra.Command{
		Use:   "check --user U --device D [--app A]",
		Short: "Ask whether a device is registered (if not, the app must register again)",
		Args:  positional(0, ""),
	}
	cmd.Flags().StringVar(&user, "user", "", "user `id`")
	cmd.Flags().StringVar(&device, "device", "", "device `id`")
	cmd.Flags().StringVar(&app, "app", "", "the `app` the device was registered for (default: default)")
	_ = cmd.MarkFlagRequired("user")
	_ = cmd.MarkFlagRequired("device")
	cmd.RunE = c.action(func(ctx context.Context, _ []string) error {
		conn, callCtx, cancel, err := c.open(ctx)
		if err != nil {
			return err
		}
		defer cancel()
		resp, err := notifyv1.NewDeviceServiceClient(conn).CheckDevice(callCtx, &notifyv1.CheckDeviceRequest{UserId: user, DeviceId: device, App: app})
		if err != nil {
			return err
		}
		return c.emit(resp, func() error {
			if resp.GetRegistered() {
				fmt.Fprintf(c.out, "device %s of user %s is registered\n", device, user)
			} else {
				fmt.Fprintf(c.out, "device %s of user %s is NOT registered: the app must register again\n", device, user)
			}
			return nil
		})
	})
	return cmd
}

func (c *cli) devicesListCommand() *cobra.Command {
	var (
		user, app, pageToken string
		activeOnly           bool
		limit                int
	)
	cmd := &cobra.Command{
		Use:   "list --user U [--app A]",
		Short: "List a user's devices, newest first, active and deactivated",
		Long: "List a user's devices (DeviceService.ListDevices), newest first: platform, whether the token is active, " +
			"why it was deactivated, when it was registered and last seen. " +
			"When there are more than --limit, stderr ends with the command line of the next page (more: … --page-token TOKEN).",
		Example: `  notifyctl devices list --user ana
  notifyctl devices list --user ana --active -o json`,
		Args: positional(0, ""),
	}
	f := cmd.Flags()
	f.StringVar(&user, "user", "", "user `id`")
	f.BoolVar(&activeOnly, "active", false, "only active devices")
	f.StringVar(&app, "app", "", "only the devices of this `app` (default: every app the key may act for)")
	f.IntVar(&limit, "limit", 50, "at most `N` (0: all)")
	f.StringVar(&pageToken, "page-token", "", "start after the rows of an earlier list: the `token` it printed (more: …) or its nextPageToken")
	_ = cmd.MarkFlagRequired("user")
	cmd.RunE = c.action(func(ctx context.Context, _ []string) error {
		if limit < 0 {
			return usagef("devices list: --limit must be 0 (all) or more")
		}
		conn, err := c.client()
		if err != nil {
			return err
		}
		devices := notifyv1.NewDeviceServiceClient(conn)
		req := &notifyv1.ListDevicesRequest{UserId: user, ActiveOnly: activeOnly, App: app, PageToken: pageToken}
		all := &notifyv1.ListDevicesResponse{}
		for {
			req.PageSize = pageFor(limit, len(all.Devices))
			callCtx, cancel := c.callCtx(ctx)
			resp, err := devices.ListDevices(callCtx, req)
			cancel()
			if err != nil {
				return err
			}
			all.Devices = append(all.Devices, resp.GetDevices()...)
			all.NextPageToken = resp.GetNextPageToken()
			if all.NextPageToken == "" || (limit > 0 && len(all.Devices) >= limit) {
				break
			}
			req.PageToken = all.NextPageToken
		}
		if err := c.emit(all, func() error {
			tw := c.table("DEVICE", "APP", "PLATFORM", "ACTIVE", "DEACTIVATED", "REASON", "REGISTERED", "LAST SEEN", "TOKEN")
			for _, d := range all.Devices {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%t\t%s\t%s\t%s\t%s\t%s\n", d.GetDeviceId(), d.GetApp(),
					strings.ToLower(strings.TrimPrefix(d.GetPlatform().String(), "PLATFORM_")), d.GetActive(),
					stamp(d.GetDeactivateTime()), dash(d.GetDeactivationReason()), stamp(d.GetRegisterTime()),
					stamp(d.GetLastSeenTime()), d.GetToken())
			}
			return tw.Flush()
		}); err != nil {
			return err
		}
		if all.NextPageToken != "" {
			c.morePages(cmd, len(all.Devices), all.NextPageToken)
		}
		return nil
	})
	return cmd
}

func (c *cli) devicesUnregisterCommand() *cobra.Command {
	var app string
	cmd := &cobra.Command{
		Use:   "unregister DEVICE_ID [--app A]",
		Short: "Deactivate a device's token (notify stops sending to it)",
		Long: "Deactivate a device's token (DeviceService.UnregisterDevice), as an app does at logout. " +
			"A device is an installation of one app: --app names it (default: default). " +
			"Exit code 3 when the app has no device with that id.",
		Args: positional(1, "DEVICE_ID"),
	}
	cmd.Flags().StringVar(&app, "app", "", "the `app` the device was registered for (default: default)")
	cmd.RunE = c.action(func(ctx context.Context, args []string) error {
		conn, callCtx, cancel, err := c.open(ctx)
		if err != nil {
			return err
		}
		defer cancel()
		resp, err := notifyv1.NewDeviceServiceClient(conn).UnregisterDevice(callCtx, &notifyv1.UnregisterDeviceRequest{DeviceId: args[0], App: app})
		if err != nil {
			return err
		}
		return c.emitFound(resp, resp.GetFound(), fmt.Sprintf("device %s unregistered", args[0]), fmt.Sprintf("no device %q", args[0]))
	})
	return cmd
}
