package rabbit

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// ConnOptions tunes a Conn. The zero value is usable.
type ConnOptions struct {
	// Name is shown as the connection name in the management UI (and lets tests find it).
	Name string
	// Topology, when set, is declared after every (re)connection, before anyone gets a channel.
	Topology *Topology
	// MinBackoff and MaxBackoff bound the jittered exponential delay between reconnection
	// attempts; defaults 100ms and 10s.
	MinBackoff, MaxBackoff time.Duration
	// DrainTimeout is how long Run, once its ctx has ended, keeps the connection open for
	// running Consumers to finish their in-flight deliveries; default 30s.
	DrainTimeout time.Duration
	// Hooks are optional metrics callbacks.
	Hooks Hooks
}

// Conn keeps one AMQP connection open for as long as Run runs, reconnecting with jittered
// exponential backoff whenever the broker or the network closes it. Publishers and Consumers
// open their own channels on it and get fresh ones after a reconnect.
type Conn struct {
	url  string
	log  *slog.Logger
	opts ConnOptions

	gen atomic.Uint64 // numbers every consumer channel, so deliveries know where they came from

	mu      sync.Mutex
	cur     *amqp.Connection // nil while disconnected
	held    *heldConn        // cur's socket
	ready   chan struct{}    // closed once cur is set; replaced when cur is lost
	stopped chan struct{}    // closed when Run returns
	runErr  error            // why Run returned, if not because ctx ended
	downErr error            // why the last connection attempt failed or the last connection closed
	users   int              // Consumers running; Run keeps the connection for them while draining
	idle    chan struct{}    // closed and replaced whenever users drops to 0
}

// NewConn returns a Conn for the AMQP URL; nothing is dialled until Run.
func NewConn(url string, log *slog.Logger, opts ConnOptions) *Conn {
	opts.MinBackoff = cmp.Or(opts.MinBackoff, 100*time.Millisecond)
	opts.MaxBackoff = max(cmp.Or(opts.MaxBackoff, 10*time.Second), opts.MinBackoff)
	opts.DrainTimeout = cmp.Or(opts.DrainTimeout, 30*time.Second)
	return &Conn{
		url:     url,
		log:     log,
		opts:    opts,
		ready:   make(chan struct{}),
		stopped: make(chan struct{}),
		idle:    make(chan struct{}),
	}
}

// Run connects, declares the topology and keeps the connection open until ctx ends; then it
// waits (up to DrainTimeout) for running Consumers to finish, closes the connection and
// returns nil. It returns an error only for a problem reconnecting cannot fix: the broker
// holds the topology with different arguments (ErrTopologyMismatch) or the topology is invalid.
// Run may be called once.
func (c *Conn) Run(ctx context.Context) error {
	err := c.run(ctx)
	c.mu.Lock()
	c.runErr = err
	close(c.stopped)
	c.mu.Unlock()
	return err
}

// Start runs the connection in the background and returns stop, which closes it and
// returns Run's error, if any. A service starts its connection before its consumers and
// publishers and calls stop only after they have returned: the connection outlives the
// service's ctx so that in-flight deliveries can still be acked and hand-offs confirmed
// while the service drains. ctx's values are kept; its cancellation is not. stop may be
// called more than once (a deferred call after an explicit one does nothing).
func (c *Conn) Start(ctx context.Context) (stop func() error) {
	ctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	return sync.OnceValue(func() error {
		cancel()
		if err := <-done; err != nil {
			return fmt.Errorf("rabbitmq connection: %w", err)
		}
		return nil
	})
}

func (c *Conn) run(ctx context.Context) error {
	if t := c.opts.Topology; t != nil {
		if err := t.validate(); err != nil {
			return err
		}
	}
	b := backoff{min: c.opts.MinBackoff, max: c.opts.MaxBackoff}
	for {
		conn, held, err := c.connect(ctx)
		if ctx.Err() != nil {
			if conn != nil {
				conn.Close()
			}
			return nil
		}
		if errors.Is(err, ErrTopologyMismatch) {
			return err
		}
		if err != nil {
			c.down(err)
			d := b.next()
			c.log.Warn("rabbitmq connection failed", "err", err, "retry_in", d)
			if !sleep(ctx, d) {
				return nil
			}
			continue
		}

		closed := conn.NotifyClose(make(chan *amqp.Error, 1))
		// The hook (notify_rabbitmq_connected) runs before the connection is handed out, so
		// that whoever Ready lets through already sees it counted.
		if h := c.opts.Hooks.Connected; h != nil {
			h()
		}
		c.set(conn, held)
		c.log.Info("rabbitmq connected", "name", c.opts.Name)
		up := time.Now()

		select {
		case <-ctx.Done():
			c.drain(closed)
			c.lost(conn)
			if err := conn.Close(); err != nil && !errors.Is(err, amqp.ErrClosed) {
				c.log.Warn("rabbitmq close", "err", err)
			}
			return nil
		case aerr := <-closed:
			c.lost(conn)
			if aerr != nil {
				c.down(fmt.Errorf("connection closed: %w", aerr))
			} else {
				c.down(errors.New("connection closed"))
			}
			if time.Since(up) > c.opts.MaxBackoff {
				b.reset() // it was up for a while: this is a fresh failure, not a flapping broker
			}
			d := b.next()
			c.log.Warn("rabbitmq connection lost", "err", aerr, "reconnect_in", d)
			if !sleep(ctx, d) {
				return nil
			}
		}
	}
}

