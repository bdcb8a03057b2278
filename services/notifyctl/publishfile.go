package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	notifyv1 "notify/proto/gen/notify/v1"
)

// A PublishBatch call carries at most publishFileBatch requests and publishFileBytes bytes
// of them (the server's limits: more is refused as a whole, INVALID_ARGUMENT).
const (
	publishFileBatch = 500
	publishFileBytes = 4 << 20
)

// splitBatches cuts reqs into PublishBatch calls within both limits, in order. A request
// that alone exceeds the bytes goes in a call of its own (the server says why it refuses it).
func splitBatches(reqs []fileRequest) [][]fileRequest {
	var batches [][]fileRequest
	start, size := 0, 0
	for i, r := range reqs {
		n := proto.Size(r.req)
		n += protowire.SizeTag(1) + protowire.SizeVarint(uint64(n)) // as field 1 of PublishBatchRequest
		if i > start && (i-start == publishFileBatch || size+n > publishFileBytes) {
			batches = append(batches, reqs[start:i])
			start, size = i, 0
		}
		size += n
	}
	if start < len(reqs) {
		batches = append(batches, reqs[start:])
	}
	return batches
}

// maxLine bounds one JSON line: a PublishRequest with 10,000 long user ids fits.
const maxLine = 4 << 20

// fileRequest is one PublishRequest read from a file, with its line number.
type fileRequest struct {
	line int
	req  *notifyv1.PublishRequest
}

// readRequests reads JSON lines of PublishRequest (protobuf JSON) from path ("-": stdin);
// blank lines are skipped. A line that is not a PublishRequest stops everything before a
// request is sent.
func readRequests(path string, stdin io.Reader) ([]fileRequest, error) {
	r := stdin
	if path != "-" {
		f, err := os.Open(path)
		if err != nil {
			return nil, usagef("publish: --file: %v", err)
		}
		defer f.Close()
		r = f
	}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), maxLine)
	var reqs []fileRequest
	n := 1
	for ; sc.Scan(); n++ {
		b := sc.Bytes()
		if n == 1 {
			// A byte order mark, as some Windows editors write: not part of the first request.
			b = bytes.TrimPrefix(b, []byte("\ufeff"))
		}
		b = bytes.TrimSpace(b)
		if len(b) == 0 {
			continue
		}
		req := &notifyv1.PublishRequest{}
		if err := protojson.Unmarshal(b, req); err != nil {
			return nil, usagef("publish: %s line %d is not a PublishRequest in JSON: %v", path, n, err)
		}
		reqs = append(reqs, fileRequest{line: n, req: req})
	}
	if err := sc.Err(); errors.Is(err, bufio.ErrTooLong) {
		return nil, usagef("publish: %s line %d is longer than %d bytes, more than a PublishRequest may be", path, n, maxLine)
	} else if err != nil {
		return nil, usagef("publish: reading %s: %v", path, err)
	}
	if len(reqs) == 0 {
		return nil, usagef("publish: %s holds no requests", path)
	}
	return reqs, nil
}

// errSomeRefused: the file was sent, but the server refused some of its requests.
var errSomeRefused = errors.New("some requests were refused")

// maxRateLimitWait bounds how long one wait for the rate limit lasts, whatever RetryInfo
// asks: a longer delay is waited in several turns, each ending in a try that the server
// refuses again (with the rest of the delay) or lets through.
const maxRateLimitWait = time.Minute

// publishFile sends the file's requests with PublishBatch, publishFileBatch at a time, and
// prints one result per request: the line, then the id (and "duplicate") or the error
// with each bad field. A call refused by the rate limit is sent again after the delay the
// server asks (sendBatch). When a call fails otherwise, the results of the calls before it,
// which were committed, are printed all the same, then the failure.
func (c *cli) publishFile(ctx context.Context, path string, stdin io.Reader) error {
	reqs, err := readRequests(path, stdin)
	if err != nil {
		return err
	}
	conn, err := c.client()
	if err != nil {
		return err
	}
	client := notifyv1.NewNotificationServiceClient(conn)
	var results []*notifyv1.PublishResult
	var failed error
	for _, batch := range splitBatches(reqs) {
		resp, err := c.sendBatch(ctx, client, batch)
		if err == nil && len(resp.GetResults()) != len(batch) {
			err = fmt.Errorf("publish: the server answered %d results for %d requests from line %d", len(resp.GetResults()), len(batch), batch[0].line)
		} else if err != nil && len(results) > 0 {
			err = partialError{err: err, line: batch[0].line}
		}
		if err != nil {
			failed = err
			break
		}
		results = append(results, resp.GetResults()...)
	}
	if len(results) == 0 {
		return failed
	}
	if err := c.printFileResults(reqs, results); err != nil {
		return err
	}
	var partial partialError
	switch {
	case errors.As(failed, &partial):
		fmt.Fprintf(c.errOut, "notifyctl: the requests before line %d were sent; this batch and the rest were not\n", partial.line)
		return partial.err
	case failed != nil:
		return failed
	}
	for _, r := range results {
		if r.GetAccepted() == nil {
			return errSomeRefused
		}
	}
	return nil
}

