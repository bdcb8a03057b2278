//go:build chaos

package e2e

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"os/signal"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	notifyv1 "notify/proto/gen/notify/v1"
)

// The chaos suite (`make chaos`; its short profile runs in `make test`): two replicas of
// every service on a RabbitMQ node and a PostgreSQL cluster of its own, steady load, faults
// on a schedule it prints, then an audit of every notification a Publish call accepted.
// See README "Guarantees".

// chaosProfile sizes one run.
type chaosProfile struct {
	name             string
	broadcastDevices int           // devices every broadcast goes to (plus the stream users' ones)
	broadcasts       int           // broadcasts published during the run
	streamUsers      int           // users the small notifications go to
	streamEvery      time.Duration // one small notification per this, from each of two publishers
	gap              time.Duration // quiet time after each fault
	outage           time.Duration // partitions, FCM and Slack outages
	brokerDown       time.Duration // how long the broker stays dead after the hard kill
	rollAll          bool          // SIGTERM every replica in the rolling restart (else one per kind)
	brokerRestart    bool          // a graceful broker restart besides the hard kill
	settle           time.Duration // how long the audit waits for everything to end
	// The retry ladder: the FCM outage must outlast its first levels, not all of them.
	retryBase, retryMax time.Duration
	attempts            int
	fcmLatency          time.Duration
}

var chaosProfiles = map[string]chaosProfile{
	// short runs in `make test` and CI: every fault kind once (the broker only hard-killed,
	// one replica of each kind rolled), in about three minutes.
	"short": {
		name: "short", broadcastDevices: 2_000, broadcasts: 2, streamUsers: 200, streamEvery: 150 * time.Millisecond,
		gap: 1500 * time.Millisecond, outage: 3 * time.Second, brokerDown: 2 * time.Second, settle: 2 * time.Minute,
		retryBase: 500 * time.Millisecond, retryMax: 4 * time.Second, attempts: 6, fcmLatency: 50 * time.Millisecond,
	},
	// full is `make chaos`: a 20,000-device broadcast at the start and two more under way
	// during faults, every replica rolled.
	"full": {
		name: "full", broadcastDevices: 20_000, broadcasts: 3, streamUsers: 1_000, streamEvery: 50 * time.Millisecond,
		gap: 5 * time.Second, outage: 12 * time.Second, brokerDown: 5 * time.Second, rollAll: true, brokerRestart: true,
		settle:    10 * time.Minute,
		retryBase: 2 * time.Second, retryMax: 16 * time.Second, attempts: 6, fcmLatency: 50 * time.Millisecond,
	},
}

// The services' settings under test; the duplicate bound is derived from them.
const (
	chaosSendWorkers  = 2
	chaosSendChunks   = 2
	chaosRetryWorkers = 2
	chaosOutboxBatch  = 100
	chaosMulticast    = 500 // fcm.MaxMulticast: tokens per chunk and per retry task at most
	chaosReplicas     = 2
)

var chaosKinds = []string{"producer", "sender", "retrier", "deadletter"}

// replica is one running service process with its own proxies to the broker and database,
// so a partition can cut one replica off without touching the others.
type replica struct {
	kind string
	n    int // 1-based
	env  map[string]string
	proc *proc
	amqp *proxy
	db   *proxy
}

func (r *replica) String() string { return fmt.Sprintf("%s-%d", r.kind, r.n) }

// chaosRun is one run of the suite.
type chaosRun struct {
	t       *testing.T
	p       chaosProfile
	s       *stack
	rabbit  *rabbitNode
	pg      *pgCluster
	slack   *flakySlack
	start   time.Time
	faults  []string // what was injected, in order
	bound   int      // duplicate sends the faults so far can explain
	reps    map[string][]*replica
	load    *chaosLoad
	maxAud  int // the largest audience of any notification
	grpcSet []string
}

