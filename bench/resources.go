package main

import (
	"os"
	"runtime"
	"time"
)

// Process groups measured besides the services. The broker and the database are shared with
// whatever else runs on the machine, so their figures are what the whole server used.
const (
	groupBench    = "bench"    // this program: the load it generates costs CPU too
	groupRabbitMQ = "rabbitmq" // every beam.smp process
	groupPostgres = "postgres" // the backends serving the bench's database (its autovacuum included)
	groupOther    = "other"    // machine busy time nobody above accounts for: the kernel, other work
	groupMachine  = "machine"  // all CPUs' busy time
)

// resource is one service's memory and CPU over the run.
type resource struct {
	Service    string  `json:"service"`
	PID        int     `json:"pid"`
	RestRSSMB  float64 `json:"rest_rss_mb"`  // VmRSS once started and idle
	PeakRSSMB  float64 `json:"peak_rss_mb"`  // VmHWM at the end: the most it ever held
	CPUSeconds float64 `json:"cpu_seconds"`  // utime + stime, start-up included
	EndRSSMB   float64 `json:"end_rss_mb"`   // VmRSS at the end
	RestReadAt float64 `json:"rest_after_s"` // seconds after the last service became healthy
	// StartedLater services (the paced phases' senders and retrier) have no reading at rest.
	StartedLater bool `json:"started_later,omitempty"`
	// StoppedEarly services were replaced by the paced phases; their figures are from then.
	StoppedEarly bool `json:"stopped_early,omitempty"`
}

// phaseCPU is the CPU each process group used during one phase.
type phaseCPU struct {
	Phase   string             `json:"phase"`
	Seconds float64            `json:"seconds"`
	CPU     map[string]float64 `json:"cpu_seconds"`
	// Utilisation is machine busy time / (wall time × cores).
	Utilisation float64 `json:"machine_utilisation"`
}

// cpuTracker takes CPU readings at phase boundaries.
type cpuTracker struct {
	services func() []*service                // those running now: phases may start more
	backends func() []int                     // pids of the PostgreSQL backends serving the bench's database
	prev     map[string]map[int]time.Duration // group → pid → cumulative CPU
	prevBusy time.Duration
	prevAt   time.Time
	phases   []phaseCPU
}

func newCPUTracker(services func() []*service, backends func() []int) *cpuTracker {
	t := &cpuTracker{services: services, backends: backends}
	t.prev, t.prevBusy = t.read()
	t.prevAt = time.Now()
	return t
}

// read returns the cumulative CPU of every process of every group, and the machine's busy time.
func (t *cpuTracker) read() (map[string]map[int]time.Duration, time.Duration) {
	groups := map[string][]int{
		groupBench:    {os.Getpid()},
		groupRabbitMQ: processesNamed("beam.smp"),
		groupPostgres: t.backends(),
	}
	for _, s := range t.services() {
		if !s.exited() {
			groups[s.binary] = append(groups[s.binary], s.pid())
		}
	}
	out := map[string]map[int]time.Duration{}
	for g, pids := range groups {
		out[g] = map[int]time.Duration{}
		for _, pid := range pids {
			if ps, err := readProc(pid); err == nil {
				out[g][pid] = ps.CPU
			}
		}
	}
	busy, _, _ := machineCPU()
	return out, busy
}

// mark closes the phase that ran since the previous mark.
func (t *cpuTracker) mark(phase string) {
	now, busy := t.read()
	at := time.Now()
	p := phaseCPU{Phase: phase, Seconds: round(at.Sub(t.prevAt).Seconds(), 3), CPU: map[string]float64{}}
	var accounted time.Duration
	for g, pids := range now {
		var d time.Duration
		for pid, cpu := range pids {
			// A process new in this phase started from 0; one that exited during it (a
			// backend whose connection closed) is missed.
			d += cpu - t.prev[g][pid]
		}
		accounted += d
		p.CPU[g] = round(d.Seconds(), 2)
	}
	machine := busy - t.prevBusy
	p.CPU[groupMachine] = round(machine.Seconds(), 2)
	p.CPU[groupOther] = round(max(0, machine-accounted).Seconds(), 2)
	if wall := at.Sub(t.prevAt); wall > 0 {
		p.Utilisation = round(machine.Seconds()/(wall.Seconds()*float64(runtime.NumCPU())), 3)
	}
	t.phases = append(t.phases, p)
	t.prev, t.prevBusy, t.prevAt = now, busy, at
}

func mb(bytes int64) float64 { return round(float64(bytes)/(1<<20), 1) }
