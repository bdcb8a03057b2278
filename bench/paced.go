package main

import (
	"context"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/durationpb"

	notifyv1 "notify/proto/gen/notify/v1"
)

// Pacing (issue 13): broadcasts sent within a quota set below the sender's raw speed, on the
// emulator (per project, 429 beyond it) and on the app (rate_per_minute) alike.
const (
	// pacedEdgeShare of the raw FCM edge measured at the start of the run is the default
	// app's quota: a rate the sender could exceed, so the pacing, not the sender, sets it.
	pacedEdgeShare = 0.5
	// pacedFanoutShare caps the quota below the fan-out phase's unpaced speed, when that
	// ran and was slower than the edge share: a loaded machine's sender is slower than its edge.
	pacedFanoutShare = 0.8
	// pacedTarget is the share of the quota a paced broadcast must sustain, Publish to the
	// last outcome.
	pacedTarget = 0.9
	// The apps phase's two apps have their own quotas, both at once within the default
	// app's (so the sender's raw speed is not what limits them).
	appAShare, appBShare = 0.6, 0.3
)

// Projects of the paced apps at the emulator; "default" is the app of the earlier phases'
// devices.
var pacedProjects = map[string]string{"default": "bench-default", "bench-a": "bench-project-a", "bench-b": "bench-project-b"}

// pacing is the paced phases' configuration, set once by the first of them to run.
type pacing struct {
	QuotaPerMinute map[string]int `json:"quota_per_minute"` // per app, on the emulator and in FCM_APPS_FILE
	// Basis says how the default app's quota was chosen.
	Basis    string `json:"basis"`
	AppsFile string `json:"apps_file"`
}

// pacedRun is one broadcast sent within its app's quota.
type pacedRun struct {
	App            string  `json:"app"`
	Project        string  `json:"project"`
	Senders        int     `json:"senders"`
	QuotaPerMinute int     `json:"quota_per_minute"`
	Tokens         int64   `json:"tokens"`
	NotificationID string  `json:"notification_id"`
	Seconds        float64 `json:"seconds"` // Publish → last outcome in PostgreSQL; 0: did not finish
	PerSecond      float64 `json:"token_deliveries_per_s"`
	// VsQuota is PerSecond over the quota's rate per second.
	VsQuota            float64 `json:"vs_quota"`
	FirstRecordSeconds float64 `json:"first_record_seconds"`
	Status             string  `json:"status"`
	Counts             counts  `json:"counts"`
	// Emulator is what the app's project received during the broadcast(s) of the phase;
	// Throttled the 429s (QUOTA_EXCEEDED) among them.
	Emulator  projectStats `json:"emulator"`
	Throttled int64        `json:"throttled_429"`
}

// pacedResult is the paced phase: one broadcast to the default app's devices with one
// sender, then the same with two.
type pacedResult struct {
	Pacing       pacing       `json:"pacing"`
	Registration registration `json:"registration"`
	Runs         []pacedRun   `json:"runs"`
}

// appsResult is the apps phase: one broadcast for each of two apps at once.
type appsResult struct {
	Pacing       pacing       `json:"pacing"`
	Registration registration `json:"registration"`
	Runs         []pacedRun   `json:"runs"`
	// Leaked counts the sends the emulator received during the phase for any project but the
	// two apps', plus each app's project's deliveries beyond its own tokens.
	Leaked int64 `json:"leaked"`
}

