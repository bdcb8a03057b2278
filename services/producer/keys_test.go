package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"notify/pkg/pgtest"
)

func TestKeysCommand(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	getenv := env(map[string]string{"DATABASE_URL": db.URL})
	keys := func(args ...string) (code int, stdout, stderr string) {
		var out, errOut bytes.Buffer
		code = runKeys(context.Background(), args, getenv, &out, &errOut)
		return code, out.String(), errOut.String()
	}

	code, secret, stderr := keys("create", "ops", "--role", "admin")
	secret = strings.TrimSpace(secret)
	if code != 0 || !strings.HasPrefix(secret, "nfy_") || strings.Contains(secret, "\n") {
		t.Fatalf("create = %d, stdout %q, stderr %q; want 0 and only the secret on stdout", code, secret, stderr)
	}
	// Which database it went to: without DATABASE_URL it is the local development one,
	// where a key made for another notify works for nothing (it did not say).
	cc := db.Pool.Config().ConnConfig
	if want := fmt.Sprintf(`created admin key "ops" in database %s on %s:%d;`, cc.Database, cc.Host, cc.Port); !strings.HasPrefix(stderr, want) {
		t.Errorf("create's stderr %q, want it to start with %q", stderr, want)
	}
	var hash []byte
	if err := db.Pool.QueryRow(context.Background(), "SELECT secret_hash FROM api_keys WHERE name = 'ops' AND role = 'admin'").Scan(&hash); err != nil {
		t.Fatal(err)
	}
	if want := sha256.Sum256([]byte(secret)); !bytes.Equal(hash, want[:]) {
		t.Error("stored hash is not the secret's SHA-256")
	}

	tests := []struct {
		name     string
		args     []string
		wantCode int
		wantOut  string
	}{
		{"flags first", []string{"create", "--role", "publisher", "orders"}, 0, "nfy_"},
		{"may ignore preferences", []string{"create", "security", "--role", "publisher", "--allow-ignore-preferences"}, 0, "nfy_"},
		{"admin may always ignore preferences", []string{"create", "root", "--role", "admin", "--allow-ignore-preferences"}, 2, ""},
		{"taken name", []string{"create", "ops", "--role", "admin"}, 1, ""},
		{"no role", []string{"create", "x"}, 2, ""},
		{"bad role", []string{"create", "x", "--role", "root"}, 2, ""},
		{"bad name", []string{"create", "a b", "--role", "admin"}, 2, ""},
		{"unknown subcommand", []string{"rotate"}, 2, ""},
		{"nothing", nil, 2, ""},
		{"revoke unknown", []string{"revoke", "nobody"}, 3, ""},
		{"known app", []string{"create", "default-only", "--role", "publisher", "--apps", "default"}, 0, "nfy_"},
		// An app not in APPS is refused, as CreateAPIKey refuses it; it was created.
		{"unknown app", []string{"create", "staff-service", "--role", "publisher", "--apps", "staff"}, 2, ""},
		// As CreateAPIKey refuses it; it was stored twice.
		{"app given twice", []string{"create", "twice", "--role", "publisher", "--apps", "default,default"}, 2, ""},
	}
	for _, tt := range tests {
		code, out, stderr := keys(tt.args...)
		if code != tt.wantCode || !strings.HasPrefix(out, tt.wantOut) {
			t.Errorf("%s: keys %q = %d, %q (stderr %q); want %d, %q…", tt.name, tt.args, code, out, stderr, tt.wantCode, tt.wantOut)
		}
	}

	var n int
	if err := db.Pool.QueryRow(context.Background(), "SELECT count(*) FROM api_keys WHERE name = 'staff-service'").Scan(&n); err != nil || n != 0 {
		t.Errorf("a key for an unknown app was stored (%d rows, %v)", n, err)
	}
	keys("revoke", "default-only") // out of the listings below

	if code, _, stderr := keys("revoke", "orders"); code != 0 {
		t.Fatalf("revoke = %d: %s", code, stderr)
	}
	_, listed, _ := keys("list")
	_, all, _ := keys("list", "--all")
	if !strings.Contains(listed, "ops") || strings.Contains(listed, "orders") || !strings.Contains(all, "orders") {
		t.Errorf("list:\n%s\nlist --all:\n%s", listed, all)
	}
	ignore := map[string]string{} // the IGNORE PREFS column by key name
	for _, line := range strings.Split(strings.TrimSpace(listed), "\n")[1:] {
		f := strings.Fields(line)
		ignore[f[0]] = f[len(f)-1]
	}
	if got, want := fmt.Sprint(ignore), fmt.Sprint(map[string]string{"ops": "yes", "security": "yes"}); got != want {
		t.Errorf("list's IGNORE PREFS column = %s, want %s:\n%s", got, want, listed)
	}
	keys("create", "plain", "--role", "publisher")
	_, listed, _ = keys("list")
	if !strings.Contains(listed, "plain") || !strings.HasSuffix(strings.TrimSpace(lineOf(listed, "plain")), "no") {
		t.Errorf("a publisher key without the permission lists:\n%s", listed)
	}
	// RATE and BURST as notifyctl keys list shows them: the key's own limit (set here as
	// CreateAPIKey stores it; producer keys create has no flags for it), or "default".
	keys("create", "limited", "--role", "publisher")
	if _, err := db.Pool.Exec(context.Background(), `UPDATE api_keys SET publish_rate = CASE name WHEN 'limited' THEN 50 ELSE 0 END,
		publish_burst = CASE name WHEN 'limited' THEN 100 END WHERE name IN ('limited', 'security')`); err != nil {
		t.Fatal(err)
	}
	_, listed, _ = keys("list")
	if header := strings.SplitN(listed, "\n", 2)[0]; !strings.Contains(header, "  REVOKED  RATE ") || !strings.Contains(header, "  BURST  ") ||
		!strings.Contains(strings.Join(strings.Fields(header), " "), " REVOKED RATE BURST APPS IGNORE PREFS") {
		t.Errorf("list's header %q, want RATE and BURST between REVOKED and APPS", header)
	}
	limits := map[string]string{} // RATE and BURST by key name, counted from the end
	for _, line := range strings.Split(strings.TrimSpace(listed), "\n")[1:] {
		f := strings.Fields(line)
		limits[f[0]] = strings.Join(f[len(f)-4:len(f)-2], " ")
	}
	want := map[string]string{"ops": "default default", "plain": "default default", "security": "unlimited default", "limited": "50/s 100"}
	if diff := cmp.Diff(want, limits); diff != "" {
		t.Errorf("list's RATE and BURST (-want +got):\n%s\n%s", diff, listed)
	}
	var stored bool
	if err := db.Pool.QueryRow(context.Background(), "SELECT allow_ignore_preferences FROM api_keys WHERE name = 'security'").Scan(&stored); err != nil || !stored {
		t.Errorf("security key's stored permission = %v (%v), want true", stored, err)
	}
	if strings.Contains(all, secret) {
		t.Error("list shows a secret")
	}
}

