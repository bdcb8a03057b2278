// Package apikey creates, stores, revokes and verifies notify's API keys.
//
// A key is a name (recorded as the caller of everything published with it), a role and a
// secret. The secret is 32 bytes from crypto/rand, shown once at creation and never
// stored: the database keeps its SHA-256. A fast, unsalted hash is the right tool here,
// unlike for passwords: a 256-bit random secret cannot be guessed or looked up in a
// dictionary however fast the hash is, so a slow or salted hash would buy nothing while
// costing every request CPU time. An unsalted hash is also deterministic, which lets a key
// be found by its hash through a unique index in one query, and lets the verifier cache by
// hash without keeping secrets in memory. Someone who reads the table learns nothing that
// lets them call notify.
package apikey

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Role is what a key may do.
type Role string

// Roles as the api_keys table stores them.
const (
	// RolePublisher may call NotificationService and DeviceService.
	RolePublisher Role = "publisher"
	// RoleAdmin may call everything.
	RoleAdmin Role = "admin"
)

// ParseRole returns the role named s.
func ParseRole(s string) (Role, error) {
	switch r := Role(s); r {
	case RolePublisher, RoleAdmin:
		return r, nil
	}
	return "", fmt.Errorf("role %q: %w", s, ErrInvalidRole)
}

// Allows reports whether a key with role r may call what needs role need.
func (r Role) Allows(need Role) bool { return r == RoleAdmin || r == need }

// Key describes an API key; never its secret.
type Key struct {
	Name string
	Role Role
	// Apps limits a publisher key to these apps; nil means every app.
	Apps       []string
	CreatedAt  time.Time
	RevokedAt  *time.Time
	LastUsedAt *time.Time
	// Limit overrides the producer's publish rate limit for this key (nil fields: the
	// defaults of its role).
	Limit Limit
	// MayIgnorePreferences: the key may set Publish's options.ignore_preferences (admin keys
	// always may; see CanIgnorePreferences).
	MayIgnorePreferences bool
}

// CanIgnorePreferences reports whether the key may set Publish's options.ignore_preferences:
// an admin key, or one created with that permission.
func (k Key) CanIgnorePreferences() bool { return k.Role == RoleAdmin || k.MayIgnorePreferences }

// Options is what a new key may do beyond its role.
type Options struct {
	// Limit is the key's own publish rate limit (zero: the defaults of its role).
	Limit Limit
	// Apps limits a publisher key to these apps; none means every app.
	Apps []string
	// MayIgnorePreferences lets a publisher key set Publish's options.ignore_preferences.
	MayIgnorePreferences bool
}

// Limit is a key's own publish rate limit, per producer replica. A nil field takes the
// default of the key's role (PUBLISH_RATE_PER_KEY or PUBLISH_RATE_PER_ADMIN_KEY, and
// PUBLISH_BURST_PER_KEY).
type Limit struct {
	// PerSecond is how many notifications per second the key may publish; 0 is unlimited.
	PerSecond *int
	// Burst is how many it may publish at once after a pause (at least 1).
	Burst *int
}

// MaxLimit bounds a key's own rate and burst.
const MaxLimit = 1_000_000

// Check returns ErrInvalidLimit (wrapped with the rule) unless PerSecond is 0 to MaxLimit
// and Burst 1 to MaxLimit.
func (l Limit) Check() error {
	if l.PerSecond != nil && (*l.PerSecond < 0 || *l.PerSecond > MaxLimit) {
		return fmt.Errorf("%w: the rate must be 0 (unlimited) to %d per second", ErrInvalidLimit, MaxLimit)
	}
	if l.Burst != nil && (*l.Burst < 1 || *l.Burst > MaxLimit) {
		return fmt.Errorf("%w: the burst must be 1 to %d", ErrInvalidLimit, MaxLimit)
	}
	return nil
}

var (
	// ErrUnknown means no active key has the secret presented: it is unknown, malformed or
	// revoked. Callers must not tell these apart to clients.
	ErrUnknown = errors.New("unknown or revoked API key")
	// ErrNameTaken means a key (active or revoked) already has the name. Names are never
	// reused: a revoked key keeps its row, and its name stays the caller of what it
	// published. Its message is for clients as it is.
	ErrNameTaken = errors.New("this name belongs to an existing or revoked API key; names are never reused")
	// ErrInvalidName means the name breaks the naming rule (see CheckName).
	ErrInvalidName = errors.New("invalid API key name")
	// ErrInvalidRole means the role is neither publisher nor admin.
	ErrInvalidRole = errors.New("invalid role: want publisher or admin")
	// ErrInvalidLimit means a key's own rate limit is out of bounds (see Limit.Check).
	ErrInvalidLimit = errors.New("invalid rate limit")
)

// MaxNameLen is the longest key name.
const MaxNameLen = 64

var namePattern = regexp.MustCompile(`^[A-Za-z0-9._-]+$`)

// CheckName returns ErrInvalidName (wrapped with the rule) unless name is 1 to 64
// characters of [A-Za-z0-9._-].
func CheckName(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("%w: the name is required", ErrInvalidName)
	case len(name) > MaxNameLen:
		return fmt.Errorf("%w: at most %d characters", ErrInvalidName, MaxNameLen)
	case !namePattern.MatchString(name):
		return fmt.Errorf("%w: only letters, digits, '.', '_' and '-'", ErrInvalidName)
	}
	return nil
}

// secretPrefix marks notify secrets, so that secret scanners and humans recognise a
// leaked one, and so that anything else is refused without a database lookup.
const secretPrefix = "nfy_"

