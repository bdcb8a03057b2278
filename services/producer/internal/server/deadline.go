package server

import (
	"context"
	"errors"
	"fmt"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Deadline bounds every unary call by a server-side deadline (GRPC_RPC_TIMEOUT): a call
// whose client set no deadline, or a later one, gets timeout from its start, so nothing a
// client does can hold a handler, a database connection or a lock for longer. A call cut
// off by it is answered DEADLINE_EXCEEDED, like one cut off by the client's own deadline.
// timeout 0 leaves calls unbounded. Streams (health Watch, reflection) are meant to last
// and are not bounded.
func Deadline(timeout time.Duration) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if timeout <= 0 {
			return handler(ctx, req)
		}
		if d, ok := ctx.Deadline(); !ok || time.Until(d) > timeout {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, timeout)
			defer cancel()
		}
		resp, err := handler(ctx, req)
		// Whatever a handler made of being cut off (an error from the database driver, say),
		// the client learns that the deadline passed.
		if err != nil && errors.Is(ctx.Err(), context.DeadlineExceeded) && status.Code(err) != codes.DeadlineExceeded {
			return nil, status.Error(codes.DeadlineExceeded, fmt.Sprintf("the call did not finish within its deadline (at most %s on this server)", timeout))
		}
		return resp, err
	}
}
