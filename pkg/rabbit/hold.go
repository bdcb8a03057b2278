package rabbit

import (
	"net"
	"sync"
	"sync/atomic"
)

// maxHeld bounds what a held socket collects before it writes anyway.
const maxHeld = 64 << 10

// heldConn is a connection's socket that can hold its writes back. amqp091-go flushes its
// buffer after every message (a write system call each, and a TCP segment for the broker to
// read); a Publisher publishing several messages holds the socket while it hands them to
// the client, and they leave in one write when it lets go. Holds nest (several goroutines
// may publish at once); whatever was written goes out when the last one is released, or as
// soon as maxHeld bytes wait.
//
// Whoever holds must not wait for the broker while holding: its frames, and everyone else's
// (acks, heartbeats, the request of another goroutine's RPC), are still here. Publisher
// releases before it waits for a window slot or a channel.
type heldConn struct {
	net.Conn

	mu    sync.Mutex
	holds int
	buf   []byte
	err   error // the write that failed; the socket is closed and every later write fails

	writes atomic.Int64 // writes to the socket, for tests
}

// Write sends p, or keeps it while the socket is held.
func (h *heldConn) Write(p []byte) (int, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.err != nil {
		return 0, h.err
	}
	if h.holds > 0 && len(h.buf)+len(p) <= maxHeld {
		h.buf = append(h.buf, p...)
		return len(p), nil
	}
	if err := h.flushLocked(); err != nil {
		return 0, err
	}
	h.writes.Add(1)
	n, err := h.Conn.Write(p)
	if err != nil {
		h.err = err
	}
	return n, err
}

// hold holds writes back until the matching release.
func (h *heldConn) hold() {
	h.mu.Lock()
	h.holds++
	h.mu.Unlock()
}

// release ends a hold; the last one writes what was kept.
func (h *heldConn) release() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.holds--
	if h.holds == 0 {
		_ = h.flushLocked() // a failure closed the socket: the client sees it and shuts down
	}
}

// flushLocked writes what was kept. A failure closes the socket, so that the client's
// reader fails and the connection shuts down as after any write error of its own (the
// writes that failed were already reported written): whatever it carried is unconfirmed,
// and a Publisher reports those messages failed when their channel closes.
func (h *heldConn) flushLocked() error {
	if len(h.buf) == 0 {
		return nil
	}
	h.writes.Add(1)
	_, err := h.Conn.Write(h.buf)
	h.buf = h.buf[:0]
	if err != nil {
		h.err = err
		_ = h.Close()
	}
	return err
}