func TestChaos(t *testing.T) {
	name := os.Getenv("CHAOS_PROFILE")
	if name == "" {
		name = "short"
	}
	p, ok := chaosProfiles[name]
	if !ok {
		t.Fatalf("CHAOS_PROFILE=%q: want short or full", name)
	}
	requireChaosTools(t)
	removeLeftovers(t)

	r := &chaosRun{t: t, p: p, reps: map[string][]*replica{}}
	began := time.Now()
	r.startInfrastructure()
	t.Logf("binaries built, own RabbitMQ node and PostgreSQL cluster up at %s", time.Since(began).Round(time.Millisecond))
	r.startServices()
	t.Logf("%d services up at %s", len(chaosKinds)*chaosReplicas+1, time.Since(began).Round(time.Millisecond))
	r.seed()
	t.Logf("devices registered at %s", time.Since(began).Round(time.Millisecond))

	schedule := r.schedule()
	t.Logf("chaos profile %s: %d replicas each of %s; broker %s, PostgreSQL cluster %s; fault schedule:",
		p.name, chaosReplicas, strings.Join(chaosKinds, ", "), r.rabbit.name, r.pg.name)
	for i, f := range schedule {
		t.Logf("  %2d. %s", i+1, f.name)
	}

	r.load = r.startLoad()
	r.start = time.Now()
	for _, f := range schedule {
		r.logf("fault: %s", f.name)
		f.do()
		r.faults = append(r.faults, f.name)
		r.bound += f.bound
		if !f.noGap {
			time.Sleep(p.gap)
		}
	}
	r.logf("faults done; stopping the load")
	r.load.stop()
	lastFault := time.Now()
	r.audit(lastFault)
}

// logf logs with the time since the faults began.
func (r *chaosRun) logf(format string, args ...any) {
	r.t.Helper()
	at := time.Duration(0)
	if !r.start.IsZero() {
		at = time.Since(r.start)
	}
	r.t.Logf("t+%6.1fs  %s", at.Seconds(), fmt.Sprintf(format, args...))
}

func (r *chaosRun) startInfrastructure() {
	t := r.t
	// Both take seconds to boot: start them side by side.
	// (and the service binaries take a while to build on a busy machine).
	r.rabbit = newRabbitNode(t)
	started := make(chan error, 1)
	go func() { started <- r.rabbit.start() }()
	binaries(t)
	r.pg = startPGCluster(t)
	if err := <-started; err != nil {
		t.Fatal(err)
	}
	r.stopOnInterrupt()

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	db, err := r.pg.db(ctx)
	if err != nil {
		t.Fatal(err)
	}
	r.s = newStackOn(t, db, r.rabbit.url(), "")
	r.s.env["LOG_LEVEL"] = "info"
	r.slack = newFlakySlack(t)
}

// stopOnInterrupt removes the broker node and the database cluster when the run is
// interrupted (Ctrl-C, SIGTERM): go test would otherwise exit without running cleanups.
func (r *chaosRun) stopOnInterrupt() {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	done := make(chan struct{})
	r.t.Cleanup(func() { signal.Stop(sig); close(done) })
	go func() {
		select {
		case <-done:
			return
		case got := <-sig:
			fmt.Fprintf(os.Stderr, "chaos: %v: stopping services, RabbitMQ node %s and PostgreSQL cluster %s\n", got, r.rabbit.name, r.pg.name)
			if r.s != nil {
				r.s.mu.Lock()
				for _, p := range r.s.procs {
					_ = p.cmd.Process.Kill()
				}
				r.s.mu.Unlock()
			}
			r.rabbit.stop(false)
			_ = os.RemoveAll(r.rabbit.dir)
			_, _ = r.pg.run("pg_dropcluster", r.pg.version, r.pg.name, "--stop")
			os.Exit(2)
		}
	}()
}

func (r *chaosRun) retryEnv() map[string]string {
	return map[string]string{
		"RETRY_BASE_DELAY":   r.p.retryBase.String(),
		"RETRY_MAX_DELAY":    r.p.retryMax.String(),
		"RETRY_MAX_ATTEMPTS": fmt.Sprint(r.p.attempts),
	}
}