// partialError is a PublishBatch call that failed after others were committed: line is
// the first line of the call.
type partialError struct {
	err  error
	line int
}

func (e partialError) Error() string { return e.err.Error() }
func (e partialError) Unwrap() error { return e.err }

// sendBatch sends one PublishBatch call. A call refused by the rate limit
// (RESOURCE_EXHAUSTED with a google.rpc.RetryInfo) wrote nothing, so it is sent again after
// the delay the server asks (at most maxRateLimitWait at a time), until it passes or ctx
// ends; any other failure is returned as it is, since the call may have been committed.
func (c *cli) sendBatch(ctx context.Context, client notifyv1.NotificationServiceClient, batch []fileRequest) (*notifyv1.PublishBatchResponse, error) {
	req := &notifyv1.PublishBatchRequest{}
	for _, r := range batch {
		req.Requests = append(req.Requests, r.req)
	}
	for {
		callCtx, cancel := c.callCtx(ctx)
		resp, err := client.PublishBatch(callCtx, req)
		cancel()
		delay, ok := rateLimitDelay(err)
		if !ok {
			return resp, err
		}
		delay = min(delay, maxRateLimitWait)
		fmt.Fprintf(c.errOut, "notifyctl: rate limited at line %d; sending it again in %s\n", batch[0].line, delay)
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		case <-t.C:
		}
	}
}

// rateLimitDelay is how long the server asks to wait when err is a rate limit's refusal:
// RESOURCE_EXHAUSTED with a RetryInfo. RESOURCE_EXHAUSTED without one (a message over the
// server's size limit) would be refused again.
func rateLimitDelay(err error) (time.Duration, bool) {
	st, ok := status.FromError(err)
	if !ok || st.Code() != codes.ResourceExhausted {
		return 0, false
	}
	for _, d := range st.Details() {
		if ri, ok := d.(*errdetails.RetryInfo); ok {
			return max(ri.GetRetryDelay().AsDuration(), 0), true
		}
	}
	return 0, false
}

// printFileResults prints the results of the first len(results) requests: a table of
// LINE and RESULT, or with -o json or yaml the PublishBatchResponse with each result's
// line number added as "line" (blank lines are skipped, so a result's place in the list
// is not its line).
func (c *cli) printFileResults(reqs []fileRequest, results []*notifyv1.PublishResult) error {
	accepted, duplicates, refused := 0, 0, 0
	for _, r := range results {
		switch {
		case r.GetAccepted() == nil:
			refused++
		case r.GetAccepted().GetDuplicate():
			duplicates++
		default:
			accepted++
		}
	}
	if c.output != formatTable {
		tree := messageTree((&notifyv1.PublishBatchResponse{Results: results}).ProtoReflect())
		if items, ok := tree.(map[string]any)["results"].([]any); ok {
			for i, item := range items {
				if m, ok := item.(map[string]any); ok {
					m["line"] = reqs[i].line
				}
			}
		}
		return c.printTree(tree)
	}
	tw := c.table("LINE", "RESULT")
	for i, r := range results {
		if a := r.GetAccepted(); a != nil {
			suffix := ""
			if a.GetDuplicate() {
				suffix = " (duplicate)"
			}
			fmt.Fprintf(tw, "%d\t%s%s\n", reqs[i].line, a.GetNotificationId(), suffix)
			continue
		}
		st := status.FromProto(r.GetError())
		fmt.Fprintf(tw, "%d\t%s: %s\n", reqs[i].line, st.Code(), st.Message())
		for _, d := range st.Details() {
			if br, ok := d.(*errdetails.BadRequest); ok {
				for _, v := range br.GetFieldViolations() {
					fmt.Fprintf(tw, "\t  %s: %s\n", v.GetField(), v.GetDescription())
				}
			}
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	c.summary("%d accepted, %d duplicates, %d refused\n", accepted, duplicates, refused)
	return nil
}