// connect dials and declares the topology. The TCP dial follows ctx; the AMQP handshake is
// bounded by a deadline that amqp091-go clears once the connection is open.
func (c *Conn) connect(ctx context.Context) (*amqp.Connection, *heldConn, error) {
	props := amqp.NewConnectionProperties()
	if c.opts.Name != "" {
		props.SetClientConnectionName(c.opts.Name)
	}
	var held *heldConn
	cfg := amqp.Config{
		Properties: props,
		Dial: func(network, addr string) (net.Conn, error) {
			d := net.Dialer{Timeout: 10 * time.Second}
			nc, err := d.DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			if err := nc.SetDeadline(time.Now().Add(10 * time.Second)); err != nil {
				nc.Close()
				return nil, err
			}
			held = &heldConn{Conn: nc}
			return held, nil
		},
	}
	conn, err := amqp.DialConfig(c.url, cfg)
	if err != nil {
		return nil, nil, fmt.Errorf("dial: %w", err)
	}
	if t := c.opts.Topology; t != nil {
		if err := t.declare(conn); err != nil {
			conn.Close()
			return nil, nil, err
		}
	}
	return conn, held, nil
}

// drain keeps the connection open until no Consumer is running, the connection dies, or
// DrainTimeout passes, so that in-flight handlers can still ack and publish.
func (c *Conn) drain(closed <-chan *amqp.Error) {
	c.mu.Lock()
	users, idle := c.users, c.idle
	c.mu.Unlock()
	if users == 0 {
		return
	}
	t := time.NewTimer(c.opts.DrainTimeout)
	defer t.Stop()
	select {
	case <-idle:
	case <-closed: //nolint:errcheck // the connection is gone: nothing left to drain
	case <-t.C:
		c.log.Warn("rabbitmq closing with consumers still running", "drain_timeout", c.opts.DrainTimeout)
	}
}

func (c *Conn) set(conn *amqp.Connection, held *heldConn) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.cur, c.held = conn, held
	c.downErr = nil
	close(c.ready)
}

// down records why there is no connection, for Check.
func (c *Conn) down(err error) {
	c.mu.Lock()
	c.downErr = err
	c.mu.Unlock()
}

// lost forgets conn if it is still the current connection. Anyone may call it on noticing
// that conn is closed, before Run's NotifyClose arrives.
func (c *Conn) lost(conn *amqp.Connection) {
	c.mu.Lock()
	was := c.cur == conn
	if was {
		c.cur, c.held = nil, nil
		c.ready = make(chan struct{})
	}
	c.mu.Unlock()
	if h := c.opts.Hooks.Disconnected; was && h != nil {
		h()
	}
}

// heldOf returns conn's socket, or nil if conn is no longer the current connection.
func (c *Conn) heldOf(conn *amqp.Connection) *heldConn {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cur != conn {
		return nil
	}
	return c.held
}

// connection returns the current open connection, waiting for one.
func (c *Conn) connection(ctx context.Context) (*amqp.Connection, error) {
	for {
		c.mu.Lock()
		cur, ready, stopped, runErr := c.cur, c.ready, c.stopped, c.runErr
		c.mu.Unlock()
		select {
		case <-stopped:
			if runErr != nil {
				return nil, fmt.Errorf("%w: %w", ErrStopped, runErr)
			}
			return nil, ErrStopped
		default:
		}
		if cur != nil {
			if !cur.IsClosed() {
				return cur, nil
			}
			c.lost(cur)
			continue
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-stopped:
		case <-ready:
		}
	}
}

// channel opens a channel on the current connection, waiting for one.
func (c *Conn) channel(ctx context.Context) (*amqp.Channel, error) {
	for {
		conn, err := c.connection(ctx)
		if err != nil {
			return nil, err
		}
		ch, err := conn.Channel()
		if err == nil {
			return ch, nil
		}
		if !conn.IsClosed() {
			return nil, fmt.Errorf("open channel: %w", err)
		}
		c.lost(conn) // it died just now; wait for the next one
	}
}

// Ready waits until the connection is open and the topology declared. It returns ctx's error
// if ctx ends first and ErrStopped (with Run's error, if any) if Run has returned.
func (c *Conn) Ready(ctx context.Context) error {
	_, err := c.connection(ctx)
	return err
}

// Check reports, without waiting, whether the connection is open and the topology
// declared: nil when it is, otherwise an error saying why not (the last dial or close error
// while reconnecting, ErrStopped once Run has returned). It is a readiness check.
func (c *Conn) Check(context.Context) error {
	c.mu.Lock()
	cur, downErr := c.cur, c.downErr
	c.mu.Unlock()
	select {
	case <-c.stopped:
		return ErrStopped
	default:
	}
	switch {
	case cur != nil && !cur.IsClosed():
		return nil
	case downErr != nil:
		return fmt.Errorf("not connected: %w", downErr)
	default:
		return errors.New("not connected yet")
	}
}

// Declare declares t on the current connection, waiting for one. It is for topologies beyond
// ConnOptions.Topology; those are not declared again after a reconnect.
func (c *Conn) Declare(ctx context.Context, t Topology) error {
	conn, err := c.connection(ctx)
	if err != nil {
		return err
	}
	return t.declare(conn)
}

// hold registers a running Consumer, which Run waits for before closing the connection.
func (c *Conn) hold() (release func()) {
	c.mu.Lock()
	c.users++
	c.mu.Unlock()
	return func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		c.users--
		if c.users == 0 {
			close(c.idle)
			c.idle = make(chan struct{})
		}
	}
}