func (r *chaosRun) startServices() {
	s := r.s
	s.start("fcm-emulator", map[string]string{
		"FCM_EMULATOR_LATENCY": r.p.fcmLatency.String(),
		// A Retry-After beyond the last wait level keeps the SDK from retrying 503s inside
		// one call; the retrier caps it at RETRY_MAX_DELAY.
		"FCM_EMULATOR_UNAVAILABLE_RETRY_AFTER": "600s",
	})
	brokerAddr := r.rabbit.addr
	dbAddr := "127.0.0.1:" + r.pg.port
	for _, kind := range chaosKinds {
		for n := 1; n <= chaosReplicas; n++ {
			rep := &replica{kind: kind, n: n, amqp: newProxy(r.t, brokerAddr), db: newProxy(r.t, dbAddr)}
			rep.env = r.retryEnv()
			rep.env["AMQP_URL"] = replaceHost(s.amqpURL, rep.amqp.addr())
			rep.env["DATABASE_URL"] = replaceHost(s.db.URL, rep.db.addr())
			rep.env["SHUTDOWN_TIMEOUT"] = "20s"
			switch kind {
			case "producer":
				rep.env["GRPC_ADDR"] = freeAddr(r.t)
				if s.grpcAddr == "" {
					s.grpcAddr = rep.env["GRPC_ADDR"] // what s.clients() dials
				}
				rep.env["OUTBOX_BATCH_SIZE"] = fmt.Sprint(chaosOutboxBatch)
				r.grpcSet = append(r.grpcSet, rep.env["GRPC_ADDR"])
			case "sender":
				rep.env["SEND_WORKERS"] = fmt.Sprint(chaosSendWorkers)
				rep.env["SEND_CHUNK_CONCURRENCY"] = fmt.Sprint(chaosSendChunks)
				rep.env["FCM_MAX_CONCURRENT_SENDS"] = "2"
			case "retrier":
				rep.env["RETRY_WORKERS"] = fmt.Sprint(chaosRetryWorkers)
			case "deadletter":
				rep.env["SLACK_WEBHOOK_URL"] = r.slack.srv.URL + "/services/T000/B000/CHAOS"
				rep.env["ALERT_INTERVAL"] = "500ms"
				rep.env["ALERT_MIN_INTERVAL"] = "1s"
			}
			rep.proc = s.start(kind, rep.env)
			r.reps[kind] = append(r.reps[kind], rep)
		}
	}
}

// Stream users: every one has a plain token; some also a token the emulator treats
// specially (see pkg/fcmemu rules): retried, dead-lettered or found invalid.
func streamUser(u int) string { return fmt.Sprintf("st-user-%04d", u) }
func streamTokens(u int) (plain, special string) {
	plain = fmt.Sprintf("st-tok-%04d", u)
	switch u % 10 {
	case 1:
		special = fmt.Sprintf("flaky2-st-%04d", u) // INTERNAL twice, then delivered
	case 2:
		special = fmt.Sprintf("unavailable-st-%04d", u) // always 503: retries run out, dead letter
	case 3:
		special = fmt.Sprintf("unregistered-st-%04d", u) // invalid: deactivated at once
	case 4:
		special = fmt.Sprintf("flaky503x1-st-%04d", u) // one 503, then delivered
	}
	return plain, special
}

// seed registers the broadcast audience and the stream users.
func (r *chaosRun) seed() {
	_, devices, _ := r.s.clients()
	registerUsers(r.t, devices, "bc", r.p.broadcastDevices/10, 10)
	req := &notifyv1.RegisterDevicesRequest{}
	for u := range r.p.streamUsers {
		plain, special := streamTokens(u)
		req.Devices = append(req.Devices, &notifyv1.Device{UserId: streamUser(u), DeviceId: plain, Token: plain, Platform: notifyv1.Platform_PLATFORM_ANDROID})
		if special != "" {
			req.Devices = append(req.Devices, &notifyv1.Device{UserId: streamUser(u), DeviceId: special, Token: special, Platform: notifyv1.Platform_PLATFORM_ANDROID})
		}
	}
	if _, err := devices.RegisterDevices(ctxT(r.t), req); err != nil {
		r.t.Fatalf("RegisterDevices: %v", err)
	}
	r.maxAud = r.p.broadcastDevices + len(req.Devices)
}

// fault is one step of the schedule.
type fault struct {
	name  string
	noGap bool // the next fault follows at once (a broadcast is under way)
	bound int  // duplicate sends this fault can explain (see README "Guarantees")
	do    func()
}

// Duplicate sends one disruption of a replica can cause, by what it interrupts:
//   - a sender that dies or loses the database: the chunks it had sent and not yet recorded;
//   - a sender that loses the broker: the same, since its handlers stop sending as their
//     channel closes and record the chunks in flight, which the task's next sender may have
//     sent again already;
//   - a retrier: the retry tasks it holds (≤ 500 tokens each);
//   - a producer: the relay's batch published but not marked is published again, and its
//     notifications may be taken by two senders at once.
func (r *chaosRun) boundSenderCrash() int  { return chaosSendWorkers * chaosSendChunks * chaosMulticast }
func (r *chaosRun) boundSenderBroker() int { return r.boundSenderCrash() }
func (r *chaosRun) boundRetrier() int      { return chaosRetryWorkers * chaosMulticast }
func (r *chaosRun) boundProducer() int     { return chaosOutboxBatch * 4 } // small notifications have ≤ 4 tokens

