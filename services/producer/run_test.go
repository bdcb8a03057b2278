package main

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"notify/pkg/pgtest"
	"notify/pkg/schema"
)

// TestLogStatusEvents: the producer says at start when the database has status events off,
// and says nothing when they are on.
func TestLogStatusEvents(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	ctx := context.Background()
	logged := func() string {
		pool, err := pgxpool.New(ctx, db.URL) // new sessions take the database's setting
		if err != nil {
			t.Fatal(err)
		}
		defer pool.Close()
		var buf bytes.Buffer
		logStatusEvents(ctx, pool, slog.New(slog.NewTextHandler(&buf, nil)), "notify.events")
		return buf.String()
	}
	if got := logged(); got != "" {
		t.Errorf("logged %q with status events on, want nothing", got)
	}
	db.SetDefault(t, schema.StatusEventsSetting, "off")
	if got := logged(); !strings.Contains(got, "status events are off") || !strings.Contains(got, "notify.events") {
		t.Errorf("logged %q with notify.status_events off, want the warning naming the exchange", got)
	}
}
