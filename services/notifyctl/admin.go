package main

import (
	"context"
	"flag"
	"fmt"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	notifyv1 "notify/proto/gen/notify/v1"
)

// maxPageSize is the server's largest page.
const maxPageSize = 1000

// parseWhen reads --since/--until: a duration ago ("90m", "1h", "7d") or an RFC 3339 time.
func parseWhen(flagName, s string, now time.Time) (*timestamppb.Timestamp, error) {
	if s == "" {
		return nil, nil
	}
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return timestamppb.New(t), nil
	}
	var d time.Duration
	var err error
	if days, ok := strings.CutSuffix(s, "d"); ok {
		var n int
		n, err = strconv.Atoi(days)
		d = time.Duration(n) * 24 * time.Hour
	} else {
		d, err = time.ParseDuration(s)
	}
	if err != nil || d < 0 {
		return nil, usagef("--%s %q: want a duration ago (90m, 1h, 7d) or an RFC 3339 time", flagName, s)
	}
	return timestamppb.New(now.Add(-d)), nil
}

var statusFlags = map[string]notifyv1.NotificationStatus{
	"pending":   notifyv1.NotificationStatus_NOTIFICATION_STATUS_PENDING,
	"retrying":  notifyv1.NotificationStatus_NOTIFICATION_STATUS_RETRYING,
	"delivered": notifyv1.NotificationStatus_NOTIFICATION_STATUS_DELIVERED,
	"failed":    notifyv1.NotificationStatus_NOTIFICATION_STATUS_FAILED,
	"expired":   notifyv1.NotificationStatus_NOTIFICATION_STATUS_EXPIRED,
}

// pageFor is the page size that fetches what remains of limit (0: no limit).
func pageFor(limit, got int) int32 {
	if limit == 0 {
		return maxPageSize
	}
	return int32(min(limit-got, maxPageSize))
}

func stamp(ts *timestamppb.Timestamp) string {
	if ts == nil {
		return "-"
	}
	return ts.AsTime().Local().Format("2006-01-02 15:04:05")
}

func (c *cli) list(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("list", flag.ContinueOnError)
	st := fs.String("status", "", "")
	typ := fs.String("type", "", "")
	since := fs.String("since", "", "")
	until := fs.String("until", "", "")
	limit := fs.Int("limit", 50, "")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return usagef("list takes no arguments")
	}
	req := &notifyv1.ListNotificationsRequest{Type: *typ}
	if *st != "" {
		s, ok := statusFlags[*st]
		if !ok {
			return usagef("list: --status must be pending, retrying, delivered, failed or expired")
		}
		req.Status = s
	}
	var err error
	now := time.Now()
	if req.StartTime, err = parseWhen("since", *since, now); err != nil {
		return err
	}
	if req.EndTime, err = parseWhen("until", *until, now); err != nil {
		return err
	}
	if *limit < 0 {
		return usagef("list: --limit must be 0 (all) or more")
	}
	conn, err := c.client()
	if err != nil {
		return err
	}
	admin := notifyv1.NewAdminServiceClient(conn)
	all := &notifyv1.ListNotificationsResponse{}
	for {
		req.PageSize = pageFor(*limit, len(all.Notifications))
		callCtx, cancel := c.callCtx(ctx)
		resp, err := admin.ListNotifications(callCtx, req)
		cancel()
		if err != nil {
			return err
		}
		all.Notifications = append(all.Notifications, resp.GetNotifications()...)
		all.NextPageToken = resp.GetNextPageToken()
		if all.NextPageToken == "" || (*limit > 0 && len(all.Notifications) >= *limit) {
			break
		}
		req.PageToken = all.NextPageToken
	}
	if c.json {
		return c.printJSON(all)
	}
	tw := tabwriter.NewWriter(c.out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tCREATED\tTYPE\tCALLER\tSTATUS\tTOKENS\tDELIVERED\tINVALID\tRETRYING\tFAILED\tEXPIRED\tREPLAYS")
	for _, n := range all.Notifications {
		k := n.GetCounts()
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%d\t%d\t%d\t%d\t%d\t%d\n", n.GetId(), stamp(n.GetCreateTime()), n.GetType(),
			n.GetCaller(), shortStatus(n.GetStatus()), k.GetTotal(), k.GetDelivered(), k.GetInvalid(), k.GetRetrying(),
			k.GetFailed(), k.GetExpired(), n.GetReplayCount())
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if all.NextPageToken != "" {
		fmt.Fprintf(c.errOut, "(showing the newest %d; raise --limit, or --limit 0 for all)\n", len(all.Notifications))
	}
	return nil
}

