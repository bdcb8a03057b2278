package rabbit

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// NewMetrics registers the broker metrics every service reports and returns the Hooks
// that feed them, for ConnOptions.Hooks:
//
//   - notify_rabbitmq_connected: 1 while the connection is open (and the topology
//     declared), 0 while connecting or reconnecting;
//   - notify_rabbitmq_connections_total: connections opened, the first one and every
//     reconnection (a rising rate means a flapping broker or network);
//   - notify_rabbitmq_published_total{routing_key,result}: messages published, confirmed or
//     failed;
//   - notify_rabbitmq_deliveries_total{queue,settlement}: deliveries consumed, by how they
//     were settled (acked, requeued, rejected), or channel_closed when the channel died first and
//     the broker redelivers them;
//   - notify_rabbitmq_handled_again_total{queue}: deliveries whose handler asked for a
//     requeue handed to it again in place, unacked (ConsumerOptions.HoldFor): it rises
//     while a dependency such as the database is down.
func NewMetrics(reg prometheus.Registerer) Hooks {
	connected := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "notify_rabbitmq_connected", Help: "1 while the connection to RabbitMQ is open and the topology declared, 0 otherwise.",
	})
	connections := prometheus.NewCounter(prometheus.CounterOpts{
		Name: "notify_rabbitmq_connections_total", Help: "Connections to RabbitMQ opened (the first one and every reconnection).",
	})
	published := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "notify_rabbitmq_published_total", Help: "Messages published to RabbitMQ, by routing key and result (confirmed or failed).",
	}, []string{"routing_key", "result"})
	deliveries := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "notify_rabbitmq_deliveries_total", Help: "Deliveries consumed from RabbitMQ, by queue and settlement (acked, requeued, rejected; channel_closed: redelivered by the broker).",
	}, []string{"queue", "settlement"})
	handledAgain := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "notify_rabbitmq_handled_again_total", Help: "Deliveries whose handler asked for a requeue, handed to it again in place (unacked), by queue.",
	}, []string{"queue"})
	reg.MustRegister(connected, connections, published, deliveries, handledAgain)
	return Hooks{
		Connected: func() {
			connected.Set(1)
			connections.Inc()
		},
		Disconnected: func() { connected.Set(0) },
		Consuming: func(queue string) {
			for _, s := range []string{string(Acked), string(Requeued), string(Rejected), "channel_closed"} {
				deliveries.WithLabelValues(queue, s) // at 0 from the start
			}
			handledAgain.WithLabelValues(queue)
		},
		Published: func(routingKey string, err error) {
			result := "confirmed"
			if err != nil {
				result = "failed"
			}
			published.WithLabelValues(routingKey, result).Inc()
		},
		Settled: func(d *Delivery, s Settlement, err error) {
			label := string(s)
			if errors.Is(err, ErrChannelClosed) {
				label = "channel_closed"
			}
			deliveries.WithLabelValues(d.Queue, label).Inc()
		},
		HandledAgain: func(d *Delivery) { handledAgain.WithLabelValues(d.Queue).Inc() },
	}
}

// DefaultQueueSampleInterval is how often QueueDepths asks the broker by default.
const DefaultQueueSampleInterval = 15 * time.Second

// QueueDepths samples, every interval, how many messages wait in each of its queues and
// how many consumers each has, with a passive queue declaration (the broker's own answer,
// no management plugin needed), as
//
//   - notify_rabbitmq_queue_messages{queue}: messages ready for delivery (not those
//     delivered and not yet acked);
//   - notify_rabbitmq_queue_consumers{queue}: consumers subscribed.
//
// A service samples the queues it owns (the sender notify.send, the retrier notify.retry and
// the wait queues, the deadletter notify.dead), so every queue is watched wherever its
// consumers run. A queue that cannot be sampled (the broker is away, the queue is gone)
// drops its series until it can again, rather than showing a stale depth.
type QueueDepths struct {
	conn      *Conn
	queues    []string
	interval  time.Duration
	log       *slog.Logger
	messages  *prometheus.GaugeVec
	consumers *prometheus.GaugeVec
}

// NewQueueDepths returns a QueueDepths for queues on conn and registers its gauges.
// interval <= 0 means DefaultQueueSampleInterval.
func NewQueueDepths(conn *Conn, reg prometheus.Registerer, log *slog.Logger, interval time.Duration, queues ...string) *QueueDepths {
	if interval <= 0 {
		interval = DefaultQueueSampleInterval
	}
	q := &QueueDepths{
		conn: conn, queues: queues, interval: interval, log: log,
		messages: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "notify_rabbitmq_queue_messages", Help: "Messages ready for delivery in the queue, sampled by a passive declaration.",
		}, []string{"queue"}),
		consumers: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "notify_rabbitmq_queue_consumers", Help: "Consumers subscribed to the queue, sampled by a passive declaration.",
		}, []string{"queue"}),
	}
	reg.MustRegister(q.messages, q.consumers)
	return q
}

// Run samples the queues every interval until ctx ends; it returns nil then.
func (q *QueueDepths) Run(ctx context.Context) error {
	t := time.NewTicker(q.interval)
	defer t.Stop()
	for {
		q.Sample(ctx)
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// Sample asks the broker about every queue once, waiting at most one interval for a
// connection, and updates the gauges.
func (q *QueueDepths) Sample(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, q.interval)
	defer cancel()
	for _, name := range q.queues {
		if err := q.sample(ctx, name); err != nil {
			q.messages.DeleteLabelValues(name)
			q.consumers.DeleteLabelValues(name)
			if ctx.Err() == nil {
				q.log.Debug("queue depth not sampled", "queue", name, "err", err)
			}
		}
	}
}

// sample declares one queue passively on a channel of its own: a failed passive
// declaration (the queue is gone) closes the channel it ran on.
func (q *QueueDepths) sample(ctx context.Context, name string) error {
	ch, err := q.conn.channel(ctx)
	if err != nil {
		return err
	}
	defer ch.Close()
	st, err := ch.QueueDeclarePassive(name, true, false, false, false, nil)
	if err != nil {
		return err
	}
	q.messages.WithLabelValues(name).Set(float64(st.Messages))
	q.consumers.WithLabelValues(name).Set(float64(st.Consumers))
	return nil
}