func (r *chaosRun) boundOfKind(kind string, broker bool) int {
	switch kind {
	case "sender":
		if broker {
			return r.boundSenderBroker()
		}
		return r.boundSenderCrash()
	case "retrier":
		return r.boundRetrier()
	case "producer":
		return r.boundProducer()
	}
	return 0
}

// boundAll is what a fault hitting every replica (broker or database) can explain.
func (r *chaosRun) boundAll(broker bool) int {
	b := 0
	for _, k := range chaosKinds {
		b += chaosReplicas * r.boundOfKind(k, broker)
	}
	return b
}

func (r *chaosRun) schedule() []fault {
	p := r.p
	var fs []fault
	broadcast := func(i int) fault {
		return fault{name: fmt.Sprintf("broadcast #%d to every device (≥ %d), under way before the next fault", i, p.broadcastDevices), noGap: true,
			do: func() { r.broadcast(i) }}
	}
	fs = append(fs, broadcast(1))
	// Both senders are killed in turn, so one of the kills hits the broadcast's sender
	// mid-way.
	fs = append(fs, fault{name: "SIGKILL sender-1, restarted, then sender-2, restarted (mid-broadcast)", bound: 2 * r.boundSenderCrash(),
		do: func() { r.kill(r.reps["sender"][0]); r.kill(r.reps["sender"][1]) }})
	for _, kind := range []string{"producer", "retrier", "deadletter"} {
		fs = append(fs, fault{name: "SIGKILL " + kind + "-1, restarted", bound: r.boundOfKind(kind, false), do: func() { r.kill(r.reps[kind][0]) }})
	}
	fs = append(fs,
		fault{name: fmt.Sprintf("FCM outage: every send answered 503 UNAVAILABLE for %s", p.outage), do: r.fcmOutage},
		fault{name: fmt.Sprintf("partition sender-2 <-> broker (connections dropped) for %s", p.outage), bound: r.boundSenderBroker(),
			do: func() { r.partition(r.reps["sender"][1].amqp, false) }},
		fault{name: fmt.Sprintf("partition retrier-2 <-> database (connections stalled) for %s", p.outage), bound: r.boundRetrier(),
			do: func() { r.partition(r.reps["retrier"][1].db, true) }},
		fault{name: fmt.Sprintf("partition producer-2 <-> database (connections dropped) for %s", p.outage), bound: r.boundProducer(),
			do: func() { r.partition(r.reps["producer"][1].db, false) }},
		fault{name: fmt.Sprintf("partition sender-1 <-> database (connections stalled) for %s", p.outage), bound: r.boundSenderCrash(),
			do: func() { r.partition(r.reps["sender"][0].db, true) }},
		fault{name: fmt.Sprintf("partition producer-1 <-> broker (connections stalled) for %s", p.outage), bound: r.boundProducer(),
			do: func() { r.partition(r.reps["producer"][0].amqp, true) }},
		fault{name: fmt.Sprintf("partition deadletter-2 <-> broker (connections dropped) for %s", p.outage),
			do: func() { r.partition(r.reps["deadletter"][1].amqp, false) }},
		fault{name: fmt.Sprintf("Slack outage: every post answered 500 for %s", p.outage), do: r.slackOutage},
	)
	if p.broadcasts >= 2 {
		fs = append(fs, broadcast(2))
	}
	roll := "one replica of each kind"
	if p.rollAll {
		roll = "every replica, one at a time"
	}
	fs = append(fs, fault{name: "SIGTERM rolling restart of " + roll, do: r.rollingRestart})
	if p.brokerRestart {
		fs = append(fs, fault{name: "broker restart (SIGTERM, started again)", bound: r.boundAll(true), do: func() { r.restartBroker(true) }})
	}
	if p.broadcasts >= 3 {
		fs = append(fs, broadcast(3))
	}
	fs = append(fs,
		fault{name: fmt.Sprintf("broker hard kill (SIGKILL), down %s, started again", p.brokerDown), bound: r.boundAll(true), do: func() { r.restartBroker(false) }},
		fault{name: "PostgreSQL restart (pg_ctlcluster restart -m fast)", bound: r.boundAll(false), do: r.restartPostgres},
	)
	return fs
}

