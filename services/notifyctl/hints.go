package main

import (
	"cmp"
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"

	"google.golang.org/protobuf/proto"

	notifyv1 "notify/proto/gen/notify/v1"
)

// A filter that selects nothing is no error, but an operator who mistyped a dead-letter
// reason or a notification type would read "0 notifications" as "nothing failed". Reasons
// and types are open sets (the broker adds reasons of its own, such as delivery_limit;
// types are the callers'), so such a value cannot be refused; instead, after an empty
// result, notifyctl looks (a call or two, only then) at what the same window does hold and
// says it on stderr.

// window is --since and --until as given, for a message: " (--since 1h)", or "".
func window(since, until string) string {
	var parts []string
	if since != "" {
		parts = append(parts, "--since "+since)
	}
	if until != "" {
		parts = append(parts, "--until "+until)
	}
	if len(parts) == 0 {
		return ""
	}
	return " (" + strings.Join(parts, " ") + ")"
}

// hint writes a line about an empty result on stderr.
func (c *cli) hint(format string, args ...any) {
	fmt.Fprintf(c.errOut, "notifyctl: "+format+"\n", args...)
}

// tally lists values by how often they occur, most frequent first: "a (2), b (1)".
func tally(values []string) string {
	counts := map[string]int{}
	for _, v := range values {
		counts[v]++
	}
	keys := slices.SortedFunc(maps.Keys(counts), func(a, b string) int {
		return cmp.Or(cmp.Compare(counts[b], counts[a]), cmp.Compare(a, b))
	})
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s (%d)", k, counts[k])
	}
	return strings.Join(parts, ", ")
}

// newest qualifies a tally taken from one page of a longer listing.
func newest(nextPageToken string) string {
	if nextPageToken != "" {
		return fmt.Sprintf(" of the newest %d", maxPageSize)
	}
	return ""
}

// explainNoDeadLetters says why dead-letter filter f selected nothing: no dead letter with
// its reason (and the reasons there are), none in the replayed state asked for, or (for a
// replay, which selects notifications) dead letters naming no notification. unreplayedHint
// is what to do when every match was replayed already. A failing call only leaves the
// hint out: the command itself succeeded.
func (c *cli) explainNoDeadLetters(ctx context.Context, admin notifyv1.AdminServiceClient, f *notifyv1.DeadLetterFilter,
	win string, replaying bool, unreplayedHint string,
) {
	list := func(f *notifyv1.DeadLetterFilter, size int32) (*notifyv1.ListDeadLettersResponse, bool) {
		callCtx, cancel := c.callCtx(ctx)
		defer cancel()
		resp, err := admin.ListDeadLetters(callCtx, &notifyv1.ListDeadLettersRequest{Filter: f, PageSize: size})
		return resp, err == nil
	}
	what := "the dead letters"
	if f.GetReason() != "" {
		what = fmt.Sprintf("the dead letters with reason %q", f.GetReason())
	}
	if replaying {
		if resp, ok := list(f, 1); !ok {
			return
		} else if len(resp.GetDeadLetters()) > 0 {
			cmd := "notifyctl dead list"
			if f.GetReason() != "" {
				cmd += " --reason " + f.GetReason()
			}
			c.hint("%s%s name no notification (messages that could not be attributed to one): nothing to replay; %s shows them", what, win, cmd)
			return
		}
	}
	if f.Replayed != nil {
		anyState := proto.CloneOf(f)
		anyState.Replayed = nil
		resp, ok := list(anyState, 1)
		switch {
		case !ok:
			return
		case len(resp.GetDeadLetters()) > 0 && !f.GetReplayed():
			c.hint("%s%s were all replayed already; %s", what, win, unreplayedHint)
			return
		case len(resp.GetDeadLetters()) > 0:
			c.hint("none of %s%s was replayed yet; leave out --replayed to list them", what, win)
			return
		}
	}
	if f.GetReason() == "" {
		return // no dead letters in the window: "0" says it all
	}
	wider := proto.CloneOf(f)
	wider.Reason, wider.Replayed = "", nil
	resp, ok := list(wider, maxPageSize)
	switch {
	case !ok:
	case len(resp.GetDeadLetters()) == 0:
		c.hint("no dead letters at all%s, whatever their reason", win)
	default:
		reasons := make([]string, len(resp.GetDeadLetters()))
		for i, d := range resp.GetDeadLetters() {
			reasons[i] = d.GetReason()
		}
		c.hint("no dead letters with reason %q%s; the reasons%s there: %s", f.GetReason(), win, newest(resp.GetNextPageToken()), tally(reasons))
	}
}

// explainNoNotifications says, when req selected nothing, whether its type is one no
// notification of the window has, and the types there are. A failing call only leaves the
// hint out.
func (c *cli) explainNoNotifications(ctx context.Context, admin notifyv1.AdminServiceClient, req *notifyv1.ListNotificationsRequest, win string) {
	if req.GetType() == "" {
		return
	}
	list := func(r *notifyv1.ListNotificationsRequest) (*notifyv1.ListNotificationsResponse, bool) {
		callCtx, cancel := c.callCtx(ctx)
		defer cancel()
		resp, err := admin.ListNotifications(callCtx, r)
		return resp, err == nil
	}
	// Any status: a type that is there with another status is no typo.
	wider := &notifyv1.ListNotificationsRequest{StartTime: req.GetStartTime(), EndTime: req.GetEndTime(), PageSize: maxPageSize}
	resp, ok := list(wider)
	if !ok {
		return
	}
	if len(resp.GetNotifications()) == 0 {
		c.hint("no notifications at all%s, whatever their type", win)
		return
	}
	types := make([]string, len(resp.GetNotifications()))
	for i, n := range resp.GetNotifications() {
		types[i] = n.GetType()
	}
	if slices.Contains(types, req.GetType()) {
		return
	}
	if resp.GetNextPageToken() != "" {
		// Not among the newest page: look for the type itself, through its index.
		exact := &notifyv1.ListNotificationsRequest{Type: req.GetType(), StartTime: req.GetStartTime(), EndTime: req.GetEndTime(), PageSize: 1}
		if found, ok := list(exact); !ok || len(found.GetNotifications()) > 0 {
			return
		}
	}
	c.hint("no notifications of type %q%s; the types%s there: %s", req.GetType(), win, newest(resp.GetNextPageToken()), tally(types))
}
