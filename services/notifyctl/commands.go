package main

import (
	"context"
	"flag"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	notifyv1 "notify/proto/gen/notify/v1"
)

func (c *cli) publish(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("publish", flag.ContinueOnError)
	var users, tokens, data stringList
	fs.Var(&users, "user", "recipient user id (repeatable)")
	fs.Var(&tokens, "token", "recipient FCM token (repeatable)")
	all := fs.Bool("all", false, "broadcast to every active device")
	typ := fs.String("type", "notifyctl.test", "notification type")
	title := fs.String("title", "", "title")
	body := fs.String("body", "", "body")
	image := fs.String("image", "", "https image URL")
	fs.Var(&data, "data", "data entry key=value (repeatable)")
	key := fs.String("idempotency-key", "", "idempotency key")
	ttl := fs.Duration("ttl", 0, "time to live (default 28 days)")
	priority := fs.String("priority", "normal", "normal or high")
	collapse := fs.String("collapse-key", "", "collapse key")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	req := &notifyv1.PublishRequest{
		IdempotencyKey: *key,
		Type:           *typ,
		Recipients:     &notifyv1.Recipients{},
		Content:        &notifyv1.Content{Title: *title, Body: *body, ImageUrl: *image},
		Options:        &notifyv1.Options{CollapseKey: *collapse},
	}
	switch targets := boolCount(len(users) > 0, len(tokens) > 0, *all); {
	case targets != 1:
		return usagef("publish: give exactly one of --user, --token or --all")
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
			req.Data[k] = v
		}
	}
	if *ttl != 0 {
		req.Options.Ttl = durationpb.New(*ttl)
	}
	switch *priority {
	case "normal":
		req.Options.Priority = notifyv1.Priority_PRIORITY_NORMAL
	case "high":
		req.Options.Priority = notifyv1.Priority_PRIORITY_HIGH
	default:
		return usagef("publish: --priority must be normal or high")
	}

	conn, err := c.client()
	if err != nil {
		return err
	}
	callCtx, cancel := c.callCtx(ctx)
	defer cancel()
	resp, err := notifyv1.NewNotificationServiceClient(conn).Publish(callCtx, req)
	if err != nil {
		return err
	}
	if c.json {
		return c.printJSON(resp)
	}
	suffix := ""
	if resp.GetDuplicate() {
		suffix = " (duplicate: this idempotency key was used before)"
	}
	fmt.Fprintf(c.out, "%s%s\n", resp.GetNotificationId(), suffix)
	return nil
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

func (c *cli) get(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("get", flag.ContinueOnError)
	wait := fs.Duration("wait", 0, "poll until the notification is no longer pending, for at most this long")
	limit := fs.Int("limit", 100, "deliveries to show")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return usagef("get: give one notification id")
	}
	conn, err := c.client()
	if err != nil {
		return err
	}
	admin := notifyv1.NewAdminServiceClient(conn)
	req := &notifyv1.GetNotificationRequest{NotificationId: fs.Arg(0), PageSize: int32(*limit)}
	deadline := time.Now().Add(*wait)
	var resp *notifyv1.GetNotificationResponse
	for {
		callCtx, cancel := c.callCtx(ctx)
		resp, err = admin.GetNotification(callCtx, req)
		cancel()
		if err != nil {
			return err
		}
		st := resp.GetNotification().GetStatus()
		if st != notifyv1.NotificationStatus_NOTIFICATION_STATUS_PENDING || time.Now().After(deadline) {
			break
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
	if c.json {
		return c.printJSON(resp)
	}
	n := resp.GetNotification()
	cnt := n.GetCounts()
	fmt.Fprintf(c.out, "notification %s  type %s  caller %s\n", n.GetId(), n.GetType(), n.GetCaller())
	fmt.Fprintf(c.out, "status %s  tokens %d: delivered %d, invalid %d, retrying %d, failed %d, expired %d, pending %d\n",
		shortStatus(n.GetStatus()), cnt.GetTotal(), cnt.GetDelivered(), cnt.GetInvalid(), cnt.GetRetrying(),
		cnt.GetFailed(), cnt.GetExpired(), cnt.GetPending())
	if len(resp.GetDeliveries()) == 0 {
		return nil
	}
	fmt.Fprintln(c.out)
	tw := tabwriter.NewWriter(c.out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TOKEN\tUSER\tDEVICE\tOUTCOME\tATTEMPTS\tERROR")
	for _, d := range resp.GetDeliveries() {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\n", d.GetToken(), dash(d.GetUserId()), dash(d.GetDeviceId()),
			shortOutcome(d.GetOutcome()), d.GetAttempts(), dash(d.GetErrorCode()))
	}
	if resp.GetNextPageToken() != "" {
		fmt.Fprintf(tw, "…\t(more: raise --limit)\t\t\t\t\n")
	}
	return tw.Flush()
}

func shortStatus(s notifyv1.NotificationStatus) string {
	return strings.ToLower(strings.TrimPrefix(s.String(), "NOTIFICATION_STATUS_"))
}

func shortOutcome(o notifyv1.DeliveryOutcome) string {
	return strings.ToLower(strings.TrimPrefix(o.String(), "DELIVERY_OUTCOME_"))
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

var platformFlags = map[string]notifyv1.Platform{
	"android": notifyv1.Platform_PLATFORM_ANDROID,
	"ios":     notifyv1.Platform_PLATFORM_IOS,
	"web":     notifyv1.Platform_PLATFORM_WEB,
}

func (c *cli) devicesRegister(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("devices register", flag.ContinueOnError)
	user := fs.String("user", "", "user id (required)")
	device := fs.String("device", "", "device id (required)")
	token := fs.String("token", "", "FCM token (required)")
	platform := fs.String("platform", "android", "android, ios or web")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	p, ok := platformFlags[*platform]
	if !ok {
		return usagef("devices register: --platform must be android, ios or web")
	}
	conn, err := c.client()
	if err != nil {
		return err
	}
	callCtx, cancel := c.callCtx(ctx)
	defer cancel()
	resp, err := notifyv1.NewDeviceServiceClient(conn).RegisterDevice(callCtx, &notifyv1.RegisterDeviceRequest{
		UserId: *user, DeviceId: *device, Token: *token, Platform: p,
	})
	if err != nil {
		return err
	}
	if c.json {
		return c.printJSON(resp)
	}
	what := "updated"
	switch {
	case resp.GetCreated():
		what = "created"
	case resp.GetReactivated():
		what = "reactivated"
	}
	fmt.Fprintf(c.out, "device %s of user %s %s\n", *device, *user, what)
	return nil
}

func (c *cli) devicesCheck(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("devices check", flag.ContinueOnError)
	user := fs.String("user", "", "user id (required)")
	device := fs.String("device", "", "device id (required)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	conn, err := c.client()
	if err != nil {
		return err
	}
	callCtx, cancel := c.callCtx(ctx)
	defer cancel()
	resp, err := notifyv1.NewDeviceServiceClient(conn).CheckDevice(callCtx, &notifyv1.CheckDeviceRequest{UserId: *user, DeviceId: *device})
	if err != nil {
		return err
	}
	if c.json {
		return c.printJSON(resp)
	}
	if resp.GetRegistered() {
		fmt.Fprintf(c.out, "device %s of user %s is registered\n", *device, *user)
	} else {
		fmt.Fprintf(c.out, "device %s of user %s is NOT registered: the app must register again\n", *device, *user)
	}
	return nil
}
