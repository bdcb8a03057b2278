package server

import (
	"context"

	"go.opentelemetry.io/otel/attribute"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"notify/pkg/tracing"
	notifyv1 "notify/proto/gen/notify/v1"
)

// Limits on what one PublishBatch call carries.
const (
	MaxBatchRequests = 500
	MaxBatchBytes    = 4 << 20
)

// PublishBatch checks each request on its own as Publish does (validation, and the key's
// permission for ignore_preferences), writes the valid ones with their outbox
// rows in one transaction and answers one result per request, in order. Only a malformed
// batch (empty, too many requests, too large) fails the whole call as INVALID_ARGUMENT; a
// database failure fails it as UNAVAILABLE.
func (s *Notifications) PublishBatch(ctx context.Context, req *notifyv1.PublishBatchRequest) (*notifyv1.PublishBatchResponse, error) {
	var v violations
	switch n := len(req.GetRequests()); {
	case n == 0:
		v.add("requests", "must not be empty")
	case n > MaxBatchRequests:
		v.add("requests", "has %d requests; at most %d are accepted per call", n, MaxBatchRequests)
	}
	if size := proto.Size(req); size > MaxBatchBytes {
		v.add("requests", "are %d bytes; at most %d are accepted per call", size, MaxBatchBytes)
	}
	if len(v) > 0 {
		return nil, invalidArgument(v)
	}

	caller := Caller(ctx)
	results := make([]*notifyv1.PublishResult, len(req.GetRequests()))
	rows := make([]row, 0, len(results))
	var at []int // at[k] is the request index of rows[k]
	for i, item := range req.GetRequests() {
		// The text check the server runs on every other request runs here per item, so
		// one bad string refuses only its request.
		var v violations
		badText(&v, "", item.ProtoReflect())
		if err := s.admit(ctx, item, v); err != nil {
			results[i] = errorResult(err)
			continue
		}
		r, err := newRow(caller, item)
		if err != nil {
			return nil, toStatus(ctx, s.log, "prepare notification", err)
		}
		r.task.Traceparent = tracing.Traceparent(ctx)
		rows = append(rows, r)
		at = append(at, i)
	}
	if len(rows) == 0 {
		return &notifyv1.PublishBatchResponse{Results: results}, nil
	}

	sctx, span := tracing.Tracer().Start(ctx, SpanStore)
	written := storeRows(sctx, s.db, rows)
	if span.IsRecording() {
		span.SetAttributes(attribute.Int("notify.rows", len(rows)))
	}
	tracing.End(span, batchFailure(written))
	if err := batchFailure(written); err != nil {
		return nil, toStatus(ctx, s.log, "store notifications", err, "caller", caller, "requests", len(rows))
	}
	s.committed(rows, written)
	for k, w := range written {
		if w.err != nil {
			results[at[k]] = errorResult(toStatus(ctx, s.log, "store notification", w.err, "caller", caller))
			continue
		}
		results[at[k]] = &notifyv1.PublishResult{Outcome: &notifyv1.PublishResult_Accepted{
			Accepted: &notifyv1.PublishResponse{NotificationId: w.id.String(), Duplicate: w.duplicate},
		}}
	}
	return &notifyv1.PublishBatchResponse{Results: results}, nil
}

// batchFailure is the database's failure when it failed every row alike (the transaction
// itself failed, nothing was written), nil when rows have outcomes of their own.
func batchFailure(written []stored) error {
	for _, w := range written {
		if w.err == nil || rowError(w.err) {
			return nil
		}
	}
	return written[0].err
}

// errorResult is a PublishBatch result carrying err as the status Publish would answer.
func errorResult(err error) *notifyv1.PublishResult {
	return &notifyv1.PublishResult{Outcome: &notifyv1.PublishResult_Error{Error: status.Convert(err).Proto()}}
}
