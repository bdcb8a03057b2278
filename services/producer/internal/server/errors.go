package server

import (
	"context"
	"errors"
	"log/slog"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// invalidArgument is the one way bad input is answered: INVALID_ARGUMENT with a
// google.rpc.BadRequest detail naming every bad field.
func invalidArgument(v violations) error {
	st := status.New(codes.InvalidArgument, "invalid request: "+v[0].Field+" "+v[0].Description)
	if withDetails, err := st.WithDetails(&errdetails.BadRequest{FieldViolations: v}); err == nil {
		st = withDetails
	}
	return st.Err()
}

// internal logs err (once, here, where it is handled) and answers the client without
// internals.
func internal(ctx context.Context, log *slog.Logger, msg string, err error, attrs ...any) error {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		if ctx.Err() != nil {
			return status.FromContextError(ctx.Err()).Err()
		}
	}
	log.ErrorContext(ctx, msg, append(attrs, "err", err)...)
	return status.Error(codes.Internal, msg+": internal error")
}
