package schema

// The words the tables store. Every query and every comparison in Go uses these constants
// (queries build their literals from them, so the SQL text and its plans stay what they
// were); the CHECK constraints in migrations/ hold the same lists, and TestVocabulary
// proves the two agree.

// Notification statuses (notifications.status).
const (
	StatusScheduled = "scheduled" // accepted with a send_at in the future: not sent before then
	StatusPending   = "pending"   // accepted, or replayed/re-driven: the sender has work to do
	StatusRetrying  = "retrying"  // some tokens wait in a retry queue
	StatusDelivered = "delivered" // every token delivered or found invalid
	StatusFailed    = "failed"    // some tokens were dead-lettered; replayable
	StatusExpired   = "expired"   // the TTL passed before every token was delivered
	StatusCancelled = "cancelled" // NotificationService.Cancel stopped it; nothing more is sent
)

// Statuses lists every notification status.
var Statuses = []string{StatusScheduled, StatusPending, StatusRetrying, StatusDelivered, StatusFailed, StatusExpired,
	StatusCancelled}

// InFlightStatuses is the SQL list of the statuses of a notification that is not final:
// something is still to be sent. The partial index notifications_unfinished has this
// predicate, so queries that want it must spell the list exactly so.
const InFlightStatuses = `('` + StatusPending + `', '` + StatusRetrying + `')`

// FinalStatuses is the SQL list of the statuses of a notification nothing changes any more,
// except an operator's replay of a FAILED one while its TTL lasts. The retention job deletes
// only notifications in these, and the partial index notifications_retention (migration
// 0005) has this predicate, so the job's query must spell the list exactly so. Cancelled
// notifications are final but not in this list (the index predicate predates them): the
// job deletes them in a query of their own, on notifications_status_created.
const FinalStatuses = `('` + StatusDelivered + `', '` + StatusFailed + `', '` + StatusExpired + `')`

// Final reports whether nothing changes a notification with this status any more (except
// an operator's replay of a FAILED one). Cancelled is final too, though not in
// FinalStatuses (see there).
func Final(status string) bool {
	switch status {
	case StatusDelivered, StatusFailed, StatusExpired, StatusCancelled:
		return true
	}
	return false
}

// InFlight reports whether a notification with this status is still being worked on.
func InFlight(status string) bool { return status == StatusPending || status == StatusRetrying }

// Delivery outcomes (deliveries.outcome), one per token of a notification. The
// notifications table counts tokens by outcome in columns of the same names.
const (
	OutcomePending   = "pending"
	OutcomeDelivered = "delivered"
	OutcomeInvalid   = "invalid"  // FCM said the token is dead; the device was deactivated
	OutcomeRetrying  = "retrying" // handed to a retry wait queue: the retrier owns it
	OutcomeFailed    = "failed"   // dead-lettered; a replay sends it again, a redelivered task does not
	OutcomeExpired   = "expired"
	// OutcomeSkippedPreference: not sent, the device's user muted the notification's type
	// (preferences.muted_types). Counted in notifications.skipped.
	OutcomeSkippedPreference = "skipped_preference"
	// OutcomeCancelled: waited for a retry when the notification was cancelled, and was not
	// sent again (NotificationService.Cancel settles it, or the retrier when its retry
	// arrives). Counted in notifications.cancelled.
	OutcomeCancelled = "cancelled"
)

// Outcomes lists every delivery outcome.
var Outcomes = []string{OutcomePending, OutcomeDelivered, OutcomeInvalid, OutcomeRetrying, OutcomeFailed, OutcomeExpired,
	OutcomeSkippedPreference, OutcomeCancelled}

// FinalOutcomes is the SQL list of the outcomes no later attempt changes: delivered, found
// invalid, expired, skipped by a preference, or cancelled. The retrier sends a token only
// when its outcome is not one of them, and it was not dead-lettered in the generation the
// retrier works in (DeadLetteredIn).
const FinalOutcomes = `('` + OutcomeDelivered + `', '` + OutcomeInvalid + `', '` + OutcomeExpired + `', '` + OutcomeSkippedPreference +
	`', '` + OutcomeCancelled + `')`

// SettledOutcomes is the SQL list of delivery outcomes after which the sender does not send
// a token of a notification again: the final ones, and handed to a retry (the retrier owns
// it). Failed tokens are not in it: a replay sends them again. A failed token dead-lettered
// in the generation the sender works in is settled too (DeadLetteredIn), so that a task
// delivered again does not dead-letter it twice. The sender's audience query and the
// producer's replay count agree on it through Audience. A forced replay of a notification
// in flight sends its retrying tokens too: it moves them to failed first (see the
// producer's Replay) and counts them with Audience.CountUnsettledOrRetrying.
const SettledOutcomes = `('` + OutcomeDelivered + `', '` + OutcomeInvalid + `', '` + OutcomeRetrying + `', '` + OutcomeExpired +
	`', '` + OutcomeSkippedPreference + `', '` + OutcomeCancelled + `')`

// Why a device was deactivated (devices.deactivation_reason) when FCM did not say: FCM's
// own error codes (UNREGISTERED, …) are stored as they are.
const (
	DeactivatedMoved        = "token_moved"  // its token was registered for another device
	DeactivatedUnregistered = "unregistered" // the app unregistered it
	DeactivatedStale        = "stale"        // unused longer than the stale-token sweep allows
)

// CodeExpired is the error_code of a delivery whose notification's TTL passed before the
// token was delivered (the other codes are FCM's).
const CodeExpired = "EXPIRED"
