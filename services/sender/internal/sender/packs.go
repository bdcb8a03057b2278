package sender

import (
	"context"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"

	"notify/pkg/deadletter"
	"notify/pkg/rabbit"
	"notify/pkg/sendpack"
)

// Pack results, the label of notify_send_packs_total.
const (
	packHandled      = "handled"       // every task settled with the pack
	packSplit        = "split"         // the tasks not settled were republished on their own
	packDissolved    = "dissolved"     // redelivered: every task republished on its own, none handled
	packDeadLettered = "dead_lettered" // not a pack anyone can read
	// and rabbit.Requeued (republishing or dead-lettering failed: the whole pack goes back),
	// rabbit.Rejected (the broker dead-letters it)
)

// publisher publishes messages with confirms (rabbit.Publisher).
type publisher interface {
	Publish(ctx context.Context, msgs ...rabbit.Message) error
}

// WithPacks lets h handle packs of send tasks (HandlePacks), republishing the tasks it does
// not settle with pub, to the send queue; it registers the packs' metric and returns h.
func (h *Handler) WithPacks(pub publisher, reg prometheus.Registerer) *Handler {
	h.republisher = pub
	h.packs = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "notify_send_packs_total",
		Help: "Packs of send tasks (the packed send queue) handled, by result: handled, split (some tasks republished on their own), dissolved (redelivered: all republished), dead_lettered, requeued, rejected.",
	}, []string{"result"})
	reg.MustRegister(h.packs)
	for _, r := range []string{packHandled, packSplit, packDissolved, packDeadLettered, string(rabbit.Requeued), string(rabbit.Rejected)} {
		h.packs.WithLabelValues(r)
	}
	return h
}

// HandlePacks handles deliveries from the packed send queue (a rabbit.BatchHandler; the
// sender takes a few packs per batch): the tasks of the packs are handled together, as one
// batch of HandleBatch, and each pack is acknowledged once every one of its tasks is
// settled. A task HandleBatch would have requeued or rejected is republished on its own
// to the send queue first, with the message id and trace it had in the pack, and takes
// the send queue's way from there (its redeliveries, delivery limit and dead-lettering):
// one task's failure never sends its pack-mates again. Only when that republishing fails
// (the broker is in trouble) does the pack go back to the queue, whole.
//
// A pack that comes back (redelivered: its sender stopped, crashed, lost its channel or
// could not republish) is not handled again: its tasks are republished on their own at
// once. Those already settled are acknowledged as duplicates by whichever sender takes
// them, and a task that crashes senders meets the delivery limit alone, not with its pack.
// A delivery that is not a readable pack is dead-lettered, as an undecodable task is.
func (h *Handler) HandlePacks(ctx context.Context, ds []*rabbit.Delivery) []error {
	errs := make([]error, len(ds))
	results := make([]string, len(ds))
	var tasks []*rabbit.Delivery
	var owner []int // the pack (index into ds) of each task
	for i, d := range ds {
		ts, err := sendpack.Unpack(d)
		switch {
		case err != nil:
			results[i] = packDeadLettered
			errs[i] = h.deliverer.DeadLetter(ctx, d, deadletter.ReasonUndecodable, "", err)
		case d.Redelivered:
			results[i] = packDissolved
			errs[i] = h.republish(ctx, d, ts)
		default:
			results[i] = packHandled
			for _, t := range ts {
				tasks, owner = append(tasks, t), append(owner, i)
			}
		}
	}
	if len(tasks) > 0 {
		unsettled := make([][]*rabbit.Delivery, len(ds))
		for k, err := range h.HandleBatch(ctx, tasks) {
			if err != nil {
				unsettled[owner[k]] = append(unsettled[owner[k]], tasks[k])
			}
		}
		for i, ts := range unsettled {
			if len(ts) > 0 {
				results[i] = packSplit
				errs[i] = h.republish(ctx, ds[i], ts)
			}
		}
	}
	for i, r := range results {
		if errs[i] != nil {
			r = string(rabbit.SettlementOf(errs[i]))
		}
		h.packs.WithLabelValues(r).Inc()
	}
	return errs
}

// republish publishes tasks of pack on their own to the send queue and waits for the
// broker's confirms; when it cannot, the pack goes back to the queue (and is dissolved when
// it comes back).
func (h *Handler) republish(ctx context.Context, pack *rabbit.Delivery, tasks []*rabbit.Delivery) error {
	msgs := make([]rabbit.Message, len(tasks))
	for i, t := range tasks {
		msgs[i] = sendpack.Single(t)
	}
	if err := h.republisher.Publish(ctx, msgs...); err != nil {
		return rabbit.Requeue(fmt.Errorf("republish %d tasks of pack %s on their own: %w", len(tasks), pack.MessageID, err))
	}
	h.log.Debug("republished tasks of a pack on their own", "message_id", pack.MessageID, "tasks", len(tasks))
	return nil
}