// deadFilter declares the dead-letter filter flags on fs and returns a function that
// builds the filter once fs is parsed.
func deadFilter(fs *flag.FlagSet) func() (*notifyv1.DeadLetterFilter, error) {
	reason := fs.String("reason", "", "")
	since := fs.String("since", "", "")
	until := fs.String("until", "", "")
	return func() (*notifyv1.DeadLetterFilter, error) {
		f := &notifyv1.DeadLetterFilter{Reason: *reason}
		var err error
		now := time.Now()
		if f.StartTime, err = parseWhen("since", *since, now); err != nil {
			return nil, err
		}
		if f.EndTime, err = parseWhen("until", *until, now); err != nil {
			return nil, err
		}
		return f, nil
	}
}

func (c *cli) deadList(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("dead list", flag.ContinueOnError)
	filter := deadFilter(fs)
	replayed := fs.Bool("replayed", false, "")
	unreplayed := fs.Bool("unreplayed", false, "")
	limit := fs.Int("limit", 50, "")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return usagef("dead list takes no arguments")
	}
	f, err := filter()
	if err != nil {
		return err
	}
	switch {
	case *replayed && *unreplayed:
		return usagef("dead list: give at most one of --replayed and --unreplayed")
	case *replayed:
		f.Replayed = proto.Bool(true)
	case *unreplayed:
		f.Replayed = proto.Bool(false)
	}
	if *limit < 0 {
		return usagef("dead list: --limit must be 0 (all) or more")
	}
	conn, err := c.client()
	if err != nil {
		return err
	}
	admin := notifyv1.NewAdminServiceClient(conn)
	req := &notifyv1.ListDeadLettersRequest{Filter: f}
	all := &notifyv1.ListDeadLettersResponse{}
	for {
		req.PageSize = pageFor(*limit, len(all.DeadLetters))
		callCtx, cancel := c.callCtx(ctx)
		resp, err := admin.ListDeadLetters(callCtx, req)
		cancel()
		if err != nil {
			return err
		}
		all.DeadLetters = append(all.DeadLetters, resp.GetDeadLetters()...)
		all.NextPageToken = resp.GetNextPageToken()
		if all.NextPageToken == "" || (*limit > 0 && len(all.DeadLetters) >= *limit) {
			break
		}
		req.PageToken = all.NextPageToken
	}
	if c.json {
		return c.printJSON(all)
	}
	tw := tabwriter.NewWriter(c.out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tCREATED\tNOTIFICATION\tREASON\tTOKENS\tATTEMPTS\tERROR\tREPLAYED\tBY")
	for _, d := range all.DeadLetters {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%d\t%d\t%s\t%s\t%s\n", d.GetId(), stamp(d.GetCreateTime()), dash(d.GetNotificationId()),
			d.GetReason(), d.GetTokenCount(), d.GetAttempts(), dash(d.GetErrorCode()), stamp(d.GetReplayTime()), dash(d.GetReplayedBy()))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if all.NextPageToken != "" {
		fmt.Fprintf(c.errOut, "(showing the newest %d; raise --limit, or --limit 0 for all)\n", len(all.DeadLetters))
	}
	return nil
}

func shortReplay(o notifyv1.ReplayOutcome) string {
	return strings.ToLower(strings.TrimPrefix(o.String(), "REPLAY_OUTCOME_"))
}

