package main

import (
	"fmt"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"notify/pkg/schema"
)

// report prints the run's table.
func (r *results) report(w io.Writer, jsonPath string) {
	m := r.Machine
	commit := m.GitCommit
	if len(commit) > 12 {
		commit = commit[:12]
	}
	if m.GitDirty > 0 {
		commit += fmt.Sprintf(" (+%d uncommitted files)", m.GitDirty)
	}
	fmt.Fprintf(w, "\nnotify bench %s · commit %s · %d cores (%s) · %s · RabbitMQ %s · PostgreSQL %s · load at start %s\n",
		r.RunID, commit, m.Cores, m.CPUModel, m.GoVersion, m.RabbitMQ, m.PostgreSQL, m.LoadAverage)
	events := ""
	if r.Settings.StatusEventsOff {
		events = " · status events: off (" + schema.StatusEventsSetting + ")"
	}
	fmt.Fprintf(w, "took %s · API key sent: %s%s · results %s · service logs %s\n\n",
		time.Duration(r.DurationSeconds*float64(time.Second)).Round(time.Second), yesNo(r.Settings.APIKey), events, jsonPath, r.LogDir)

	met := map[string]string{}
	for _, t := range r.Targets {
		met[t.Name] = t.Goal + "  " + metWord(t.Met)
	}

	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "FIGURE\tVALUE\tVS BASELINE\tTARGET / NOTE")
	for i, b := range r.Broker {
		fmt.Fprintf(tw, "raw broker (%s): publish+consume, quorum queue, window %d, %d B\t%s msg/s\t%s\t%s published, %s consumed\n",
			runLabel(i), b.Window, b.BodyBytes, thousands(b.PerSecond), baselineNote(i, len(r.Broker), r.BrokerRate),
			thousands(float64(b.Published)), thousands(float64(b.Consumed)))
	}
	for i, f := range r.FCMEdge {
		fmt.Fprintf(tw, "raw FCM edge (%s): pkg/fcm, %d × 500-token multicasts at once\t%s tokens/s\t%s\t%s tokens, %d failed\n",
			runLabel(i), f.Concurrency, thousands(f.PerSecond), baselineNote(i, len(r.FCMEdge), r.FCMEdgeRate),
			thousands(float64(f.Tokens)), f.Failed)
	}
	if e := r.FanoutEdge; e != nil {
		fmt.Fprintf(tw, "raw FCM edge (before fan-out): pkg/fcm, %d × 500-token multicasts at once\t%s tokens/s\t%s\t%s tokens, %d failed\n",
			e.Concurrency, thousands(e.PerSecond), "the fan-out's baseline", thousands(float64(e.Tokens)), e.Failed)
	}
	if p := r.Publish; p != nil {
		fmt.Fprintf(tw, "Publish, %d clients, %s\t%s accepted/s\t%s\t%s\n", p.Clients, secs(p.Seconds),
			thousands(p.PerSecond), vs(p.PerSecond, r.BrokerRate, "raw broker"), met["Publish accepted"])
		fmt.Fprintf(tw, "  Publish latency\t%s\t\t%s\n", dist(p.Latency), met["Publish p99"])
		if n := sumErrors(p.Errors); n > 0 {
			fmt.Fprintf(tw, "  failed calls\t%d\t\t%v\n", n, p.Errors)
		}
		fmt.Fprintf(tw, "  outbox relay\t%s\t%s\t%s\n", drainRate(p.Relay, "rows/s"),
			vs(p.Relay.PerSecond, r.BrokerRate, "raw broker"), drainNote(p.Relay, "rows"))
		fmt.Fprintf(tw, "  sender (audiences without devices)\t%s\t\t%s\n", drainRate(p.Sender, "notifications/s"),
			drainNote(p.Sender, "notifications"))
	}
	if b := r.Batch; b != nil {
		fmt.Fprintf(tw, "PublishBatch, %d clients × 500 requests, %s notifications\t%s accepted/s\t%s\t%s\n", b.Clients,
			thousands(float64(b.Notifications)), thousands(b.PerSecond), vs(b.PerSecond, r.BrokerRate, "raw broker"), met[batchTargetName])
		fmt.Fprintf(tw, "  PublishBatch call latency\t%s\t\t%d calls in %s\n", dist(b.CallLatency), b.Calls, secs(b.Seconds))
		if n := sumErrors(b.Errors); n > 0 {
			fmt.Fprintf(tw, "  failed\t%d\t\t%v\n", n, b.Errors)
		}
		fmt.Fprintf(tw, "  outbox relay\t%s\t%s\t%s; %s\n", drainRate(b.Relay, "rows/s"),
			vs(b.Relay.PerSecond, r.BrokerRate, "raw broker"), drainNote(b.Relay, "rows"), met[relayTargetName])
		fmt.Fprintf(tw, "  sender (audiences without devices)\t%s\t\t%s\n", drainRate(b.Sender, "notifications/s"),
			drainNote(b.Sender, "notifications"))
	}
	if f := r.Fanout; f != nil {
		g := f.Registration
		fmt.Fprintf(tw, "RegisterDevices, %s × %d calls at once\t%s devices/s\t\t%s devices in %s (+%s from earlier phases)\n",
			thousands(float64(g.Batch)), g.Clients, thousands(g.PerSecond), thousands(float64(g.Devices)), secs(g.Seconds),
			thousands(float64(f.EarlierDevices)))
		if f.Seconds > 0 {
			fmt.Fprintf(tw, "fan-out: broadcast to %s tokens, Publish → last outcome in Postgres\t%s tokens/s\t%s\t%s\n",
				thousands(float64(r.Settings.FanoutDevices)), thousands(f.PerSecond), fanoutVs(r),
				met[fanoutTargetName])
			fmt.Fprintf(tw, "  took\t%s\t\tfirst outcome recorded after %s; status %s; FCM received %s (%d errors)\n",
				secs(f.Seconds), secs(f.FirstRecordSeconds), f.Status, thousands(float64(f.EmulatorDelivered)), f.EmulatorFailed)
			fmt.Fprintf(tw, "  planned against\t%s deliveries\t\tof %s earlier notifications, analyzed\n",
				thousands(float64(f.HistoryDeliveries)), thousands(float64(f.HistoryNotifications)))
		} else {
			fmt.Fprintf(tw, "fan-out: broadcast to %s tokens, Publish → last outcome in Postgres\tDID NOT FINISH\t\t%s of them settled in time; FCM received %s; status %s\n",
				thousands(float64(r.Settings.FanoutDevices)), thousands(float64(f.Counts.settled())), thousands(float64(f.EmulatorDelivered)), f.Status)
		}
	}
	if l := r.Latency; l != nil {
		note := met[latencyTargetName]
		if l.TargetRate != latencyTargetRate {
			note = "target stated at 1,000/s: not held against this rate"
		}
		fmt.Fprintf(tw, "Publish → FCM receipt, %s/s for %s, one token each\t%s\t\tp50 %s\n",
			thousands(float64(l.TargetRate)), secs(l.Seconds), dist(l.EndToEnd), note)
		if l.TargetRate == latencyTargetRate {
			fmt.Fprintf(tw, "  p99\t%s ms\t\t%s\n", num(l.EndToEnd.P99MS), met[latencyP99Name])
			fmt.Fprintf(tw, "  delivered rate\t%s/s\t\t%s\n", thousands(l.DeliveredPerSecond), met[latencyHoldName])
		}
		fmt.Fprintf(tw, "  Publish latency at that rate\t%s\t\tachieved %s/s, max schedule lag %.0f ms\n",
			dist(l.PublishLatency), thousands(l.AchievedRate), l.MaxLagMS)
		fmt.Fprintf(tw, "  received by FCM\t%s of %s\t\tmissing %d, not timed %d, duplicates %d; sustained %s/s to the last receipt\n",
			thousands(float64(l.Received+l.Unmatched)), thousands(float64(l.Notifications-sumErrors(l.Errors))), l.Missing, l.Unmatched,
			l.Duplicates, thousands(l.DeliveredPerSecond))
	}
	if ref := r.Reference; ref != nil {
		value, finished := oneTokenFigures(ref)
		c := ref.CPUMSPerNotification
		fmt.Fprintf(tw, "in-memory push server, %s one-token notifications, %d clients, Publish → last FCM answer\t%s\tsame-run reference\t"+
			"no database, no broker; CPU ms per notification: server %.3f, emulator %.3f, bench %.3f\n",
			thousands(float64(ref.Notifications)), ref.Clients, value, c[memserverBinary], c["fcm-emulator"], c[groupBench])
		fmt.Fprintf(tw, "  Publish accepted them at\t%s/s\treference\tin %s; %s; %s DELIVERED, FCM received %s\n",
			thousands(ref.PublishPerSecond), secs(ref.PublishSeconds), finished, thousands(float64(ref.Delivered)),
			thousands(float64(ref.EmulatorDelivered)))
	}
	if su := r.Sustain; su != nil {
		value, finished := oneTokenFigures(su)
		var vsRef, vsRefPublish string
		if r.SustainVsReference > 0 {
			vsRef = fmt.Sprintf("%.2f× in-memory push server", r.SustainVsReference)
			vsRefPublish = fmt.Sprintf("%.2f× in-memory push server's", r.SustainPublishVsReference)
		}
		fmt.Fprintf(tw, "pipeline, %s one-token notifications, %d clients, Publish → last outcome in Postgres\t%s\t%s\t%s\n",
			thousands(float64(su.Notifications)), su.Clients, value, vsRef, met[sustainTargetName])
		fmt.Fprintf(tw, "  Publish accepted them at\t%s/s\t%s\tin %s; %s; %s DELIVERED, FCM received %s\n",
			thousands(su.PublishPerSecond), vsRefPublish, secs(su.PublishSeconds), finished, thousands(float64(su.Delivered)),
			thousands(float64(su.EmulatorDelivered)))
	}
	if p := r.Paced; p != nil {
		fmt.Fprintf(tw, "paced: quota of the default app, on the emulator and rate_per_minute\t%s/min\t\t%s/s: %s\n",
			thousands(float64(p.Pacing.QuotaPerMinute["default"])), thousands(float64(p.Pacing.QuotaPerMinute["default"])/60), p.Pacing.Basis)
		for _, run := range p.Runs {
			pacedRow(tw, run, fmt.Sprintf("paced broadcast to %s tokens, %s, Publish → last outcome", thousands(float64(run.Tokens)), senders(run.Senders)),
				met[pacedTargetName(run)], met[pacedTargetName(run)+": 429s"])
		}
	}
	if a := r.Apps; a != nil {
		fmt.Fprintf(tw, "two apps at once, 2 senders: RegisterDevices\t%s devices/s\t\t%s devices of %s\n",
			thousands(a.Registration.PerSecond), thousands(float64(a.Registration.Devices)), strings.Join(benchApps, " and "))
		for _, run := range a.Runs {
			pacedRow(tw, run, fmt.Sprintf("  %s: broadcast to %s tokens, quota %s/min", run.App, thousands(float64(run.Tokens)), thousands(float64(run.QuotaPerMinute))),
				met[pacedTargetName(run)], met[pacedTargetName(run)+": 429s"])
		}
		fmt.Fprintf(tw, "  sends to the other app's project (or any other)\t%d\t\t%s\n", a.Leaked, met[appsLeakName])
	}
	tw.Flush()

	var perNotification []*sustainResult
	var rows []string
	for _, p := range []struct {
		name string
		res  *sustainResult
	}{{"sustain (notify)", r.Sustain}, {"reference (in-memory push server)", r.Reference}} {
		if p.res != nil && len(p.res.CPUMSPerNotification) > 0 {
			perNotification, rows = append(perNotification, p.res), append(rows, p.name)
		}
	}
	if len(perNotification) > 0 {
		fmt.Fprintln(w)
		groups := append(slices.Clone(serviceNames), memserverBinary, groupPostgres, groupRabbitMQ, groupBench, groupOther, groupMachine)
		tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintf(tw, "CPU ms PER ONE-TOKEN NOTIFICATION\t%s\t\n", strings.Join(groups, "\t"))
		for i, res := range perNotification {
			fmt.Fprintf(tw, "%s\t", rows[i])
			for _, g := range groups {
				fmt.Fprintf(tw, "%.3f\t", res.CPUMSPerNotification[g])
			}
			fmt.Fprintln(tw)
		}
		tw.Flush()
	}

	if len(r.Resources) > 0 {
		fmt.Fprintln(w)
		tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "SERVICE\tRSS AT REST\tPEAK RSS (VmHWM)\tRSS AT END\tCPU SECONDS\tTARGET")
		for _, s := range r.Resources {
			rest, note := fmt.Sprintf("%.1f MB", s.RestRSSMB), met[s.Service+" RSS at rest"]
			if s.StartedLater {
				rest, note = "—", "started by the paced phases"
			}
			if s.StoppedEarly {
				note += "; replaced by the paced phases (at end: when stopped)"
			}
			fmt.Fprintf(tw, "%s\t%s\t%.1f MB\t%.1f MB\t%.1f\t%s\n", s.Service, rest, s.PeakRSSMB, s.EndRSSMB, s.CPUSeconds, note)
		}
		tw.Flush()
	}

	if len(r.CPUByPhase) > 0 {
		fmt.Fprintln(w)
		groups := append(slices.Clone(serviceNames), groupBench, groupRabbitMQ, groupPostgres, groupOther)
		if r.Reference != nil {
			groups = slices.Insert(groups, len(serviceNames), memserverBinary)
		}
		tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintf(tw, "CPU SECONDS BY PHASE\tWALL s\t%s\tMACHINE BUSY\t\n", strings.Join(groups, "\t"))
		for _, p := range r.CPUByPhase {
			fmt.Fprintf(tw, "%s\t%.1f", p.Phase, p.Seconds)
			for _, g := range groups {
				fmt.Fprintf(tw, "\t%.1f", p.CPU[g])
			}
			fmt.Fprintf(tw, "\t%.0f%%\t\n", p.Utilisation*100)
		}
		tw.Flush()
	}

	if len(r.Targets) > 0 {
		fmt.Fprintln(w)
		tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "TARGET\tMEASURED\tGOAL\t")
		for _, t := range r.Targets {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", t.Name, targetValue(t), t.Goal, metWord(t.Met))
		}
		tw.Flush()
	}

	if len(r.Warnings) > 0 {
		fmt.Fprintf(w, "\nWARNINGS (%d)\n", len(r.Warnings))
		for _, s := range r.Warnings {
			fmt.Fprintf(w, "  ! %s\n", s)
		}
	}
	if len(r.Failures) > 0 {
		fmt.Fprintf(w, "\n!!! FAILURES (%d): THIS RUN LOST, FAILED OR CRASHED SOMETHING; ITS FIGURES ARE NOT VALID\n", len(r.Failures))
		for _, s := range r.Failures {
			fmt.Fprintf(w, "  ✗ %s\n", s)
		}
	} else if r.Publish != nil || r.Batch != nil || r.Fanout != nil || r.Latency != nil || r.Reference != nil || r.Sustain != nil || r.Paced != nil || r.Apps != nil {
		fmt.Fprintln(w, "\nno failures: every accepted notification reached FCM and every outcome is in Postgres")
	}
}