// setupPacing chooses the quotas, sets them on the emulator, writes the apps file and
// replaces the unpaced sender and retrier with ones that read it. Later phases run with it.
func setupPacing(ctx context.Context, st *stack, emu *emulator, res *results) (*pacing, error) {
	p := &pacing{QuotaPerMinute: map[string]int{}}
	q := st.cfg.PacedQuota
	switch {
	case q > 0:
		p.Basis = "-paced-quota"
	case res.FCMEdgeRate > 0:
		rate := pacedEdgeShare * res.FCMEdgeRate
		p.Basis = fmt.Sprintf("%.1f × the raw FCM edge (%s/s)", pacedEdgeShare, thousands(res.FCMEdgeRate))
		if res.Fanout != nil && res.Fanout.PerSecond > 0 && pacedFanoutShare*res.Fanout.PerSecond < rate {
			rate = pacedFanoutShare * res.Fanout.PerSecond
			p.Basis = fmt.Sprintf("%.1f × the unpaced fan-out (%s/s), below %.1f × the raw FCM edge (%s/s)",
				pacedFanoutShare, thousands(res.Fanout.PerSecond), pacedEdgeShare, thousands(res.FCMEdgeRate))
		}
		q = int(math.Round(rate * 60))
	default:
		return nil, fmt.Errorf("the paced phases need the baselines phase (their quota is %.1f × the raw FCM edge) or -paced-quota", pacedEdgeShare)
	}
	p.QuotaPerMinute["default"] = q
	p.QuotaPerMinute["bench-a"] = int(appAShare * float64(q))
	p.QuotaPerMinute["bench-b"] = int(appBShare * float64(q))

	body := ""
	quotas := map[string]int{}
	for _, app := range []string{"default", "bench-a", "bench-b"} {
		body += fmt.Sprintf("- name: %s\n  project_id: %s\n  endpoint: %s/v1\n  rate_per_minute: %d\n",
			app, pacedProjects[app], st.emulatorURL, p.QuotaPerMinute[app])
		quotas[pacedProjects[app]] = p.QuotaPerMinute[app]
	}
	p.AppsFile = filepath.Join(st.cfg.LogDir, "apps.yaml")
	if err := os.WriteFile(p.AppsFile, []byte(body), 0o600); err != nil {
		return nil, err
	}
	if err := emu.setQuotas(ctx, quotas); err != nil {
		return nil, err
	}
	for _, name := range []string{"sender", "retrier"} {
		if st.running(name) {
			if err := st.stopService(name); err != nil {
				return nil, err
			}
		}
	}
	if err := st.startService(ctx, "retrier-paced", "retrier", st.pacedEnv(p)); err != nil {
		return nil, err
	}
	if err := st.pacedSenders(ctx, p, 1); err != nil {
		return nil, err
	}
	return p, nil
}

// pacedEnv is the environment of a paced sender or retrier: the apps file, and none of the
// FCM_* variables that define the app "default" without it.
func (st *stack) pacedEnv(p *pacing) map[string]string {
	return map[string]string{"FCM_APPS_FILE": p.AppsFile, "FCM_ENDPOINT": "", "FCM_PROJECT_ID": "",
		"FCM_CREDENTIALS_FILE": "", "FCM_RATE_PER_MINUTE": ""}
}

// pacedSenders starts paced senders until n run.
func (st *stack) pacedSenders(ctx context.Context, p *pacing, n int) error {
	for i := 1; i <= n; i++ {
		name := "sender-paced"
		if i > 1 {
			name = fmt.Sprintf("sender-paced-%d", i)
		}
		if st.running(name) {
			continue
		}
		if err := st.startService(ctx, name, "sender", st.pacedEnv(p)); err != nil {
			return err
		}
	}
	return nil
}

// pacedPhase broadcasts to the default app's devices (-fanout-devices of them) within its
// quota, with one sender and then with two.
func pacedPhase(ctx context.Context, st *stack, emu *emulator, p *pacing, prog *progress, mark func(string), f *findings) (*pacedResult, error) {
	res := &pacedResult{Pacing: *p}
	var active int64
	if err := st.pool.QueryRow(ctx, "SELECT count(*) FROM devices WHERE active AND app = 'default'").Scan(&active); err != nil {
		return nil, fmt.Errorf("count active devices: %w", err)
	}
	var err error
	if res.Registration, err = registerDevices(ctx, st, "paced", max(0, st.cfg.FanoutDevices-int(active)), prog); err != nil {
		return nil, err
	}
	tokens := max(int64(st.cfg.FanoutDevices), active)
	if err := st.analyze(ctx); err != nil {
		return nil, err
	}
	mark("paced: register")
	conn, err := st.dial()
	if err != nil {
		return nil, err
	}
	defer conn.Close()

	for n := 1; n <= 2; n++ {
		if err := st.pacedSenders(ctx, p, n); err != nil {
			return nil, err
		}
		before, err := emu.stats(ctx)
		if err != nil {
			return nil, err
		}
		run := pacedRun{App: "default", Project: pacedProjects["default"], Senders: n,
			QuotaPerMinute: p.QuotaPerMinute["default"], Tokens: tokens}
		label := "paced, " + senders(n)
		var settled atomic.Int64
		prog.set(label, func() string {
			return fmt.Sprintf("%s of %s tokens settled", thousands(float64(settled.Load())), thousands(float64(tokens)))
		})
		if err := pacedBroadcast(ctx, st, conn, &run, fmt.Sprintf("%s-paced-%d", st.topology, n), &settled, f, label); err != nil {
			return nil, err
		}
		after, err := emu.stats(ctx)
		if err != nil {
			return nil, err
		}
		checkProjects(&run, before, after, f, label)
		if leaked := sendsElsewhere(before, after, run.Project); leaked > 0 {
			f.fail(fmt.Sprintf("%s: %d sends reached other projects than %s", label, leaked, run.Project))
		}
		res.Runs = append(res.Runs, run)
		mark("paced: broadcast, " + senders(n))
	}
	return res, nil
}

