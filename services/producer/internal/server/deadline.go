package server

import (
	"context"
	"errors"
	"fmt"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
)

// Deadline bounds every unary call by a server-side deadline (GRPC_RPC_TIMEOUT): a call
// whose client set no deadline, or a later one, gets timeout from its start, so nothing a
// client does can hold a handler, a database connection or a lock for longer. A call cut
// off by this server's bound was held up by the server's own trouble (a lock, a pool that
// stays exhausted, a database that does not answer) while its client was still willing to
// wait: it is answered UNAVAILABLE with RetryInfo, like any infrastructure trouble, so
// clients retry with their idempotency key. A call cut off by the client's own, earlier
// deadline is DEADLINE_EXCEEDED. timeout 0 leaves calls unbounded. Streams (health Watch,
// reflection) are meant to last and are not bounded.
func Deadline(timeout time.Duration) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if timeout <= 0 {
			return handler(ctx, req)
		}
		bounded := false
		if d, ok := ctx.Deadline(); !ok || time.Until(d) > timeout {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, timeout)
			defer cancel()
			bounded = true
		}
		resp, err := handler(ctx, req)
		if err == nil || !errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return resp, err
		}
		// Whatever a handler made of being cut off (an error from the database driver, say),
		// the client learns why.
		if bounded {
			st := status.New(codes.Unavailable, fmt.Sprintf(
				"the server could not finish the call within %s (GRPC_RPC_TIMEOUT): its database is locked, saturated or not answering; retry later (a Publish with the same idempotency key is stored once)", timeout))
			if withInfo, derr := st.WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(retryDelay)}); derr == nil {
				st = withInfo
			}
			return nil, st.Err()
		}
		if status.Code(err) != codes.DeadlineExceeded {
			return nil, status.Error(codes.DeadlineExceeded, "the call did not finish within its deadline")
		}
		return nil, err
	}
}