// oneTokenFigures are a one-token phase's rate and whether it finished.
func oneTokenFigures(r *sustainResult) (value, finished string) {
	value, finished = thousands(r.PerSecond)+" notifications/s", "all finished after "+secs(r.Seconds)
	if !r.Finished {
		value += " (DID NOT FINISH)"
		finished = "not all finished after " + secs(r.Seconds)
	}
	return value, finished
}

// pacedRow prints a paced broadcast: its rate against its quota, and what the emulator got.
func pacedRow(tw io.Writer, run pacedRun, title, metRate, met429 string) {
	if run.Seconds == 0 {
		fmt.Fprintf(tw, "%s\tDID NOT FINISH\t\t%s of them settled in time; status %s\n", title, thousands(float64(run.Counts.settled())), run.Status)
		return
	}
	fmt.Fprintf(tw, "%s\t%s tokens/s\t%.2f× quota (%s/s)\t%s\n", title, thousands(run.PerSecond), run.VsQuota,
		thousands(float64(run.QuotaPerMinute)/60), metRate)
	fmt.Fprintf(tw, "    took\t%s\t\tfirst outcome after %s; status %s; project %s received %s, %d answered 429: %s\n",
		secs(run.Seconds), secs(run.FirstRecordSeconds), run.Status, run.Project, thousands(float64(run.Emulator.Delivered)),
		run.Throttled, met429)
}