// appsPhase registers devices of two apps (-apps-devices for bench-a, half as many for
// bench-b, whose quota is half of bench-a's, so both take as long) and broadcasts to each
// app at once, with two senders.
func appsPhase(ctx context.Context, st *stack, emu *emulator, p *pacing, prog *progress, mark func(string), f *findings) (*appsResult, error) {
	res := &appsResult{Pacing: *p}
	sizes := map[string]int{"bench-a": st.cfg.AppsDevices, "bench-b": st.cfg.AppsDevices / 2}
	for _, app := range benchApps {
		// The same token strings in both apps: each app's devices are its own registrations,
		// so where a token's sends go shows which app they were sent for.
		r, err := registerAppDevices(ctx, st, app, "apps", sizes[app], prog)
		if err != nil {
			return nil, err
		}
		res.Registration.Devices += r.Devices
		res.Registration.Seconds += r.Seconds
		res.Registration.Created += r.Created
		res.Registration.Batch, res.Registration.Clients = r.Batch, r.Clients
	}
	res.Registration.PerSecond = round(float64(res.Registration.Devices)/res.Registration.Seconds, 1)
	if err := st.analyze(ctx); err != nil {
		return nil, err
	}
	mark("apps: register")
	if err := st.pacedSenders(ctx, p, 2); err != nil {
		return nil, err
	}
	conn, err := st.dial()
	if err != nil {
		return nil, err
	}
	defer conn.Close()

	before, err := emu.stats(ctx)
	if err != nil {
		return nil, err
	}
	res.Runs = make([]pacedRun, len(benchApps))
	errs := make([]error, len(benchApps))
	settled := make([]atomic.Int64, len(benchApps))
	prog.set("apps: two broadcasts at once", func() string {
		return fmt.Sprintf("%s: %s of %s settled, %s: %s of %s", benchApps[0], thousands(float64(settled[0].Load())), thousands(float64(sizes[benchApps[0]])),
			benchApps[1], thousands(float64(settled[1].Load())), thousands(float64(sizes[benchApps[1]])))
	})
	var wg sync.WaitGroup
	for i, app := range benchApps {
		res.Runs[i] = pacedRun{App: app, Project: pacedProjects[app], Senders: 2, QuotaPerMinute: p.QuotaPerMinute[app],
			Tokens: int64(sizes[app])}
		wg.Go(func() {
			errs[i] = pacedBroadcast(ctx, st, conn, &res.Runs[i], st.topology+"-apps-"+app, &settled[i], f, "apps: "+app)
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return nil, err
		}
	}
	after, err := emu.stats(ctx)
	if err != nil {
		return nil, err
	}
	// Every send of the phase went to the project of its app: the emulator received nothing
	// for any other project, and each app's project delivered no more than its own tokens
	// (the apps' devices have the same token strings and different counts, so a token sent
	// through the other app's project shows as a surplus there and a loss here).
	res.Leaked = sendsElsewhere(before, after, pacedProjects[benchApps[0]], pacedProjects[benchApps[1]])
	for i := range res.Runs {
		checkProjects(&res.Runs[i], before, after, f, "apps: "+res.Runs[i].App)
		res.Leaked += max(0, res.Runs[i].Emulator.Delivered-res.Runs[i].Tokens)
	}
	if res.Leaked > 0 {
		f.fail(fmt.Sprintf("apps: %d sends reached another project than their app's", res.Leaked))
	}
	mark("apps: two broadcasts at once")
	return res, nil
}

// sendsElsewhere counts the sends the emulator received between two readings for any
// project but those expected.
func sendsElsewhere(before, after emulatorStats, expected ...string) int64 {
	var n int64
	for project, s := range after.Projects {
		if !slices.Contains(expected, project) {
			n += s.since(before.Projects[project]).Requests
		}
	}
	return n
}

// checkProjects fills run's emulator counters from two readings and records what went
// wrong.
func checkProjects(run *pacedRun, before, after emulatorStats, f *findings, label string) {
	run.Emulator = after.Projects[run.Project].since(before.Projects[run.Project])
	run.Throttled = run.Emulator.Failed["QUOTA_EXCEEDED"]
	switch e := run.Emulator; {
	case run.Seconds == 0:
		// Unfinished, reported by pacedBroadcast.
	case e.Delivered < run.Tokens:
		f.fail(fmt.Sprintf("%s: FCM (the emulator, project %s) received %d of %d tokens: %d LOST", label, run.Project, e.Delivered, run.Tokens, run.Tokens-e.Delivered))
	case e.Delivered > run.Tokens:
		f.warn(fmt.Sprintf("%s: FCM (the emulator, project %s) received %d deliveries for %d tokens: %d sent twice", label, run.Project, e.Delivered, run.Tokens, e.Delivered-run.Tokens))
	}
	if n := run.Emulator.failed() - run.Throttled; n > 0 {
		f.fail(fmt.Sprintf("%s: the emulator answered %d requests with errors %v", label, n, run.Emulator.Failed))
	}
}

// pacedBroadcast publishes a broadcast to run's app and waits until PostgreSQL holds an
// outcome for each of its run.Tokens tokens (or -drain-timeout passes), counting them in
// settled. A broadcast that did not finish, or finished otherwise than delivered, is a
// failure of the run; an error means the phase could not go on.
func pacedBroadcast(ctx context.Context, st *stack, conn *grpc.ClientConn, run *pacedRun, key string, settled *atomic.Int64, f *findings, label string) error {
	notifications := notifyv1.NewNotificationServiceClient(conn)
	admin := notifyv1.NewAdminServiceClient(conn)
	start := time.Now()
	app := run.App
	if app == "default" {
		app = "" // as a one-app client sends it
	}
	resp, err := notifications.Publish(ctx, &notifyv1.PublishRequest{
		IdempotencyKey: key,
		Type:           "bench.paced",
		App:            app,
		Recipients:     &notifyv1.Recipients{Target: &notifyv1.Recipients_AllDevices{AllDevices: &notifyv1.AllDevices{}}},
		Content:        &notifyv1.Content{Title: benchTitle, Body: benchBody},
		Options:        &notifyv1.Options{Priority: notifyv1.Priority_PRIORITY_HIGH, Ttl: durationpb.New(time.Hour)},
	})
	if err != nil {
		return fmt.Errorf("%s: publish the broadcast: %w", label, err)
	}
	run.NotificationID = resp.GetNotificationId()

	deadline := start.Add(st.cfg.DrainTimeout)
	var done time.Time
	for {
		got, err := admin.GetNotification(ctx, &notifyv1.GetNotificationRequest{NotificationId: run.NotificationID, PageSize: 1})
		if err != nil {
			return fmt.Errorf("%s: GetNotification %s: %w", label, run.NotificationID, err)
		}
		now := time.Now()
		c := countsOf(got.GetNotification().GetCounts())
		run.Counts = c
		settled.Store(c.settled())
		if c.settled() > 0 && run.FirstRecordSeconds == 0 {
			run.FirstRecordSeconds = round(now.Sub(start).Seconds(), 3)
		}
		if done.IsZero() && c.settled() >= run.Tokens {
			done = now
		}
		s := got.GetNotification().GetStatus()
		final := s != notifyv1.NotificationStatus_NOTIFICATION_STATUS_PENDING && s != notifyv1.NotificationStatus_NOTIFICATION_STATUS_RETRYING
		if !done.IsZero() && final || now.After(deadline) {
			run.Status = statusName(s)
			break
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(fanoutPoll):
		}
	}
	if done.IsZero() {
		f.fail(fmt.Sprintf("%s: only %d of %d tokens settled within %s (-drain-timeout)", label, run.Counts.settled(), run.Tokens, st.cfg.DrainTimeout))
		return nil
	}
	run.Seconds = round(done.Sub(start).Seconds(), 3)
	run.PerSecond = perSecond(run.Counts.Delivered, done.Sub(start))
	run.VsQuota = ratio(run.PerSecond, float64(run.QuotaPerMinute)/60)
	if c := run.Counts; c.Total != run.Tokens || c.Delivered != run.Tokens {
		f.fail(fmt.Sprintf("%s: the database holds %d delivered of %d tokens (resolved %d, invalid %d, retrying %d, failed %d, expired %d), status %s",
			label, c.Delivered, run.Tokens, c.Total, c.Invalid, c.Retrying, c.Failed, c.Expired, run.Status))
	}
	return nil
}
