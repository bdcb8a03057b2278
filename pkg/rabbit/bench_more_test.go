package rabbit

import (
	"context"
	"fmt"
	"syscall"
	"testing"
	"time"

	"notify/pkg/testenv"
)

// BenchmarkConsume drains a queue filled beforehand (100-byte messages) with a Consumer that
// acks every delivery, isolating the consuming side: with the services' defaults (4 workers,
// prefetch 8, as SEND_WORKERS and SEND_PREFETCH) and with a deep prefetch. The figure to read
// is msg/s. Run with e.g. -benchtime 20000x: every iteration is one message.
func BenchmarkConsume(b *testing.B) {
	amqpURL := testenv.AMQPURL(b)
	for _, opts := range []ConsumerOptions{
		{Concurrency: 4, Prefetch: 8},
		{Concurrency: 4, Prefetch: 512},
	} {
		b.Run(fmt.Sprintf("workers=%d/prefetch=%d", opts.Concurrency, opts.Prefetch), func(b *testing.B) {
			topo := newTopology(b, amqpURL)
			pubConn := startConn(b, amqpURL, ConnOptions{Name: topo.Name + ".pub", Topology: &topo})
			subConn := startConn(b, amqpURL, ConnOptions{Name: topo.Name + ".sub"})
			pub := NewPublisher(pubConn, topo.Exchange(), PublisherOptions{Window: 256})
			msgs := messages(b.Name(), b.N, SendKey, make([]byte, 100))
			for i := 0; i < len(msgs); i += 1000 {
				if err := pub.Publish(context.Background(), msgs[i:min(i+1000, len(msgs))]...); err != nil {
					b.Fatal(err)
				}
			}
			got := newSeen()

			b.ResetTimer()
			startConsumer(b, subConn, topo.SendQueue(), ackAll(got), opts)
			waitFor(b, 5*time.Minute, "every message consumed", func() bool { return got.unique() >= b.N })
			b.StopTimer()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msg/s")
		})
	}
}

// BenchmarkPublishBatch publishes batches one after the other, each call waiting for its
// confirms before the next starts, as the outbox relay does with each round's rows. Small
// batches are what a lightly loaded relay sends (a round per notification), so their
// per-call time (ms/batch) is part of Publish → FCM latency; large ones bound the relay's
// throughput (msg/s). Messages are 100 bytes; nothing consumes them. cpu-us/msg is this
// process's CPU (user and system) per message.
func BenchmarkPublishBatch(b *testing.B) {
	amqpURL := testenv.AMQPURL(b)
	for _, size := range []int{1, 10, 100, 500} {
		b.Run(fmt.Sprintf("size=%d", size), func(b *testing.B) {
			topo := newTopology(b, amqpURL)
			conn := startConn(b, amqpURL, ConnOptions{Name: topo.Name + ".pub", Topology: &topo})
			pub := NewPublisher(conn, topo.Exchange(), PublisherOptions{Window: 256})
			msgs := messages(b.Name(), b.N*size, SendKey, make([]byte, 100))

			b.ResetTimer()
			cpu0 := processCPU(b)
			for i := range b.N {
				if err := pub.Publish(context.Background(), msgs[i*size:(i+1)*size]...); err != nil {
					b.Fatal(err)
				}
			}
			cpu := processCPU(b) - cpu0
			b.StopTimer()
			b.ReportMetric(float64(cpu.Nanoseconds())/1000/float64(b.N*size), "cpu-us/msg")
			b.ReportMetric(float64(b.N*size)/b.Elapsed().Seconds(), "msg/s")
			b.ReportMetric(b.Elapsed().Seconds()*1000/float64(b.N), "ms/batch")
		})
	}
}

// processCPU is the CPU time (user and system) this process has used.
func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
