package main

import (
	"context"
	"fmt"
	"strings"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/proto"

	notifyv1 "notify/proto/gen/notify/v1"
)

func shortReplay(o notifyv1.ReplayOutcome) string {
	return strings.ToLower(strings.TrimPrefix(o.String(), "REPLAY_OUTCOME_"))
}

func (c *cli) replayCommand() *cobra.Command {
	var (
		dead, includeReplayed, dryRun, force bool
		filter                               deadFilterFlags
		batch                                int
	)
	cmd := &cobra.Command{
		Use:   "replay (ID… | --dead [--reason R] [--since W] [--until W])",
		Short: "Send failed notifications again (undelivered, active tokens only)",
		Long: `Send failed notifications again through the outbox (AdminService.Replay), only to the
tokens that were not delivered and are still active. Give notification ids, or --dead with
a dead-letter filter (not yet replayed dead letters unless --include-replayed).

Each id gets a result: replayed, skipped_in_flight (still scheduled, pending or retrying:
--force replays a pending or retrying one anyway and may send a token twice),
skipped_delivered, skipped_expired, skipped_cancelled or not_found (exit code 3). Ids go --batch at a time; progress is written to stderr.`,
		Example: `  notifyctl replay 01a2… 01a3… --dry-run
  notifyctl replay --dead --reason retries_exhausted --since 1h`,
	}
	f := cmd.Flags()
	f.BoolVar(&dead, "dead", false, "replay the notifications of the dead letters matching --reason, --since, --until")
	filter.add(f)
	f.BoolVar(&includeReplayed, "include-replayed", false, "with --dead: dead letters already replayed too")
	f.BoolVar(&dryRun, "dry-run", false, "change nothing; show what a replay would do")
	f.BoolVar(&force, "force", false, "replay pending and retrying notifications too (may send twice)")
	f.IntVar(&batch, "batch", 100, "notifications per call (1 to 1000)")
	cmd.RunE = c.action(func(ctx context.Context, args []string) error {
		if batch < 1 || batch > maxPageSize {
			return usagef("replay: --batch must be 1 to %d", maxPageSize)
		}
		var ids []string
		var f *notifyv1.DeadLetterFilter
		switch {
		case dead && len(args) > 0:
			return usagef("replay: give notification ids or --dead, not both")
		case dead:
			var err error
			if f, err = filter.filter("replay"); err != nil {
				return err
			}
			if !includeReplayed {
				f.Replayed = proto.Bool(false)
			}
		case len(args) == 0:
			return usagef("replay: give notification ids, or --dead with a filter")
		default:
			seen := map[string]bool{}
			for _, id := range args {
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
		r := &replayer{c: c, admin: notifyv1.NewAdminServiceClient(conn), dryRun: dryRun, force: force,
			all: &notifyv1.ReplayResponse{DryRun: dryRun}}
		if f == nil {
			err = r.byIDs(ctx, ids, batch)
		} else {
			err = r.byFilter(ctx, f, batch)
		}
		if err != nil {
			return err
		}
		if err := c.emit(r.all, func() error {
			tw := c.table("NOTIFICATION", "RESULT", "TOKENS")
			for _, res := range r.all.Results {
				fmt.Fprintf(tw, "%s\t%s\t%d\n", res.GetNotificationId(), shortReplay(res.GetOutcome()), res.GetTokenCount())
			}
			if err := tw.Flush(); err != nil {
				return err
			}
			suffix := ""
			if dryRun {
				suffix = " (dry run: nothing was changed; this is what a replay would do)"
			}
			c.summary("%d notifications: %s%s\n", len(r.all.Results), r.tally, suffix)
			return nil
		}); err != nil {
			return err
		}
		if f != nil && len(r.all.Results) == 0 {
			c.explainNoDeadLetters(ctx, r.admin, f, window(filter.since, filter.until), true, "--include-replayed replays them again")
		}
		if n := r.tally.counts[notifyv1.ReplayOutcome_REPLAY_OUTCOME_NOT_FOUND]; n > 0 {
			return notFoundError{fmt.Sprintf("replay: %d of the notifications do not exist", n)}
		}
		return nil
	})
	return cmd
}

// replayer makes a replay's calls, batch by batch, and gathers their results.
type replayer struct {
	c             *cli
	admin         notifyv1.AdminServiceClient
	dryRun, force bool
	all           *notifyv1.ReplayResponse
	tally         replayTally
}

func (r *replayer) call(ctx context.Context, req *notifyv1.ReplayRequest) (*notifyv1.ReplayResponse, error) {
	req.DryRun, req.Force = r.dryRun, r.force
	callCtx, cancel := r.c.callCtx(ctx)
	defer cancel()
	resp, err := r.admin.Replay(callCtx, req)
	if err != nil {
		if len(r.all.Results) > 0 {
			fmt.Fprintf(r.c.errOut, "replay stopped after %d notifications: %s\n", len(r.all.Results), r.tally)
		}
		return nil, err
	}
	r.all.Results = append(r.all.Results, resp.GetResults()...)
	r.tally.add(resp.GetResults())
	return resp, nil
}

func (r *replayer) byIDs(ctx context.Context, ids []string, batch int) error {
	for start := 0; start < len(ids); start += batch {
		end := min(start+batch, len(ids))
		if _, err := r.call(ctx, &notifyv1.ReplayRequest{Selector: &notifyv1.ReplayRequest_NotificationIds{
			NotificationIds: &notifyv1.NotificationIDs{Ids: ids[start:end]},
		}}); err != nil {
			return err
		}
		if len(ids) > batch {
			fmt.Fprintf(r.c.errOut, "replay: %d/%d notifications: %s\n", end, len(ids), r.tally)
		}
	}
	return nil
}

func (r *replayer) byFilter(ctx context.Context, f *notifyv1.DeadLetterFilter, batch int) error {
	token := ""
	for page := 1; ; page++ {
		resp, err := r.call(ctx, &notifyv1.ReplayRequest{
			Selector: &notifyv1.ReplayRequest_DeadLetters{DeadLetters: f}, PageSize: int32(batch), PageToken: token,
		})
		if err != nil {
			return err
		}
		token = resp.GetNextPageToken()
		if token != "" || page > 1 {
			fmt.Fprintf(r.c.errOut, "replay: %d notifications so far: %s\n", len(r.all.Results), r.tally)
		}
		if token == "" {
			return nil
		}
	}
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
		notifyv1.ReplayOutcome_REPLAY_OUTCOME_SKIPPED_CANCELLED,
		notifyv1.ReplayOutcome_REPLAY_OUTCOME_NOT_FOUND,
	} {
		if n := t.counts[o]; n > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", n, strings.ReplaceAll(shortReplay(o), "_", " ")))
		}
	}
	return strings.Join(parts, ", ")
}