func (c *cli) replay(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("replay", flag.ContinueOnError)
	dead := fs.Bool("dead", false, "")
	filter := deadFilter(fs)
	includeReplayed := fs.Bool("include-replayed", false, "")
	dryRun := fs.Bool("dry-run", false, "")
	force := fs.Bool("force", false, "")
	batch := fs.Int("batch", 100, "")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *batch < 1 || *batch > maxPageSize {
		return usagef("replay: --batch must be 1 to %d", maxPageSize)
	}
	var ids []string
	var f *notifyv1.DeadLetterFilter
	switch {
	case *dead && fs.NArg() > 0:
		return usagef("replay: give notification ids or --dead, not both")
	case *dead:
		var err error
		if f, err = filter(); err != nil {
			return err
		}
		if !*includeReplayed {
			f.Replayed = proto.Bool(false)
		}
	case fs.NArg() == 0:
		return usagef("replay: give notification ids, or --dead with a filter")
	default:
		seen := map[string]bool{}
		for _, id := range fs.Args() {
			if !seen[id] {
				seen[id] = true
				ids = append(ids, id)
			}
		}
	}
	conn, err := c.client()
	if err != nil {
		return err
	}
	admin := notifyv1.NewAdminServiceClient(conn)
	all := &notifyv1.ReplayResponse{DryRun: *dryRun}
	var tally replayTally
	call := func(req *notifyv1.ReplayRequest) (*notifyv1.ReplayResponse, error) {
		req.DryRun, req.Force = *dryRun, *force
		callCtx, cancel := c.callCtx(ctx)
		defer cancel()
		resp, err := admin.Replay(callCtx, req)
		if err != nil {
			if len(all.Results) > 0 {
				fmt.Fprintf(c.errOut, "replay stopped after %d notifications: %s\n", len(all.Results), tally)
			}
			return nil, err
		}
		all.Results = append(all.Results, resp.GetResults()...)
		tally.add(resp.GetResults())
		return resp, nil
	}
	if f == nil {
		for start := 0; start < len(ids); start += *batch {
			end := min(start+*batch, len(ids))
			if _, err := call(&notifyv1.ReplayRequest{Selector: &notifyv1.ReplayRequest_NotificationIds{
				NotificationIds: &notifyv1.NotificationIDs{Ids: ids[start:end]},
			}}); err != nil {
				return err
			}
			if len(ids) > *batch {
				fmt.Fprintf(c.errOut, "replay: %d/%d notifications: %s\n", end, len(ids), tally)
			}
		}
	} else {
		token := ""
		for page := 1; ; page++ {
			resp, err := call(&notifyv1.ReplayRequest{
				Selector: &notifyv1.ReplayRequest_DeadLetters{DeadLetters: f}, PageSize: int32(*batch), PageToken: token,
			})
			if err != nil {
				return err
			}
			token = resp.GetNextPageToken()
			if token != "" || page > 1 {
				fmt.Fprintf(c.errOut, "replay: %d notifications so far: %s\n", len(all.Results), tally)
			}
			if token == "" {
				break
			}
		}
	}

	if c.json {
		if err := c.printJSON(all); err != nil {
			return err
		}
	} else {
		tw := tabwriter.NewWriter(c.out, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "NOTIFICATION\tRESULT\tTOKENS")
		for _, r := range all.Results {
			fmt.Fprintf(tw, "%s\t%s\t%d\n", r.GetNotificationId(), shortReplay(r.GetOutcome()), r.GetTokenCount())
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		suffix := ""
		if *dryRun {
			suffix = " (dry run: nothing was changed; this is what a replay would do)"
		}
		fmt.Fprintf(c.out, "%d notifications: %s%s\n", len(all.Results), tally, suffix)
	}
	if n := tally.counts[notifyv1.ReplayOutcome_REPLAY_OUTCOME_NOT_FOUND]; n > 0 {
		return notFoundError{fmt.Sprintf("replay: %d of the notifications do not exist", n)}
	}
	return nil
}

// replayTally counts replay results for progress lines and the summary.
type replayTally struct {
	counts map[notifyv1.ReplayOutcome]int
	tokens int64
}

func (t *replayTally) add(results []*notifyv1.ReplayResult) {
	if t.counts == nil {
		t.counts = map[notifyv1.ReplayOutcome]int{}
	}
	for _, r := range results {
		t.counts[r.GetOutcome()]++
		t.tokens += r.GetTokenCount()
	}
}

func (t replayTally) String() string {
	parts := []string{fmt.Sprintf("%d replayed (%d tokens)", t.counts[notifyv1.ReplayOutcome_REPLAY_OUTCOME_REPLAYED], t.tokens)}
	for _, o := range []notifyv1.ReplayOutcome{
		notifyv1.ReplayOutcome_REPLAY_OUTCOME_SKIPPED_IN_FLIGHT,
		notifyv1.ReplayOutcome_REPLAY_OUTCOME_SKIPPED_DELIVERED,
		notifyv1.ReplayOutcome_REPLAY_OUTCOME_SKIPPED_EXPIRED,
		notifyv1.ReplayOutcome_REPLAY_OUTCOME_NOT_FOUND,
	} {
		if n := t.counts[o]; n > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", n, strings.ReplaceAll(shortReplay(o), "_", " ")))
		}
	}
	return strings.Join(parts, ", ")
}

