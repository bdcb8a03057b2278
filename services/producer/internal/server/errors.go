package server

import (
	"context"
	"errors"
	"log/slog"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"notify/services/producer/internal/apikey"
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

// Errors the handlers and the interceptors hand to toStatus.
var (
	errUnauthenticated  = errors.New("no valid API key")
	errPermissionDenied = errors.New("the key's role does not allow this call")
)

// toStatus turns an error from below into what the client sees: a code and a message that
// names no internals and, for authentication, nothing that helps guessing (a missing, a
// malformed, an unknown and a revoked key all read the same). Anything it does not
// recognise is logged, once, here, and answered INTERNAL.
func toStatus(ctx context.Context, log *slog.Logger, op string, err error, attrs ...any) error {
	switch {
	case errors.Is(err, errUnauthenticated), errors.Is(err, apikey.ErrUnknown):
		return status.Error(codes.Unauthenticated, "a valid API key is required (authorization: Bearer <key>)")
	case errors.Is(err, errPermissionDenied):
		return status.Error(codes.PermissionDenied, "this API key's role does not allow this call")
	case errors.Is(err, apikey.ErrNameTaken):
		return status.Error(codes.AlreadyExists, "an API key with this name exists")
	}
	return internal(ctx, log, op, err, attrs...)
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