func vs(v, base float64, name string) string {
	if base == 0 {
		return "(no baseline run)"
	}
	return fmt.Sprintf("%.2f× %s", ratio(v, base), name)
}

// fanoutVs is the fan-out's ratio to its baseline (see fanoutBase), and to the run's mean
// raw FCM edge when that is another figure.
func fanoutVs(r *results) string {
	if r.FanoutEdge == nil || r.FCMEdgeRate == 0 {
		return vs(r.Fanout.PerSecond, r.fanoutBase(), "raw FCM edge")
	}
	return fmt.Sprintf("%s before it; %.2f× the run's mean", vs(r.Fanout.PerSecond, r.fanoutBase(), "raw FCM edge"),
		ratio(r.Fanout.PerSecond, r.FCMEdgeRate))
}

func runLabel(i int) string {
	if i == 0 {
		return "start"
	}
	return "end"
}

// baselineNote marks the last of a baseline's runs with the mean the figures are held against.
func baselineNote(i, n int, mean float64) string {
	if i < n-1 {
		return "baseline"
	}
	return "baseline; mean " + thousands(mean)
}

func drainRate(d drain, unit string) string {
	if !d.Drained {
		return "not drained"
	}
	return thousands(d.PerSecond) + " " + unit
}

func drainNote(d drain, what string) string {
	if !d.Drained {
		return fmt.Sprintf("%s %s not drained in time; max backlog %s", thousands(float64(d.Items)), what, thousands(float64(d.MaxBacklog)))
	}
	return fmt.Sprintf("%s %s, max backlog %s, empty %s after the last call", thousands(float64(d.Items)), what,
		thousands(float64(d.MaxBacklog)), secs(d.AfterLastCallSeconds))
}

