package rabbit

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"notify/pkg/testenv"
)

// socket records what is written to it.
type socket struct {
	net.Conn
	mu     sync.Mutex
	writes [][]byte
	closed bool
	fail   error
}

func (s *socket) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fail != nil {
		return 0, s.fail
	}
	s.writes = append(s.writes, bytes.Clone(p))
	return len(p), nil
}

func (s *socket) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	return nil
}

func (s *socket) written() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for _, w := range s.writes {
		out = append(out, string(w))
	}
	return out
}

func TestHeldConnWritesWhatItKeptOnRelease(t *testing.T) {
	s := &socket{}
	h := &heldConn{Conn: s}
	write := func(p string) {
		t.Helper()
		if n, err := h.Write([]byte(p)); n != len(p) || err != nil {
			t.Fatalf("Write(%q) = %d, %v", p, n, err)
		}
	}
	write("a")
	h.hold()
	write("b")
	h.hold() // a second publisher at the same time
	write("c")
	h.release()
	if got := s.written(); fmt.Sprint(got) != "[a]" {
		t.Fatalf("written while still held = %q, want [a]", got)
	}
	write("d")
	h.release()
	if got := s.written(); fmt.Sprint(got) != "[a bcd]" {
		t.Fatalf("written after the last release = %q, want [a bcd]", got)
	}
	write("e")
	if got := s.written(); fmt.Sprint(got) != "[a bcd e]" {
		t.Fatalf("written unheld = %q, want [a bcd e]", got)
	}

	// What would pass maxHeld goes out at once, after what was kept.
	h.hold()
	write("f")
	big := string(make([]byte, maxHeld))
	write(big)
	if got := s.written(); len(got) != 5 || got[3] != "f" || got[4] != big {
		t.Fatalf("a write over maxHeld while held: %d writes, want the kept one and then it", len(got))
	}
	h.release()
	if got := len(s.written()); got != 5 {
		t.Fatalf("release after the overflow wrote again (%d writes)", got)
	}
	if got := h.writes.Load(); got != 5 {
		t.Fatalf("writes counted %d, want 5", got)
	}
}

func TestHeldConnFailedFlushClosesTheSocket(t *testing.T) {
	broken := errors.New("broken pipe")
	s := &socket{}
	h := &heldConn{Conn: s}
	h.hold()
	if _, err := h.Write([]byte("kept")); err != nil {
		t.Fatal(err)
	}
	s.fail = broken
	h.release()
	if !s.closed {
		t.Fatal("a failed write of what was kept left the socket open; the client would not notice")
	}
	if _, err := h.Write([]byte("later")); !errors.Is(err, broken) {
		t.Fatalf("a write after the failure = %v, want %v", err, broken)
	}
}

// TestPublishWritesABatchInFewWrites: the messages of one call leave in a few writes to the
// socket, not one each, and all of them are confirmed; calls sharing a small window (which
// release the socket while they wait for slots) all finish.
func TestPublishWritesABatchInFewWrites(t *testing.T) {
	t.Parallel()
	amqpURL := testenv.AMQPURL(t)
	topo := newTopology(t, amqpURL)
	conn := startConn(t, amqpURL, ConnOptions{Name: topo.Name, Topology: &topo})
	pub := NewPublisher(conn, topo.Exchange(), PublisherOptions{Window: 1000})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := conn.Ready(ctx); err != nil {
		t.Fatal(err)
	}
	if err := pub.Publish(ctx, messages("first", 1, SendKey, nil)...); err != nil { // opens the channel
		t.Fatal(err)
	}
	raw, err := conn.connection(ctx)
	if err != nil {
		t.Fatal(err)
	}
	held := conn.heldOf(raw)
	before := held.writes.Load()
	if err := pub.Publish(ctx, messages("batch", 500, SendKey, make([]byte, 20))...); err != nil {
		t.Fatal(err)
	}
	// 500 messages of ~100 bytes of frames each: one write per maxHeld, a few more for
	// whatever else the connection sent meanwhile (heartbeats).
	if writes := held.writes.Load() - before; writes > 10 {
		t.Errorf("500 messages in one call took %d writes, want a few", writes)
	}

	small := NewPublisher(conn, topo.Exchange(), PublisherOptions{Window: 8})
	errs := make(chan error, 4)
	for p := range 4 {
		go func() { errs <- small.Publish(ctx, messages(fmt.Sprintf("small%d", p), 300, SendKey, nil)...) }()
	}
	for range 4 {
		if err := <-errs; err != nil {
			t.Fatalf("Publish with a window smaller than its batch: %v", err)
		}
	}
}
