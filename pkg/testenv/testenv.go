// Package testenv finds the RabbitMQ and PostgreSQL that integration tests run against.
//
// An integration test calls AMQPURL or DatabaseURL first. When the service does not answer,
// the test is skipped on a developer machine and fails when the CI environment variable is
// set, so CI can never pass by skipping. `make test` starts both services before any test.
package testenv

import (
	"cmp"
	"net"
	"net/url"
	"os"
	"testing"
	"time"

	"notify/pkg/envconfig"
)

// Default addresses match scripts/devenv.sh and the services' own defaults.
const (
	DefaultAMQPURL       = envconfig.DefaultAMQPURL
	DefaultDatabaseURL   = envconfig.DefaultDatabaseURL
	DefaultManagementURL = "http://guest:guest@127.0.0.1:15672"
)

// AMQPURL returns AMQP_URL (or the default) once the broker accepts TCP connections.
func AMQPURL(t testing.TB) string {
	t.Helper()
	u := cmp.Or(os.Getenv("AMQP_URL"), DefaultAMQPURL)
	require(t, "RabbitMQ", "AMQP_URL", u, "5672")
	return u
}

// DatabaseURL returns DATABASE_URL (or the default) once PostgreSQL accepts TCP connections.
func DatabaseURL(t testing.TB) string {
	t.Helper()
	u := cmp.Or(os.Getenv("DATABASE_URL"), DefaultDatabaseURL)
	require(t, "PostgreSQL", "DATABASE_URL", u, "5432")
	return u
}

// ManagementURL returns RABBITMQ_MANAGEMENT_URL (or the default): the broker's HTTP
// management API, with credentials in the URL, once it accepts TCP connections.
func ManagementURL(t testing.TB) string {
	t.Helper()
	u := cmp.Or(os.Getenv("RABBITMQ_MANAGEMENT_URL"), DefaultManagementURL)
	require(t, "RabbitMQ management API", "RABBITMQ_MANAGEMENT_URL", u, "15672")
	return u
}

// InCI reports whether the tests run in CI, where a missing service is a failure.
func InCI() bool { return os.Getenv("CI") != "" }

func require(t testing.TB, service, variable, rawURL, defaultPort string) {
	t.Helper()
	u, err := url.Parse(rawURL)
	if err != nil {
		t.Fatalf("%s: %v", variable, err)
	}
	host := cmp.Or(u.Hostname(), "127.0.0.1")
	addr := net.JoinHostPort(host, cmp.Or(u.Port(), defaultPort))
	conn, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err == nil {
		conn.Close()
		return
	}
	msg := service + " is not reachable at " + addr + " (" + variable + "): " + err.Error() +
		"; run `make test` or scripts/devenv.sh to start it"
	if InCI() {
		t.Fatal(msg)
	}
	t.Skip(msg)
}