func (r *chaosRun) kill(rep *replica) {
	rep.proc.kill()
	time.Sleep(500 * time.Millisecond)
	rep.proc = r.s.startUntil(rep.kind, rep.env, "/livez")
}

func (r *chaosRun) fcmOutage() {
	r.s.emulatorConfig(map[string]any{"fail_all": "UNAVAILABLE"})
	time.Sleep(r.p.outage)
	r.s.emulatorConfig(map[string]any{"fail_all": ""})
}

func (r *chaosRun) slackOutage() {
	r.slack.setDown(true)
	time.Sleep(r.p.outage)
	r.slack.setDown(false)
}

func (r *chaosRun) partition(p *proxy, stall bool) {
	if stall {
		p.setStalled(true)
		time.Sleep(r.p.outage)
		p.setStalled(false)
		return
	}
	p.setDown(true)
	time.Sleep(r.p.outage)
	p.setDown(false)
}

// rollingRestart stops replicas with SIGTERM one at a time, each started again and ready
// before the next stops, as an orchestrator's rolling update does.
func (r *chaosRun) rollingRestart() {
	for _, kind := range chaosKinds {
		for i, rep := range r.reps[kind] {
			if i > 0 && !r.p.rollAll {
				break
			}
			_ = rep.proc.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-rep.proc.done:
			case <-time.After(time.Minute):
				r.t.Errorf("%s did not stop within a minute of SIGTERM", rep)
				rep.proc.kill()
			}
			if rep.proc.err != nil {
				r.t.Errorf("%s exited with %v on SIGTERM, want 0:\n%s", rep, rep.proc.err, rep.proc.tail(20))
			}
			rep.proc = r.s.start(rep.kind, rep.env)
		}
	}
}

func (r *chaosRun) restartBroker(graceful bool) {
	r.rabbit.stop(graceful)
	if !graceful {
		time.Sleep(r.p.brokerDown)
	}
	if err := r.rabbit.start(); err != nil {
		r.t.Fatal(err)
	}
}

func (r *chaosRun) restartPostgres() {
	if err := r.pg.restart(); err != nil {
		r.t.Fatal(err)
	}
}

// broadcast publishes a notification to every device and waits until the sender is under
// way and its outbox row is published (so no relay fault can publish it twice).
func (r *chaosRun) broadcast(i int) {
	before := r.s.emulatorStats(false).Requests
	id := r.load.publish(&notifyv1.PublishRequest{
		IdempotencyKey: fmt.Sprintf("chaos-broadcast-%d", i),
		Type:           "chaos.broadcast",
		Recipients:     &notifyv1.Recipients{Target: &notifyv1.Recipients_AllDevices{AllDevices: &notifyv1.AllDevices{}}},
		Content:        &notifyv1.Content{Title: "Everyone", Body: fmt.Sprintf("broadcast %d", i)},
	}, nil, true)
	if id == "" {
		r.t.Fatalf("broadcast %d was never accepted", i)
	}
	r.logf("broadcast #%d accepted as %s", i, id)
	waitFor(r.t, 2*time.Minute, "the broadcast's outbox row to be published and sending under way", func() bool {
		var waiting bool
		err := r.s.db.Pool.QueryRow(ctxT(r.t), `SELECT EXISTS (SELECT 1 FROM outbox WHERE notification_id = $1 AND published_at IS NULL AND `+notStatusEvent+`)`, id).Scan(&waiting)
		return err == nil && !waiting && r.s.emulatorStats(false).Requests > before+300
	})
}

// flakySlack is a Slack incoming webhook that can be taken down (HTTP 500).
type flakySlack struct {
	srv   *httptest.Server
	down  atomic.Bool
	posts atomic.Int64
	fails atomic.Int64
}

func newFlakySlack(t *testing.T) *flakySlack {
	f := &flakySlack{}
	f.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if f.down.Load() {
			f.fails.Add(1)
			http.Error(w, "slack is down", http.StatusInternalServerError)
			return
		}
		f.posts.Add(1)
		_, _ = w.Write([]byte("ok"))
	}))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *flakySlack) setDown(down bool) { f.down.Store(down) }

