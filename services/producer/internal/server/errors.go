package server

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

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

// retryDelay is the pause UNAVAILABLE answers suggest (google.rpc.RetryInfo): long
// enough for a pool to reconnect or a failover to finish, short enough not to matter to
// a client that backs off by itself.
const retryDelay = time.Second

// toStatus is the one place where an error from below becomes what the client sees: a
// code it can act on and a message that names no internals.
//
//   - Authentication and authorization: UNAUTHENTICATED reads the same for a missing, a
//     malformed, an unknown and a revoked key, so it helps no guessing.
//   - The call's own end: CANCELED or DEADLINE_EXCEEDED, whatever the error below says.
//   - Trouble a retry can fix (see unavailable): UNAVAILABLE with RetryInfo, logged as a
//     warning. Retrying Publish is safe with an idempotency key.
//   - Anything else is a bug: logged, once, here, and answered INTERNAL.
func toStatus(ctx context.Context, log *slog.Logger, op string, err error, attrs ...any) error {
	switch {
	case errors.Is(err, errUnauthenticated), errors.Is(err, apikey.ErrUnknown):
		return status.Error(codes.Unauthenticated, "a valid API key is required (authorization: Bearer <key>)")
	case errors.Is(err, errPermissionDenied):
		return status.Error(codes.PermissionDenied, "this API key's role does not allow this call")
	case errors.Is(err, apikey.ErrNameTaken):
		return status.Error(codes.AlreadyExists, apikey.ErrNameTaken.Error())
	case ctx.Err() != nil:
		return status.FromContextError(ctx.Err()).Err()
	case unavailable(err):
		log.WarnContext(ctx, op, append(attrs, "err", err)...)
		st := status.New(codes.Unavailable, op+": the database is unavailable, try again")
		if withInfo, err := st.WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(retryDelay)}); err == nil {
			st = withInfo
		}
		return st.Err()
	}
	log.ErrorContext(ctx, op, append(attrs, "err", err)...)
	return status.Error(codes.Internal, op+": internal error")
}

// unavailable reports whether err is infrastructure trouble that a later retry can get
// past: PostgreSQL unreachable, refusing or dropping connections, shutting down,
// overloaded, or aborting a transaction that may simply be run again; a pool or a
// connection that timed out (the call's own deadline is handled before).
func unavailable(err error) bool {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		code := pgErr.SQLState()
		return strings.HasPrefix(code, "08") || // connection exception
			strings.HasPrefix(code, "53") || // insufficient resources: too many connections, out of memory, disk full
			strings.HasPrefix(code, "57P0") || // admin/crash shutdown, cannot connect now, database dropped
			code == "40001" || code == "40P01" // serialization failure, deadlock: the transaction can run again
	}
	var connectErr *pgconn.ConnectError
	var netErr net.Error
	return errors.As(err, &connectErr) || errors.As(err, &netErr) || pgconn.Timeout(err) ||
		errors.Is(err, pgconn.ErrConnClosed) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) ||
		errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) ||
		errors.Is(err, context.DeadlineExceeded) || errors.Is(err, errKeyVanished)
}