// lineOf returns the line of table that starts with name.
func lineOf(table, name string) string {
	for _, line := range strings.Split(table, "\n") {
		if strings.HasPrefix(line, name+" ") {
			return line
		}
	}
	return ""
}

// TestSubcommandHelp: --help after a subcommand of `producer keys` or `producer migrate` is
// help (stdout, exit 0), as after the command itself; they answered "flag: help requested"
// and "give one subcommand" with exit 2. A misspelt flag there is a usage error naming it.
func TestSubcommandHelp(t *testing.T) {
	t.Parallel()
	getenv := env(map[string]string{"DATABASE_URL": "postgres://nobody@127.0.0.1:1/none"})
	run := map[string]func(context.Context, []string, func(string) string, io.Writer, io.Writer) int{
		"keys": runKeys, "migrate": runMigrate,
	}
	for _, args := range [][]string{
		{"keys", "create", "--help"}, {"keys", "create", "ops", "-h"}, {"keys", "list", "--help"},
		{"keys", "revoke", "-help"}, {"migrate", "up", "--help"}, {"migrate", "status", "-h"},
		{"migrate", "--help"}, {"migrate", "help"},
		// Before the subcommand: `keys -help` was `unknown subcommand "-help"`, exit 2.
		{"keys", "-help"}, {"keys", "--help"}, {"keys", "-h"}, {"keys", "help"}, {"migrate", "-help"}, {"migrate", "-h"},
	} {
		var out, errOut bytes.Buffer
		code := run[args[0]](context.Background(), args[1:], getenv, &out, &errOut)
		if code != 0 || !strings.Contains(out.String(), "Usage:") || errOut.Len() != 0 {
			t.Errorf("producer %s = %d, stdout %q, stderr %q; want 0 and the usage on stdout", strings.Join(args, " "), code, out.String(), errOut.String())
		}
	}
	for _, args := range [][]string{
		{"keys", "create", "ops", "--hlep"}, {"migrate", "up", "--hlep"}, {"migrate", "--hlep", "up"},
		// It was `unknown subcommand "--hlep"`.
		{"keys", "--hlep"}, {"keys", "--hlep", "list"},
	} {
		var out, errOut bytes.Buffer
		code := run[args[0]](context.Background(), args[1:], getenv, &out, &errOut)
		// Named as typed: the flag package says "-hlep".
		if code != 2 || !strings.Contains(errOut.String(), "unknown flag: --hlep") || out.Len() != 0 {
			t.Errorf("producer %s = %d, stdout %q, stderr %q; want 2 and the flag named on stderr", strings.Join(args, " "), code, out.String(), errOut.String())
		}
	}
}