var roleFlags = map[string]notifyv1.Role{
	"publisher": notifyv1.Role_ROLE_PUBLISHER,
	"admin":     notifyv1.Role_ROLE_ADMIN,
}

func shortRole(r notifyv1.Role) string {
	return strings.ToLower(strings.TrimPrefix(r.String(), "ROLE_"))
}

func (c *cli) keysCreate(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("keys create", flag.ContinueOnError)
	role := fs.String("role", "", "")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	r, ok := roleFlags[*role]
	if fs.NArg() != 1 || !ok {
		return usagef("keys create: give one NAME and --role publisher or --role admin")
	}
	conn, err := c.client()
	if err != nil {
		return err
	}
	callCtx, cancel := c.callCtx(ctx)
	defer cancel()
	resp, err := notifyv1.NewAdminServiceClient(conn).CreateAPIKey(callCtx, &notifyv1.CreateAPIKeyRequest{Name: fs.Arg(0), Role: r})
	if err != nil {
		return err
	}
	if c.json {
		return c.printJSON(resp)
	}
	// Only the secret on stdout, so that KEY=$(notifyctl keys create …) works.
	fmt.Fprintln(c.out, resp.GetSecret())
	fmt.Fprintf(c.errOut, "created %s key %q; its secret (above) is shown only this once: notify stores only its SHA-256\n",
		*role, resp.GetKey().GetName())
	return nil
}

func (c *cli) keysList(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("keys list", flag.ContinueOnError)
	all := fs.Bool("all", false, "")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return usagef("keys list takes no arguments")
	}
	conn, err := c.client()
	if err != nil {
		return err
	}
	callCtx, cancel := c.callCtx(ctx)
	defer cancel()
	resp, err := notifyv1.NewAdminServiceClient(conn).ListAPIKeys(callCtx, &notifyv1.ListAPIKeysRequest{IncludeRevoked: *all})
	if err != nil {
		return err
	}
	if c.json {
		return c.printJSON(resp)
	}
	tw := tabwriter.NewWriter(c.out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tROLE\tCREATED\tLAST USED\tREVOKED")
	for _, k := range resp.GetKeys() {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", k.GetName(), shortRole(k.GetRole()), stamp(k.GetCreateTime()),
			stamp(k.GetLastUsedTime()), stamp(k.GetRevokeTime()))
	}
	return tw.Flush()
}

func (c *cli) keysRevoke(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("keys revoke", flag.ContinueOnError)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return usagef("keys revoke: give one NAME")
	}
	conn, err := c.client()
	if err != nil {
		return err
	}
	callCtx, cancel := c.callCtx(ctx)
	defer cancel()
	resp, err := notifyv1.NewAdminServiceClient(conn).RevokeAPIKey(callCtx, &notifyv1.RevokeAPIKeyRequest{Name: fs.Arg(0)})
	if err != nil {
		return err
	}
	if c.json {
		if err := c.printJSON(resp); err != nil {
			return err
		}
	}
	if !resp.GetRevoked() {
		return notFoundError{fmt.Sprintf("keys revoke: no active key named %q", fs.Arg(0))}
	}
	if !c.json {
		fmt.Fprintf(c.out, "revoked key %q\n", fs.Arg(0))
	}
	return nil
}
