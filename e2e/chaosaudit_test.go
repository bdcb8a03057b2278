//go:build chaos

package e2e

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"google.golang.org/grpc/codes"

	"notify/pkg/rabbit"
)

// settledState is what the audit waits for: nothing left to do anywhere.
type settledState struct {
	missing    int            // accepted ids with no notification row
	unfinished int            // notifications PENDING or RETRYING
	outbox     int            // outbox rows not published
	unalerted  int            // dead letters not alerted
	queued     map[string]int // messages ready or unacknowledged, by queue
}

func (st settledState) done() bool {
	q := 0
	for _, n := range st.queued {
		q += n
	}
	return st.missing == 0 && st.unfinished == 0 && st.outbox == 0 && st.unalerted == 0 && q == 0
}

func (st settledState) String() string {
	var qs []string
	for name, n := range st.queued {
		if n > 0 {
			qs = append(qs, fmt.Sprintf("%s=%d", name, n))
		}
	}
	sort.Strings(qs)
	return fmt.Sprintf("%d accepted ids without a row, %d notifications unfinished, %d outbox rows unpublished, %d dead letters unalerted, queues [%s]",
		st.missing, st.unfinished, st.outbox, st.unalerted, strings.Join(qs, " "))
}

func (r *chaosRun) settled(ctx context.Context, ids []string) (settledState, error) {
	var st settledState
	db := r.s.db.Pool
	var found int
	if err := db.QueryRow(ctx, `SELECT count(*) FROM notifications WHERE id = ANY($1::uuid[])`, ids).Scan(&found); err != nil {
		return st, err
	}
	st.missing = len(ids) - found
	if err := db.QueryRow(ctx, `SELECT count(*) FROM notifications WHERE status IN ('pending', 'retrying')`).Scan(&st.unfinished); err != nil {
		return st, err
	}
	if err := db.QueryRow(ctx, `SELECT count(*) FROM outbox WHERE published_at IS NULL`).Scan(&st.outbox); err != nil {
		return st, err
	}
	if err := db.QueryRow(ctx, `SELECT count(*) FROM dead_letters WHERE alerted_at IS NULL`).Scan(&st.unalerted); err != nil {
		return st, err
	}
	q, err := r.queueDepths()
	if err != nil {
		return st, err
	}
	st.queued = q
	return st, nil
}

// queueDepths counts the messages in every queue of the run's topology (a passive declare
// answers with the ready count; unacknowledged ones are a consumer's work in progress and
// show up as unfinished notifications).
func (r *chaosRun) queueDepths() (map[string]int, error) {
	conn, err := amqp.Dial(r.rabbit.url())
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	topo := rabbit.NewTopology(r.s.topology, rabbit.WaitDelays(r.p.retryBase, r.p.retryMax))
	depths := map[string]int{}
	for _, name := range topo.Queues() {
		ch, err := conn.Channel()
		if err != nil {
			return nil, err
		}
		q, err := ch.QueueDeclarePassive(name, true, false, false, false, nil)
		if err != nil {
			return nil, fmt.Errorf("queue %s: %w", name, err)
		}
		depths[name] = q.Messages
		_ = ch.Close()
	}
	return depths, nil
}

