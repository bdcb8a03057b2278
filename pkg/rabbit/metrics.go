package rabbit

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// NewMetrics registers the broker counters every service reports and returns the Hooks
// that feed them, for ConnOptions.Hooks:
//
//   - notify_rabbitmq_connections_total: connections opened, the first one and every
//     reconnection (a rising rate means a flapping broker or network);
//   - notify_rabbitmq_published_total{routing_key,result}: messages published, confirmed or
//     failed;
//   - notify_rabbitmq_deliveries_total{queue,settlement}: deliveries consumed, by how they
//     were settled (acked, requeued, rejected), or channel_closed when the channel died first and
//     the broker redelivers them.
func NewMetrics(reg prometheus.Registerer) Hooks {
	connections := prometheus.NewCounter(prometheus.CounterOpts{
		Name: "notify_rabbitmq_connections_total", Help: "Connections to RabbitMQ opened (the first one and every reconnection).",
	})
	published := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "notify_rabbitmq_published_total", Help: "Messages published to RabbitMQ, by routing key and result (confirmed or failed).",
	}, []string{"routing_key", "result"})
	deliveries := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "notify_rabbitmq_deliveries_total", Help: "Deliveries consumed from RabbitMQ, by queue and settlement (acked, requeued, rejected; channel_closed: redelivered by the broker).",
	}, []string{"queue", "settlement"})
	reg.MustRegister(connections, published, deliveries)
	return Hooks{
		Connected: connections.Inc,
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
	}
}
