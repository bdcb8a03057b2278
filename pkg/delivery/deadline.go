package delivery

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// ErrStepTimeout is the cause of a ctx a Deadline ended: one step of a task took longer than
// its setting allows (a database statement or a broker that hangs, FCM answering nothing).
var ErrStepTimeout = errors.New("task step timed out")

// Deadline bounds each step of a task: one chunk of a large notification (its page read, its
// multicast, hand-off and record), or a batch of small tasks loaded, sent and recorded
// together. A step, not a whole task, because a broadcast to a million tokens is thousands
// of chunks that may take as long as the FCM quota makes them; what must not happen is a
// step that never ends and holds its delivery for ever.
type Deadline struct {
	// Timeout is each step's deadline; 0 means none.
	Timeout time.Duration
	// Setting names the variable that sets Timeout, for the error.
	Setting string
	// Then says what becomes of the task's notification when a step is cut short and the
	// task goes back to the queue, for the error the consumer logs.
	Then string
}

// Start returns ctx bounded by the deadline, ending with cause ErrStepTimeout.
func (d Deadline) Start(ctx context.Context) (context.Context, context.CancelFunc) {
	if d.Timeout <= 0 {
		return context.WithCancel(ctx)
	}
	return context.WithTimeoutCause(ctx, d.Timeout, fmt.Errorf("%w: %s %s passed; %s", ErrStepTimeout, d.Setting, d.Timeout, d.Then))
}

// Explain returns err, led by what the deadline's passing means when it is why ctx (from
// Start) ended; nil stays nil.
func (d Deadline) Explain(ctx context.Context, err error) error {
	if err == nil {
		return nil
	}
	if cause := context.Cause(ctx); errors.Is(cause, ErrStepTimeout) {
		return fmt.Errorf("%w: %w", cause, err)
	}
	return err
}

// Passed reports whether ctx (from Start) ended because the deadline passed.
func (d Deadline) Passed(ctx context.Context) bool {
	return errors.Is(context.Cause(ctx), ErrStepTimeout)
}