// secretLen is the length of a secret: the prefix and 32 bytes in unpadded base64url.
var secretLen = len(secretPrefix) + base64.RawURLEncoding.EncodedLen(32)

// NewSecret returns a new random secret.
func NewSecret() (string, error) {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("read random bytes: %w", err)
	}
	return secretPrefix + base64.RawURLEncoding.EncodeToString(b[:]), nil
}

// Hash is what the database stores of a secret.
func Hash(secret string) [32]byte { return sha256.Sum256([]byte(secret)) }

// wellFormed reports whether s looks like a secret NewSecret made.
func wellFormed(s string) bool { return len(s) == secretLen && strings.HasPrefix(s, secretPrefix) }

// Store keeps API keys in PostgreSQL.
type Store struct {
	pool *pgxpool.Pool
}

// NewStore returns a store on pool.
func NewStore(pool *pgxpool.Pool) *Store { return &Store{pool: pool} }

// Create stores a new key and returns it with its secret, which exists nowhere else. apps,
// when given, limit the key to those apps (the caller checks that they exist).
func (s *Store) Create(ctx context.Context, name string, role Role, apps ...string) (Key, string, error) {
	return s.CreateWith(ctx, name, role, Options{Apps: apps})
}

// CreateWith is Create for a key with its own publish rate limit, apps or permissions.
func (s *Store) CreateWith(ctx context.Context, name string, role Role, opts Options) (Key, string, error) {
	limit, apps := opts.Limit, opts.Apps
	if err := CheckName(name); err != nil {
		return Key{}, "", err
	}
	if _, err := ParseRole(string(role)); err != nil {
		return Key{}, "", err
	}
	if err := limit.Check(); err != nil {
		return Key{}, "", err
	}
	secret, err := NewSecret()
	if err != nil {
		return Key{}, "", err
	}
	h := Hash(secret)
	k := Key{Name: name, Role: role, Limit: limit, MayIgnorePreferences: opts.MayIgnorePreferences}
	if len(apps) > 0 {
		k.Apps = slices.Compact(slices.Sorted(slices.Values(apps)))
	}
	err = s.pool.QueryRow(ctx, `INSERT INTO api_keys (name, role, secret_hash, publish_rate, publish_burst, apps, allow_ignore_preferences)
		VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING created_at`,
		name, string(role), h[:], limit.PerSecond, limit.Burst, k.Apps, k.MayIgnorePreferences).Scan(&k.CreatedAt)
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "23505" && pgErr.ConstraintName == "api_keys_pkey" {
		return Key{}, "", fmt.Errorf("create key %s: %w", name, ErrNameTaken)
	}
	if err != nil {
		return Key{}, "", fmt.Errorf("create key %s: %w", name, err)
	}
	return k, secret, nil
}

// List returns the keys ordered by name, revoked ones too when includeRevoked is set.
func (s *Store) List(ctx context.Context, includeRevoked bool) ([]Key, error) {
	rows, err := s.pool.Query(ctx, `SELECT name, role, created_at, revoked_at, last_used_at, publish_rate, publish_burst, apps,
			allow_ignore_preferences
		FROM api_keys WHERE $1 OR revoked_at IS NULL ORDER BY name`, includeRevoked)
	if err != nil {
		return nil, fmt.Errorf("list keys: %w", err)
	}
	keys, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Key, error) {
		var k Key
		var role string
		err := r.Scan(&k.Name, &role, &k.CreatedAt, &k.RevokedAt, &k.LastUsedAt, &k.Limit.PerSecond, &k.Limit.Burst, &k.Apps,
			&k.MayIgnorePreferences)
		k.Role = Role(role)
		return k, err
	})
	if err != nil {
		return nil, fmt.Errorf("list keys: %w", err)
	}
	return keys, nil
}

// Revoke revokes the active key named name and reports whether there was one. Verifiers
// in other processes keep accepting it until their cache entry expires.
func (s *Store) Revoke(ctx context.Context, name string) (bool, error) {
	tag, err := s.pool.Exec(ctx, `UPDATE api_keys SET revoked_at = now() WHERE name = $1 AND revoked_at IS NULL`, name)
	if err != nil {
		return false, fmt.Errorf("revoke key %s: %w", name, err)
	}
	return tag.RowsAffected() > 0, nil
}

// lookup returns the active key whose secret hashes to h, or ErrUnknown.
func (s *Store) lookup(ctx context.Context, h [32]byte) (Key, error) {
	var k Key
	var role string
	err := s.pool.QueryRow(ctx, `SELECT name, role, created_at, last_used_at, publish_rate, publish_burst, apps,
			allow_ignore_preferences
		FROM api_keys WHERE secret_hash = $1 AND revoked_at IS NULL`, h[:]).Scan(&k.Name, &role, &k.CreatedAt, &k.LastUsedAt,
		&k.Limit.PerSecond, &k.Limit.Burst, &k.Apps, &k.MayIgnorePreferences)
	if errors.Is(err, pgx.ErrNoRows) {
		return Key{}, ErrUnknown
	}
	if err != nil {
		return Key{}, fmt.Errorf("look up key: %w", err)
	}
	k.Role = Role(role)
	return k, nil
}

// touch records that the key was used, unless that was recorded less than a minute ago
// (by any replica).
func (s *Store) touch(ctx context.Context, name string) error {
	_, err := s.pool.Exec(ctx, `UPDATE api_keys SET last_used_at = now()
		WHERE name = $1 AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute')`, name)
	if err != nil {
		return fmt.Errorf("record use of key %s: %w", name, err)
	}
	return nil
}
