package main

import (
	"context"
	"io"
	"net"
	"sync/atomic"
	"testing"

	"golang.org/x/net/http2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// TestGRPCSendsNoFlowControlPings: the server's flow-control windows are static, so it does
// not estimate bandwidth with a PING (and a WINDOW_UPDATE) for the first request that
// arrives after each acknowledgement — with small calls spread over many connections, that
// is a frame, a write and the client's answer for nearly every call.
func TestGRPCSendsNoFlowControlPings(t *testing.T) {
	t.Parallel()
	addr := serveProducerGRPC(t, nil, func(s *grpc.Server) { healthpb.RegisterHealthServer(s, health.NewServer()) })

	// Every byte the server sends goes through an HTTP/2 frame reader too.
	var pings, frames atomic.Int32
	framesDone := make(chan struct{})
	pr, pw := io.Pipe()
	go func() {
		defer close(framesDone)
		fr := http2.NewFramer(nil, pr)
		for {
			f, err := fr.ReadFrame()
			if err != nil {
				_ = pr.CloseWithError(err)
				return
			}
			frames.Add(1)
			if p, ok := f.(*http2.PingFrame); ok && !p.IsAck() {
				pings.Add(1)
			}
		}
	}()
	dialer := func(ctx context.Context, addr string) (net.Conn, error) {
		c, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
		if err != nil {
			return nil, err
		}
		return teeConn{Conn: c, w: pw}, nil
	}
	conn, err := grpc.NewClient("passthrough:///"+addr,
		grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithContextDialer(dialer))
	if err != nil {
		t.Fatal(err)
	}
	const calls = 50
	for range calls {
		if err := check(context.Background(), conn); err != nil {
			t.Fatal(err)
		}
	}
	conn.Close()
	<-framesDone
	if frames.Load() < calls {
		t.Fatalf("read %d frames from the server for %d calls; the frame reader missed them", frames.Load(), calls)
	}
	if n := pings.Load(); n != 0 {
		t.Errorf("the server sent %d PING frames for %d calls, want none", n, calls)
	}
}

// teeConn copies what it reads to w.
type teeConn struct {
	net.Conn
	w *io.PipeWriter
}

func (c teeConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if n > 0 {
		if _, werr := c.w.Write(b[:n]); werr != nil {
			return n, err
		}
	}
	if err != nil {
		_ = c.w.CloseWithError(err)
	}
	return n, err
}
