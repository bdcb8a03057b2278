package apikey

import (
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"notify/pkg/pgtest"
)

var discard = slog.New(slog.NewTextHandler(io.Discard, nil))

func TestCheckName(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		ok   bool
	}{
		{"orders", true},
		{"orders-service.v2_eu", true},
		{"", false},
		{"has space", false},
		{"ümlaut", false},
		{strings.Repeat("n", MaxNameLen), true},
		{strings.Repeat("n", MaxNameLen+1), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			err := CheckName(tt.name)
			if (err == nil) != tt.ok || (err != nil && !errors.Is(err, ErrInvalidName)) {
				t.Errorf("CheckName(%q) = %v, want ok=%v", tt.name, err, tt.ok)
			}
		})
	}
}

func TestNewSecretIsRandomAndWellFormed(t *testing.T) {
	t.Parallel()
	seen := map[string]bool{}
	for range 100 {
		s, err := NewSecret()
		if err != nil {
			t.Fatal(err)
		}
		if !wellFormed(s) || seen[s] {
			t.Fatalf("NewSecret() = %q: malformed or repeated", s)
		}
		seen[s] = true
	}
}

func TestStoreKeepsOnlyTheHash(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	ctx := context.Background()
	store := NewStore(db.Pool)

	k, secret, err := store.Create(ctx, "orders", RolePublisher)
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	if k.Name != "orders" || k.Role != RolePublisher || k.CreatedAt.IsZero() {
		t.Errorf("Create = %+v", k)
	}
	var stored []byte
	var leaked bool
	if err := db.Pool.QueryRow(ctx, `SELECT secret_hash, k::text LIKE '%' || $1 || '%' FROM api_keys k WHERE name = 'orders'`,
		secret).Scan(&stored, &leaked); err != nil {
		t.Fatal(err)
	}
	want := sha256.Sum256([]byte(secret))
	if diff := cmp.Diff(want[:], stored); diff != "" {
		t.Errorf("secret_hash is not the secret's SHA-256 (-want +got):\n%s", diff)
	}
	if leaked {
		t.Error("the api_keys row contains the secret in plain text")
	}

	if _, _, err := store.Create(ctx, "orders", RoleAdmin); !errors.Is(err, ErrNameTaken) {
		t.Errorf("Create with a taken name = %v, want ErrNameTaken", err)
	}
	if _, _, err := store.Create(ctx, "x", Role("root")); !errors.Is(err, ErrInvalidRole) {
		t.Errorf("Create with role root = %v, want ErrInvalidRole", err)
	}
	if _, _, err := store.Create(ctx, "bad name", RoleAdmin); !errors.Is(err, ErrInvalidName) {
		t.Errorf("Create with a bad name = %v, want ErrInvalidName", err)
	}
	if _, _, err := store.Create(ctx, "ops", RoleAdmin); err != nil {
		t.Fatal(err)
	}

	revoked, err := store.Revoke(ctx, "orders")
	if err != nil || !revoked {
		t.Fatalf("Revoke = %v, %v", revoked, err)
	}
	if revoked, _ := store.Revoke(ctx, "orders"); revoked {
		t.Error("revoking a revoked key reported revoked=true")
	}
	if _, _, err := store.Create(ctx, "orders", RolePublisher); !errors.Is(err, ErrNameTaken) {
		t.Errorf("Create with a revoked key's name = %v, want ErrNameTaken: names are never reused", err)
	}
	names := func(keys []Key) []string {
		var out []string
		for _, k := range keys {
			out = append(out, k.Name)
		}
		return out
	}
	active, err := store.List(ctx, false)
	if err != nil {
		t.Fatal(err)
	}
	all, err := store.List(ctx, true)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"ops"}, names(active)); diff != "" {
		t.Errorf("List(active) (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"ops", "orders"}, names(all)); diff != "" {
		t.Errorf("List(all) (-want +got):\n%s", diff)
	}
	if all[1].RevokedAt == nil {
		t.Error("List does not report the revocation time")
	}
}

// clock is a settable time source for the verifier's cache.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

