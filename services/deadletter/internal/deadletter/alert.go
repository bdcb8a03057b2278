package deadletter

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
	"time"
)

// maxSamples is how many notification ids an alert names per reason.
const maxSamples = 3

// Alert is one message about a batch of stored, not yet alerted dead letters, grouped by
// reason.
type Alert struct {
	Total    int       // dead letters in this alert
	Tokens   int       // tokens they cover
	From, To time.Time // when the oldest and the newest of them were stored
	Groups   []Group   // by reason, most dead letters first
	// Remaining is how many other dead letters are waiting for a later alert.
	Remaining int
}

// Group is the dead letters of one reason.
type Group struct {
	Reason  string
	Count   int
	Tokens  int
	Samples []string // up to maxSamples distinct notification ids
}

// pendingRow is what the alerter reads of an unalerted row.
type pendingRow struct {
	ID             int64
	Reason         string
	NotificationID string
	TokenCount     int
	CreatedAt      time.Time
}

// summarize groups rows into an Alert; backlog is how many rows were unalerted in all.
func summarize(rows []pendingRow, backlog int) Alert {
	a := Alert{Total: len(rows), Remaining: max(backlog-len(rows), 0)}
	byReason := map[string]*Group{}
	for _, r := range rows {
		g := byReason[r.Reason]
		if g == nil {
			g = &Group{Reason: r.Reason}
			byReason[r.Reason] = g
		}
		g.Count++
		g.Tokens += r.TokenCount
		if r.NotificationID != "" && len(g.Samples) < maxSamples && !slices.Contains(g.Samples, r.NotificationID) {
			g.Samples = append(g.Samples, r.NotificationID)
		}
		a.Tokens += r.TokenCount
		if a.From.IsZero() || r.CreatedAt.Before(a.From) {
			a.From = r.CreatedAt
		}
		if r.CreatedAt.After(a.To) {
			a.To = r.CreatedAt
		}
	}
	for _, g := range byReason {
		a.Groups = append(a.Groups, *g)
	}
	slices.SortFunc(a.Groups, func(x, y Group) int {
		return cmp.Or(cmp.Compare(y.Count, x.Count), strings.Compare(x.Reason, y.Reason))
	})
	return a
}

// Window is the --since and --until values that select exactly the alert's dead letters by
// storage times, as absolute times (RFC 3339, UTC, whole seconds around From and To): the
// command still means the same letters when it is run hours after the alert. A relative
// "--since 2h" counted from the alert's time selected nothing once run later than that.
func (a Alert) Window() (since, until string) {
	return a.From.UTC().Truncate(time.Second).Format(time.RFC3339),
		a.To.UTC().Truncate(time.Second).Add(time.Second).Format(time.RFC3339)
}

// ReplayCommand is the command that replays the group's dead letters stored in the window
// (see Alert.Window).
func (g Group) ReplayCommand(since, until string) string {
	return fmt.Sprintf("notifyctl replay --dead --reason %s --since %s --until %s", g.Reason, since, until)
}

// ListCommand lists the stored dead letters.
const ListCommand = "notifyctl dead list"

// Text renders the alert as Slack mrkdwn (one line per reason).
func (a Alert) Text() string {
	var b strings.Builder
	fmt.Fprintf(&b, ":rotating_light: *notify: %d dead letters* (%d tokens), stored %s – %s\n",
		a.Total, a.Tokens, a.From.UTC().Format(time.DateTime), a.To.UTC().Format(time.DateTime+" UTC"))
	since, until := a.Window()
	for _, g := range a.Groups {
		fmt.Fprintf(&b, "• *%s*: %d dead letters, %d tokens", escape(g.Reason), g.Count, g.Tokens)
		if len(g.Samples) > 0 {
			fmt.Fprintf(&b, " (e.g. %s)", strings.Join(g.Samples, ", "))
		}
		fmt.Fprintf(&b, "\n    replay: `%s`\n", escape(g.ReplayCommand(since, until)))
	}
	fmt.Fprintf(&b, "List them: `%s`", ListCommand)
	if a.Remaining > 0 {
		fmt.Fprintf(&b, "\n%d more dead letters will follow in the next alert.", a.Remaining)
	}
	return b.String()
}

// escape escapes the characters Slack's mrkdwn gives a meaning to.
func escape(s string) string {
	return strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;").Replace(s)
}
