package apikey

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"
)

// maxCacheEntries bounds the verifier's memory however many different secrets are tried.
const maxCacheEntries = 10_000

// touchInterval is how often, at most, a key's last_used_at is written.
const touchInterval = time.Minute

// Verifier checks presented secrets against the store and caches the answers for a short
// time, so that a busy publisher costs no database round trip per call.
//
// The cache is the revocation window: a key revoked in another process is still accepted
// here until its entry expires (the TTL, e.g. 15 s); the process that revokes a key forgets
// it at once (Forget). Unknown secrets are cached too, so a flood of bad keys does not
// become a flood of queries. Entries are keyed by the secret's hash: no secret is kept in
// memory.
type Verifier struct {
	store *Store
	ttl   time.Duration
	log   *slog.Logger
	now   func() time.Time

	mu      sync.Mutex
	cache   map[[32]byte]cached
	touched map[string]time.Time // when this process last queued a last_used_at write
	touches chan string          // names whose last_used_at Run writes
}

type cached struct {
	key     Key
	known   bool
	expires time.Time
}

// NewVerifier returns a verifier that caches answers for ttl (0: no caching).
func NewVerifier(store *Store, ttl time.Duration, log *slog.Logger) *Verifier {
	return &Verifier{
		store: store, ttl: ttl, log: log, now: time.Now,
		cache:   map[[32]byte]cached{},
		touched: map[string]time.Time{},
		touches: make(chan string, 256),
	}
}

// Verify returns the active key whose secret is secret, ErrUnknown when there is none,
// or another error when the store could not be asked.
func (v *Verifier) Verify(ctx context.Context, secret string) (Key, error) {
	if !wellFormed(secret) {
		return Key{}, ErrUnknown
	}
	h := Hash(secret)
	now := v.now()
	v.mu.Lock()
	c, ok := v.cache[h]
	v.mu.Unlock()
	if !ok || now.After(c.expires) {
		k, err := v.store.lookup(ctx, h)
		if err != nil && !errors.Is(err, ErrUnknown) {
			return Key{}, err
		}
		c = cached{key: k, known: err == nil, expires: now.Add(v.ttl)}
		if v.ttl > 0 {
			v.remember(h, c, now)
		}
	}
	if !c.known {
		return Key{}, ErrUnknown
	}
	v.touch(c.key.Name, now)
	return c.key, nil
}

func (v *Verifier) remember(h [32]byte, c cached, now time.Time) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if len(v.cache) >= maxCacheEntries {
		for k, e := range v.cache {
			if now.After(e.expires) {
				delete(v.cache, k)
			}
		}
		if len(v.cache) >= maxCacheEntries {
			clear(v.cache)
		}
	}
	v.cache[h] = c
}

// Forget drops the cached answers for the key named name (after it was revoked here).
func (v *Verifier) Forget(name string) {
	v.mu.Lock()
	defer v.mu.Unlock()
	for h, c := range v.cache {
		if c.known && c.key.Name == name {
			delete(v.cache, h)
		}
	}
}

// touch queues a last_used_at write for the key, at most once a minute per key, without
// ever blocking the call: when the queue is full the write waits for a later call.
func (v *Verifier) touch(name string, now time.Time) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if last, ok := v.touched[name]; ok && now.Sub(last) < touchInterval {
		return
	}
	select {
	case v.touches <- name:
		v.touched[name] = now
	default:
	}
}

// Run writes the queued last_used_at updates until ctx ends.
func (v *Verifier) Run(ctx context.Context) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case name := <-v.touches:
			if err := v.store.touch(ctx, name); err != nil && ctx.Err() == nil {
				v.log.Warn("could not record an API key's use", "key", name, "err", err)
			}
		}
	}
}