func TestVerifier(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	ctx := context.Background()
	store := NewStore(db.Pool)
	clk := &clock{now: time.Now()}
	v := NewVerifier(store, 15*time.Second, discard)
	v.now = clk.Now

	_, pubSecret, err := store.Create(ctx, "orders", RolePublisher)
	if err != nil {
		t.Fatal(err)
	}
	_, staffSecret, err := store.Create(ctx, "staff", RolePublisher, "staff", "default", "staff")
	if err != nil {
		t.Fatal(err)
	}
	_, adminSecret, err := store.Create(ctx, "ops", RoleAdmin)
	if err != nil {
		t.Fatal(err)
	}
	unknown, _ := NewSecret()

	tests := []struct {
		name, secret string
		want         Key
		wantErr      error
	}{
		{"publisher", pubSecret, Key{Name: "orders", Role: RolePublisher}, nil},
		{"admin", adminSecret, Key{Name: "ops", Role: RoleAdmin}, nil},
		{"limited to apps", staffSecret, Key{Name: "staff", Role: RolePublisher, Apps: []string{"default", "staff"}}, nil},
		{"unknown", unknown, Key{}, ErrUnknown},
		{"malformed", "hunter2", Key{}, ErrUnknown},
		{"empty", "", Key{}, ErrUnknown},
		{"another key's hash", string(func() []byte { h := Hash(pubSecret); return h[:] }()), Key{}, ErrUnknown},
	}
	for _, tt := range tests {
		k, err := v.Verify(ctx, tt.secret)
		if !errors.Is(err, tt.wantErr) {
			t.Errorf("%s: Verify error = %v, want %v", tt.name, err, tt.wantErr)
		}
		if k.Name != tt.want.Name || k.Role != tt.want.Role {
			t.Errorf("%s: Verify = %+v, want %+v", tt.name, k, tt.want)
		}
	}

	// Revoked elsewhere: accepted from the cache until the TTL passes, then refused.
	if _, err := db.Pool.Exec(ctx, "UPDATE api_keys SET revoked_at = now() WHERE name = 'orders'"); err != nil {
		t.Fatal(err)
	}
	if _, err := v.Verify(ctx, pubSecret); err != nil {
		t.Errorf("Verify within the cache TTL after a revocation elsewhere = %v, want the cached key", err)
	}
	clk.Add(16 * time.Second)
	if _, err := v.Verify(ctx, pubSecret); !errors.Is(err, ErrUnknown) {
		t.Errorf("Verify after the cache TTL = %v, want ErrUnknown", err)
	}

	// Revoked here: Forget makes it take effect at once.
	if _, err := v.Verify(ctx, adminSecret); err != nil {
		t.Fatal(err)
	}
	if _, err := store.Revoke(ctx, "ops"); err != nil {
		t.Fatal(err)
	}
	v.Forget("ops")
	if _, err := v.Verify(ctx, adminSecret); !errors.Is(err, ErrUnknown) {
		t.Errorf("Verify after Revoke and Forget = %v, want ErrUnknown", err)
	}
}

func TestVerifierRecordsUseAtMostOnceAMinute(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	ctx, cancel := context.WithCancel(context.Background())
	store := NewStore(db.Pool)
	clk := &clock{now: time.Now()}
	v := NewVerifier(store, 0, discard) // no cache: every call asks the store
	v.now = clk.Now
	done := make(chan error)
	go func() { done <- v.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()

	_, secret, err := store.Create(ctx, "orders", RolePublisher)
	if err != nil {
		t.Fatal(err)
	}
	lastUsed := func() *time.Time {
		var at *time.Time
		if err := db.Pool.QueryRow(ctx, "SELECT last_used_at FROM api_keys WHERE name = 'orders'").Scan(&at); err != nil {
			t.Fatal(err)
		}
		return at
	}
	for range 5 {
		if _, err := v.Verify(ctx, secret); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for lastUsed() == nil {
		if time.Now().After(deadline) {
			t.Fatal("last_used_at was never written")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if n := len(v.touches); n != 0 {
		t.Errorf("%d more writes queued after five calls within a minute, want none", n)
	}
	v.mu.Lock()
	queuedAt := v.touched["orders"]
	v.mu.Unlock()
	clk.Add(2 * time.Minute)
	if _, err := v.Verify(ctx, secret); err != nil {
		t.Fatal(err)
	}
	v.mu.Lock()
	requeued := v.touched["orders"].After(queuedAt)
	v.mu.Unlock()
	if !requeued {
		t.Error("a call a minute later did not queue another last_used_at write")
	}
}