func dist(d distribution) string {
	if d.Count == 0 {
		return "no samples"
	}
	return fmt.Sprintf("p50 %s  p95 %s  p99 %s  max %s ms", num(d.P50MS), num(d.P95MS), num(d.P99MS), num(d.MaxMS))
}

// num prints a millisecond figure with sensible precision.
func num(v float64) string {
	switch {
	case v < 10:
		return strconv.FormatFloat(v, 'f', 2, 64)
	case v < 100:
		return strconv.FormatFloat(v, 'f', 1, 64)
	}
	return strconv.FormatFloat(v, 'f', 0, 64)
}

func secs(s float64) string { return strconv.FormatFloat(s, 'f', 2, 64) + " s" }

// thousands formats v rounded to an integer with thin separators: 39,112.
func thousands(v float64) string {
	s := strconv.FormatInt(int64(math.Round(v)), 10)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}

func sumErrors(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}

// targetValue is a target's measured figure in its unit.
func targetValue(t target) string {
	switch t.Unit {
	case "/s":
		return thousands(t.Value) + "/s"
	case "×":
		return strconv.FormatFloat(t.Value, 'f', 2, 64) + "×"
	case "count":
		return thousands(t.Value)
	}
	return num(t.Value) + " " + t.Unit
}

func metWord(met bool) string {
	if met {
		return "met"
	}
	return "MISSED"
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no (the producer does not require one)"
}