// chaosLoad publishes small notifications to stream users from two goroutines, one per
// producer, and records every id a Publish call returned with the plain tokens it must
// reach. A call that fails is retried with the same idempotency key (on the other
// producer) until it is accepted.
type chaosLoad struct {
	r       *chaosRun
	clients []notifyv1.NotificationServiceClient
	cancel  context.CancelFunc
	wg      sync.WaitGroup

	mu       sync.Mutex
	accepted map[string][]string // notification id → plain tokens it must reach
	ttl      map[string]bool     // ids published with a short TTL (may end EXPIRED)
	codes    map[codes.Code]int  // failed Publish calls by code
	given    int                 // calls given up (never accepted: not counted as accepted)
	seq      atomic.Int64
}

func (r *chaosRun) startLoad() *chaosLoad {
	ctx, cancel := context.WithCancel(context.Background())
	l := &chaosLoad{r: r, cancel: cancel, accepted: map[string][]string{}, ttl: map[string]bool{}, codes: map[codes.Code]int{}}
	for _, addr := range r.grpcSet {
		conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithPerRPCCredentials(bearerKey(r.s.adminKey)))
		if err != nil {
			r.t.Fatal(err)
		}
		r.t.Cleanup(func() { conn.Close() })
		l.clients = append(l.clients, notifyv1.NewNotificationServiceClient(conn))
	}
	for w := range len(l.clients) {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), uint64(time.Now().UnixNano())))
			tick := time.NewTicker(r.p.streamEvery)
			defer tick.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
				}
				l.publishSmall(ctx, rng, w)
			}
		}()
	}
	return l
}

func (l *chaosLoad) publishSmall(ctx context.Context, rng *rand.Rand, first int) {
	n := l.seq.Add(1)
	users := 1 + rng.IntN(3)
	var ids, plains []string
	for range users {
		u := rng.IntN(l.r.p.streamUsers)
		ids = append(ids, streamUser(u))
		plain, _ := streamTokens(u)
		plains = append(plains, plain)
	}
	req := &notifyv1.PublishRequest{
		IdempotencyKey: fmt.Sprintf("chaos-%d", n),
		Type:           "chaos.small",
		Recipients:     &notifyv1.Recipients{Target: &notifyv1.Recipients_UserIds{UserIds: &notifyv1.UserIDs{UserIds: ids}}},
		Content:        &notifyv1.Content{Title: "Hello", Body: fmt.Sprintf("small %d", n)},
		Data:           map[string]string{"seq": fmt.Sprint(n)},
	}
	short := n%8 == 0
	if short {
		// Some may run out of time during an outage: they must end EXPIRED, not vanish.
		req.Options = &notifyv1.Options{Ttl: durationpb.New(3 * time.Second)}
	}
	_ = ctx
	if id := l.publishFrom(req, plains, first); id != "" && short {
		l.mu.Lock()
		l.ttl[id] = true
		l.mu.Unlock()
	}
}

// publish sends req until a producer accepts it and returns the id ("" if none did in
// two minutes). plains are the tokens it must reach; broadcast marks a notification the
// audit checks by its own rule.
func (l *chaosLoad) publish(req *notifyv1.PublishRequest, plains []string, _ bool) string {
	return l.publishFrom(req, plains, 0)
}

func (l *chaosLoad) publishFrom(req *notifyv1.PublishRequest, plains []string, first int) string {
	deadline := time.Now().Add(2 * time.Minute)
	for attempt := 0; time.Now().Before(deadline); attempt++ {
		c := l.clients[(first+attempt)%len(l.clients)]
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		resp, err := c.Publish(ctx, req)
		cancel()
		if err == nil {
			l.mu.Lock()
			l.accepted[resp.GetNotificationId()] = plains
			l.mu.Unlock()
			return resp.GetNotificationId()
		}
		l.mu.Lock()
		l.codes[status.Code(err)]++
		l.mu.Unlock()
		time.Sleep(time.Duration(min(attempt+1, 10)) * 100 * time.Millisecond)
	}
	l.mu.Lock()
	l.given++
	l.mu.Unlock()
	return ""
}

func (l *chaosLoad) stop() {
	l.cancel()
	l.wg.Wait()
}