// TestKeysNamesAnUnreachableDatabase: a database that does not answer is named as
// DATABASE_URL (it said "migrate database: acquire connection for migrations: …" for any
// keys command, the first one a new operator runs).
func TestKeysNamesAnUnreachableDatabase(t *testing.T) {
	t.Parallel()
	var out, errOut bytes.Buffer
	down := env(map[string]string{"DATABASE_URL": "postgres://notify:notify@" + freeAddr(t) + "/notify?sslmode=disable"})
	if code := runKeys(context.Background(), []string{"list"}, down, &out, &errOut); code != 1 || !strings.Contains(errOut.String(), "DATABASE_URL: database not reachable") {
		t.Errorf("keys list with the database down = %d, %q; want 1 naming DATABASE_URL", code, errOut.String())
	}
}

// TestKeysLeaveMigrationsToMigrateUpWhenAsked: with MIGRATE_ON_START=false a keys command
// applies no migration (it did, whatever the variable said), names what is pending and how
// to apply it, and works once `producer migrate up` ran; with the default it migrates.
func TestKeysLeaveMigrationsToMigrateUpWhenAsked(t *testing.T) {
	t.Parallel()
	db := pgtest.NewEmpty(t)
	keys := func(vars map[string]string, args ...string) (int, string) {
		var out, errOut bytes.Buffer
		vars["DATABASE_URL"] = db.URL
		return runKeys(context.Background(), args, env(vars), &out, &errOut), errOut.String()
	}
	code, stderr := keys(map[string]string{"MIGRATE_ON_START": "false"}, "create", "ops", "--role", "admin")
	if code != 1 || !strings.Contains(stderr, "MIGRATE_ON_START=false") || !strings.Contains(stderr, "producer migrate up") {
		t.Errorf("keys create on an unmigrated database with MIGRATE_ON_START=false = %d, %q; want 1 naming the variable and `producer migrate up`", code, stderr)
	}
	var tables int
	if err := db.Pool.QueryRow(context.Background(), `SELECT count(*) FROM pg_tables WHERE tablename IN ('api_keys', 'schema_migrations')`).Scan(&tables); err != nil {
		t.Fatal(err)
	}
	if tables != 0 {
		t.Errorf("the keys command created %d of api_keys and schema_migrations; it must leave the schema alone", tables)
	}
	if code, stderr := keys(map[string]string{}, "create", "ops", "--role", "admin"); code != 0 {
		t.Fatalf("keys create with MIGRATE_ON_START unset = %d, %q; want 0 (it migrates)", code, stderr)
	}
	if code, stderr := keys(map[string]string{"MIGRATE_ON_START": "false"}, "list"); code != 0 {
		t.Errorf("keys list on a migrated database with MIGRATE_ON_START=false = %d, %q; want 0", code, stderr)
	}
}
