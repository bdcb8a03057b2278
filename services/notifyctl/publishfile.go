package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
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

// publishFile sends the file's requests with PublishBatch, publishFileBatch at a time, and
// prints one result per request: the line, then the id (and "duplicate") or the error
// with each bad field.
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
	all := &notifyv1.PublishBatchResponse{}
	for i, batch := range splitBatches(reqs) {
		req := &notifyv1.PublishBatchRequest{}
		for _, r := range batch {
			req.Requests = append(req.Requests, r.req)
		}
		callCtx, cancel := c.callCtx(ctx)
		resp, err := client.PublishBatch(callCtx, req)
		cancel()
		if err != nil {
			if i > 0 {
				fmt.Fprintf(c.errOut, "notifyctl: the requests before line %d were sent; this batch and the rest were not\n", batch[0].line)
			}
			return err
		}
		if len(resp.GetResults()) != len(batch) {
			return fmt.Errorf("publish: the server answered %d results for %d requests", len(resp.GetResults()), len(batch))
		}
		all.Results = append(all.Results, resp.GetResults()...)
	}

	accepted, duplicates, refused := 0, 0, 0
	for _, r := range all.GetResults() {
		switch {
		case r.GetAccepted() == nil:
			refused++
		case r.GetAccepted().GetDuplicate():
			duplicates++
		default:
			accepted++
		}
	}
	err = c.emit(all, func() error {
		tw := c.table("LINE", "RESULT")
		for i, r := range all.GetResults() {
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
	})
	if err != nil {
		return err
	}
	if refused > 0 {
		return errSomeRefused
	}
	return nil
}