// audit waits for the run to settle, then checks every accepted notification and prints
// the table. Any loss or stuck notification fails the test.
func (r *chaosRun) audit(lastFault time.Time) {
	t := r.t
	l := r.load
	l.mu.Lock()
	accepted := make(map[string][]string, len(l.accepted))
	for id, plains := range l.accepted {
		accepted[id] = plains
	}
	l.mu.Unlock()
	ids := make([]string, 0, len(accepted))
	for id := range accepted {
		ids = append(ids, id)
	}

	ctx, cancel := context.WithTimeout(context.Background(), r.p.settle+2*time.Minute)
	defer cancel()
	var st settledState
	var err error
	deadline := lastFault.Add(r.p.settle)
	settledAt := time.Time{}
	for {
		st, err = r.settled(ctx, ids)
		if err == nil && st.done() {
			settledAt = time.Now()
			break
		}
		if time.Now().After(deadline) {
			break
		}
		time.Sleep(time.Second)
	}
	if err != nil {
		t.Fatalf("audit: %v", err)
	}
	if settledAt.IsZero() {
		r.logf("NOT settled %s after the last fault: %s", r.p.settle, st)
	} else {
		r.logf("settled %s after the last fault", settledAt.Sub(lastFault).Round(100*time.Millisecond))
	}

	db := r.s.db.Pool
	var problems []string
	problem := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }

	// Every expected (notification, plain token) pair: a final outcome, or the notification
	// expired before it was sent (no row at all).
	var ns, ts []string
	for id, plains := range accepted {
		for _, tok := range plains {
			ns = append(ns, id)
			ts = append(ts, tok)
		}
	}
	rows, err := db.Query(ctx, `
		SELECT e.id::text, e.token, coalesce(n.status, 'no row'), coalesce(d.outcome, '')
		FROM unnest($1::uuid[], $2::text[]) AS e (id, token)
		LEFT JOIN notifications n ON n.id = e.id
		LEFT JOIN deliveries d ON d.notification_id = e.id AND d.token = e.token
		WHERE n.id IS NULL OR d.outcome IS NULL AND n.status <> 'expired'
		   OR d.outcome NOT IN ('delivered', 'invalid', 'failed', 'expired')`, ns, ts)
	if err != nil {
		t.Fatalf("audit tokens: %v", err)
	}
	lostTokens := 0
	for rows.Next() {
		var id, tok, statusName, outcome string
		if err := rows.Scan(&id, &tok, &statusName, &outcome); err != nil {
			t.Fatal(err)
		}
		lostTokens++
		if lostTokens <= 20 {
			problem("notification %s (%s): token %s has outcome %q", id, statusName, tok, outcome)
		}
	}
	rows.Close()
	if rows.Err() != nil {
		t.Fatalf("audit tokens: %v", rows.Err())
	}

	// Broadcasts: every broadcast-audience token has a final row.
	bcRows, err := db.Query(ctx, `
		SELECT n.id::text, n.status, count(d.token) FILTER (WHERE d.outcome IN ('delivered', 'invalid', 'failed', 'expired'))
		FROM notifications n LEFT JOIN deliveries d ON d.notification_id = n.id AND d.token LIKE 'bc-tok-%'
		WHERE n.type = 'chaos.broadcast' GROUP BY n.id, n.status`)
	if err != nil {
		t.Fatalf("audit broadcasts: %v", err)
	}
	broadcasts := 0
	for bcRows.Next() {
		var id, statusName string
		var n int
		if err := bcRows.Scan(&id, &statusName, &n); err != nil {
			t.Fatal(err)
		}
		broadcasts++
		if n != r.p.broadcastDevices && statusName != "expired" {
			lostTokens += r.p.broadcastDevices - n
			problem("broadcast %s (%s): %d of %d audience tokens have a final outcome", id, statusName, n, r.p.broadcastDevices)
		}
	}
	bcRows.Close()

	// Failed tokens must have a dead letter naming them.
	var failedNoDL int
	if err := db.QueryRow(ctx, `
		SELECT count(*) FROM deliveries d WHERE d.outcome = 'failed' AND NOT EXISTS (
			SELECT 1 FROM dead_letters l WHERE l.notification_id = d.notification_id AND d.token = ANY (l.tokens))`).Scan(&failedNoDL); err != nil {
		t.Fatalf("audit dead letters: %v", err)
	}
	if failedNoDL > 0 {
		problem("%d failed tokens have no dead letter naming them", failedNoDL)
	}

	// Counts agree with the rows, and no notification is left unfinished.
	var badCounts, unfinished int
	if err := db.QueryRow(ctx, `
		SELECT count(*) FILTER (WHERE total <> delivered + invalid + failed + expired OR retrying <> 0),
		       count(*) FILTER (WHERE status IN ('pending', 'retrying'))
		FROM notifications`).Scan(&badCounts, &unfinished); err != nil {
		t.Fatalf("audit counts: %v", err)
	}
	if badCounts > 0 {
		problem("%d final notifications whose token counts do not add up", badCounts)
	}
	if unfinished > 0 {
		var sample []string
		rows, _ := db.Query(ctx, `SELECT id::text || ' ' || status || ' updated ' || updated_at::text FROM notifications WHERE status IN ('pending', 'retrying') ORDER BY updated_at LIMIT 10`)
		for rows.Next() {
			var s string
			_ = rows.Scan(&s)
			sample = append(sample, s)
		}
		rows.Close()
		problem("%d notifications stuck unfinished, e.g. %s", unfinished, strings.Join(sample, "; "))
	}
	{
		if st.outbox > 0 {
			problem("%d outbox rows never published", st.outbox)
		}
		if st.unalerted > 0 {
			problem("%d dead letters never alerted", st.unalerted)
		}
		if st.missing > 0 {
			lostTokens += st.missing
			problem("%d accepted notification ids have no row at all", st.missing)
		}
		for q, n := range st.queued {
			if n > 0 {
				problem("queue %s still holds %d messages", q, n)
			}
		}
	}

	// What FCM received against what was recorded: a token recorded delivered more often
	// than FCM accepted it is a loss; the excess is the duplicate sends.
	outcomes := map[string]int{}
	orows, err := db.Query(ctx, `SELECT outcome, count(*) FROM deliveries GROUP BY outcome`)
	if err != nil {
		t.Fatal(err)
	}
	for orows.Next() {
		var o string
		var n int
		_ = orows.Scan(&o, &n)
		outcomes[o] = n
	}
	orows.Close()
	recorded := map[string]int64{}
	drows, err := db.Query(ctx, `SELECT token, count(*) FROM deliveries WHERE outcome = 'delivered' GROUP BY token`)
	if err != nil {
		t.Fatal(err)
	}
	for drows.Next() {
		var tok string
		var n int64
		_ = drows.Scan(&tok, &n)
		recorded[tok] = n
	}
	drows.Close()
	emu := r.s.emulatorStats(true)
	var duplicates, claimed int64
	var dupTokens int
	for tok, ts := range emu.Tokens {
		if extra := ts.Delivered - recorded[tok]; extra > 0 {
			duplicates += extra
			dupTokens++
		}
	}
	for tok, n := range recorded {
		if got := emu.Tokens[tok].Delivered; got < n {
			claimed += n - got
			if claimed <= 5 {
				problem("token %s recorded delivered %d times, FCM accepted it %d times", tok, n, got)
			}
		}
	}
	if claimed > 0 {
		problem("%d deliveries recorded that FCM never accepted", claimed)
	}
	if duplicates > int64(r.bound) {
		problem("%d duplicate sends, more than the bound %d the faults explain", duplicates, r.bound)
	}

	var deadLetters int
	_ = db.QueryRow(ctx, `SELECT count(*) FROM dead_letters`).Scan(&deadLetters)
	l.mu.Lock()
	var codeList []string
	for c, n := range l.codes {
		codeList = append(codeList, fmt.Sprintf("%s %d", c, n))
	}
	internal := l.codes[codes.Internal]
	givenUp := l.given
	l.mu.Unlock()
	sort.Strings(codeList)

	lost := lostTokens + int(claimed)
	settle := "NOT SETTLED"
	if !settledAt.IsZero() {
		settle = settledAt.Sub(lastFault).Round(100 * time.Millisecond).String()
	}
	tokens := 0
	for _, n := range outcomes {
		tokens += n
	}
	var b strings.Builder
	fmt.Fprintf(&b, "\nchaos profile %s, %d replicas of %s\n", r.p.name, chaosReplicas, strings.Join(chaosKinds, ", "))
	row := func(k, v string) { fmt.Fprintf(&b, "| %-22s | %s\n", k, v) }
	row("faults injected", fmt.Sprintf("%d (%d broadcasts besides)", r.faultCount(), broadcasts))
	row("accepted", fmt.Sprintf("%d notifications (%d broadcasts to ≥ %d devices), %d tokens", len(accepted), broadcasts, r.p.broadcastDevices, tokens))
	row("outcomes", fmt.Sprintf("delivered %d, invalid %d, failed %d (%d dead letters, all alerted: %t; Slack posts %d, refused %d), expired %d",
		outcomes["delivered"], outcomes["invalid"], outcomes["failed"], deadLetters, st.unalerted == 0, r.slack.posts.Load(), r.slack.fails.Load(), outcomes["expired"]))
	row("lost", fmt.Sprint(lost))
	row("stuck", fmt.Sprint(unfinished))
	row("duplicates", fmt.Sprintf("%d sends to %d tokens (bound %d)", duplicates, dupTokens, r.bound))
	row("publish retried", fmt.Sprintf("%s; INTERNAL %d; never accepted %d", strings.Join(codeList, ", "), internal, givenUp))
	row("time to settle", settle)
	t.Log(b.String())

	for _, p := range problems {
		t.Error(p)
	}
	if lost > 0 || unfinished > 0 || settledAt.IsZero() {
		t.Errorf("chaos: lost %d, stuck %d, settled %t: see above and the services' logs", lost, unfinished, !settledAt.IsZero())
	}
}

func (r *chaosRun) faultCount() int {
	n := 0
	for _, f := range r.faults {
		if !strings.HasPrefix(f, "broadcast") {
			n++
		}
	}
	return n
}
