// Package deadletter is the contract of notify's dead-letter queue: why something is
// dead-lettered, and how a dead-letter message is built. The sender and retrier publish
// these messages; the deadletter service stores them. It has no FCM or database
// dependencies so every service can share it cheaply.
package deadletter

import (
	"fmt"
	"strconv"

	"github.com/google/uuid"
	"google.golang.org/protobuf/proto"

	"notify/pkg/rabbit"
	busv1 "notify/proto/gen/notify/bus/v1"
)

// Reasons a dead letter gives.
const (
	ReasonRetriesExhausted    = "retries_exhausted"    // transient FCM failures until RETRY_MAX_ATTEMPTS
	ReasonPermanentError      = "permanent_error"      // an FCM error no retry can fix (e.g. THIRD_PARTY_AUTH_ERROR)
	ReasonUnknownNotification = "unknown_notification" // a task naming a notification that does not exist
	ReasonUndecodable         = "undecodable"          // a message that is not what its queue carries
)

// Reasons lists every reason above, for metric labels.
var Reasons = []string{ReasonRetriesExhausted, ReasonPermanentError, ReasonUnknownNotification, ReasonUndecodable}

// ReasonHeader carries a dead-letter message's reason, readable without decoding the body.
const ReasonHeader = "x-notify-reason"

// Message wraps a dead-letter task for the dead-letter queue: routing key dead, a fresh
// MessageId (the deadletter service's dedupe key), the reason and attempts as headers.
func Message(task *busv1.DeadLetterTask) (rabbit.Message, error) {
	body, err := proto.Marshal(task)
	if err != nil {
		return rabbit.Message{}, fmt.Errorf("encode dead-letter task: %w", err)
	}
	return rabbit.Message{
		RoutingKey:  rabbit.DeadKey,
		MessageID:   uuid.NewString(),
		Type:        string(task.ProtoReflect().Descriptor().FullName()),
		ContentType: "application/protobuf",
		Headers: map[string]any{
			ReasonHeader:         task.GetReason(),
			rabbit.AttemptHeader: task.GetAttempts(),
			"x-notify-tokens":    strconv.Itoa(len(task.GetTokens())),
		},
		Body: body,
	}, nil
}
