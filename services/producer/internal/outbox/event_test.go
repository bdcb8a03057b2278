package outbox

import (
	"bytes"
	"context"
	"math"
	"strings"
	"testing"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"notify/pkg/pgtest"
	"notify/pkg/schema"
	busv1 "notify/proto/gen/notify/bus/v1"
)

// protojsonEventBody is how the relay read status events before eventBody had a fast path:
// the reference every published body must match byte for byte.
func protojsonEventBody(stored []byte) ([]byte, error) {
	var ev busv1.StatusEvent
	if err := protojson.Unmarshal(stored, &ev); err != nil {
		return nil, err
	}
	return proto.Marshal(&ev)
}

// sameAsProtojson fails t unless eventBody publishes what protojson and proto.Marshal made
// of stored, or refuses it as protojson did, and unless the fast path refused what
// protojson refuses. It reports whether the fast path read it.
func sameAsProtojson(t *testing.T, stored []byte) (fast bool) {
	t.Helper()
	want, wantErr := protojsonEventBody(stored)
	got, err := eventBody(stored)
	_, fast = decodeStoredEvent(stored)
	switch {
	case wantErr != nil && fast:
		t.Errorf("decodeStoredEvent(%s) read what protojson refused: %v", stored, wantErr)
	case wantErr != nil && err == nil:
		t.Errorf("eventBody(%s) = %x, protojson refused it: %v", stored, got, wantErr)
	case wantErr == nil && err != nil:
		t.Errorf("eventBody(%s): %v, protojson read it", stored, err)
	case !bytes.Equal(got, want):
		t.Errorf("eventBody(%s)\n = %x\nprotojson+proto.Marshal\n = %x", stored, got, want)
	}
	return fast
}

// eventRow is a notification as StatusEventsSQL reads it (schema.EventColumns).
type eventRow struct {
	caller, typ, app, status                                                 string
	total, delivered, invalid, retrying, failed, expired, skipped, cancelled int64
}

// writeEvents writes one status event per row with sql (schema.StatusEventsSQL or a variant
// of it, over the relation v with EventColumns' columns, and $15 as the event's time when
// it takes one) in a transaction with the session time zone tz, and returns their bodies.
func writeEvents(t *testing.T, db *pgtest.DB, sql, tz string, rows []eventRow, args ...any) [][]byte {
	t.Helper()
	ctx := context.Background()
	var ids []uuid.UUID
	var callers, types, apps, statuses []string
	counts := make([][]int64, 8)
	for _, r := range rows {
		ids = append(ids, uuid.New())
		callers, types, apps, statuses = append(callers, r.caller), append(types, r.typ), append(apps, r.app), append(statuses, r.status)
		for i, c := range []int64{r.total, r.delivered, r.invalid, r.retrying, r.failed, r.expired, r.skipped, r.cancelled} {
			counts[i] = append(counts[i], c)
		}
	}
	var bodies [][]byte
	err := pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT set_config('TimeZone', $1, true)", tz); err != nil {
			return err
		}
		all := append([]any{ids, callers, types, apps, statuses, counts[0], counts[1], counts[2], counts[3],
			counts[4], counts[5], counts[6], counts[7], make([]*string, len(rows))}, args...)
		rs, err := tx.Query(ctx, sql+" RETURNING body", all...)
		if err != nil {
			return err
		}
		bodies, err = pgx.CollectRows(rs, pgx.RowTo[[]byte])
		return err
	})
	if err != nil {
		t.Fatalf("write events (TimeZone %s): %v", tz, err)
	}
	if len(bodies) != len(rows) {
		t.Fatalf("wrote %d events for %d rows", len(bodies), len(rows))
	}
	return bodies
}

// eventRelation is the relation StatusEventsSQL reads in writeEvents: the rows' columns as
// arrays $1..$14.
const eventRelation = `(SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[],
	$6::bigint[], $7::bigint[], $8::bigint[], $9::bigint[], $10::bigint[], $11::bigint[], $12::bigint[], $13::bigint[],
	$14::text[]) AS v(id, caller, type, app, status, total, delivered, invalid, retrying, failed, expired, skipped, cancelled, traceparent))`

// replaceOnce is strings.Replace of exactly one occurrence, failing t when there is none:
// the variants of StatusEventsSQL below must follow it.
func replaceOnce(t *testing.T, s, old, new string) string {
	t.Helper()
	if strings.Count(s, old) != 1 {
		t.Fatalf("%q is not in StatusEventsSQL once:\n%s", old, s)
	}
	return strings.Replace(s, old, new, 1)
}

func oddRows() []eventRow {
	long := strings.Repeat("ü€𝄞x", 2500)
	texts := []string{
		"", "svc", `quo"te`, `back\slash`, "new\nline\ttab\rcr", "\x01\x1f\x7f control", "é ß 中文 😀 𝄞",
		"\u2028\u2029 separators", "</script><!--", "{\"json\": [1, 2]}", "\ufeffbom", "\\u0041 not an escape", long,
	}
	var rows []eventRow
	for i, s := range texts {
		rows = append(rows, eventRow{caller: s, typ: texts[(i+3)%len(texts)], app: texts[(i+5)%len(texts)], status: "pending"})
	}
	rows = append(rows,
		eventRow{caller: "svc", typ: "comment.reply", app: "default", status: "pending", total: 1},
		eventRow{caller: "svc", typ: "comment.reply", app: "default", status: "delivered", total: 3, delivered: 2, invalid: 1},
		eventRow{caller: "svc", typ: "t", app: "default", status: "failed",
			total: math.MaxInt64, delivered: math.MaxInt64 - 1, invalid: 1 << 53, retrying: 1<<53 + 1, failed: 1 << 62,
			expired: 4294967296, skipped: 2147483648, cancelled: 99},
		eventRow{caller: "svc", typ: "t", app: "a", status: "cancelled", total: -1, delivered: math.MinInt64, cancelled: 7},
		eventRow{caller: "svc", typ: "t", app: "a", status: "retrying", retrying: 500, skipped: 3},
	)
	return rows
}

// TestEventBodyMatchesProtojson: every status event StatusEventsSQL writes in PostgreSQL, and
// every one older code wrote, is published as the same bytes as protojson and
// proto.Marshal made of it, and read without protojson.
func TestEventBodyMatchesProtojson(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	rows := oddRows()
	sql := schema.StatusEventsSQL(eventRelation)
	zones := []string{"UTC", "Europe/Amsterdam", "America/Los_Angeles", "Asia/Kolkata", "America/St_Johns",
		"Asia/Kathmandu", "Pacific/Chatham", "Pacific/Kiritimati", "Etc/GMT+12"}

	check := func(t *testing.T, bodies [][]byte) {
		t.Helper()
		for _, b := range bodies {
			if !sameAsProtojson(t, b) {
				t.Errorf("not read by the fast path: %s", b)
			}
		}
	}
	t.Run("now", func(t *testing.T) {
		for _, tz := range zones {
			check(t, writeEvents(t, db, sql, tz, rows))
		}
	})
	t.Run("fixed time", func(t *testing.T) {
		fixed := replaceOnce(t, sql, "'time', now()", "'time', $15::timestamptz")
		for _, tz := range zones {
			for _, ts := range []string{
				"2026-11-30 15:22:49+00", "2026-11-30 15:22:49.5+00", "2026-11-30 15:22:49.000001+00",
				"2026-11-30 15:22:49.123456+00", "2026-11-30 15:22:49.999999+00", "2026-03-29 01:59:59.9+00",
				"2026-10-25 01:00:00+00", "1970-01-01 00:00:00+00", "1969-12-31 23:59:59.999999+00",
				"2000-02-29 12:00:00.1+00", "2262-04-12 00:00:00+00", "9999-12-31 09:59:59.999999+00",
			} {
				check(t, writeEvents(t, db, fixed, tz, rows[:3], ts))
			}
		}
		// Timestamp's first second, where zones with no local mean time can show it.
		for _, tz := range []string{"UTC", "Etc/GMT+12"} {
			check(t, writeEvents(t, db, fixed, tz, rows[:3], "0001-01-01 12:00:00.000001+00"))
		}
	})
	// Before 7bff7d0 events had no cancelled count.
	t.Run("without cancelled", func(t *testing.T) {
		old := replaceOnce(t, sql, ",\n\t\t\t\t'cancelled', c.cancelled", "")
		check(t, writeEvents(t, db, old, "UTC", rows))
	})
	// Times protojson cannot read (a local mean time offset with seconds, infinity, BC):
	// refused alike, so such a row stays in the outbox as before.
	t.Run("unreadable time", func(t *testing.T) {
		fixed := replaceOnce(t, sql, "'time', now()", "'time', $15::timestamptz")
		for _, c := range []struct{ tz, ts string }{
			{"Europe/Amsterdam", "1850-01-01 00:00:00"}, {"UTC", "infinity"}, {"UTC", "-infinity"},
			{"UTC", "0044-03-15 00:00:00+00 BC"}, {"UTC", "10000-01-01 00:00:00+00"},
			{"Pacific/Kiritimati", "9999-12-31 23:00:00+00"}, // year 10000 there
		} {
			for _, b := range writeEvents(t, db, fixed, c.tz, rows[:1], c.ts) {
				if _, err := eventBody(b); err == nil {
					t.Errorf("eventBody(%s) read a time protojson refuses", b)
				}
				sameAsProtojson(t, b)
			}
		}
	})
}

// storedEventCases are bodies no SQL of ours writes, which protojson reads or refuses: the
// fallback must give the same answer.
var storedEventCases = []string{
	`{}`,
	` {"notificationId" : "n", "caller" : "c", "type" : "t", "app" : "a", "status" : "pending", "counts" : {}, "time" : "2026-11-30T15:22:49Z"} `,
	`{"notification_id": "n", "status": "pending"}`,
	`{"counts": {"total": "5", "delivered": "-3"}}`,
	`{"counts": {"total": 1e2, "delivered": 2.0}}`,
	`{"counts": {"total": 1.5}}`,
	`{"counts": {"total": 9223372036854775808}}`,
	`{"counts": {"total": null, "cancelled": -0}}`,
	`{"counts": null, "time": null, "caller": null}`,
	`{"counts": {"total": 1}, "unknown": 1}`,
	`{"counts": {"total": 1, "future": 2}}`,
	`{"caller": "x"} {"caller": "y"}`,
	`{"caller": "x"} x`,
	`{"caller": "x"`,
	`[]`, `null`, `""`, ``,
	`{"caller": 5}`,
	`{"caller": "\ud83d\ude00 \u00e9 \u0000"}`,
	`{"caller": "\ud83d"}`,
	"{\"caller\": \"\xff\"}",
	`{"time": "2026-11-30T15:22:49.1234567891+00:00"}`,
	`{"time": "2026-11-30T15:22:49.123456789+00:00"}`,
	`{"time": "2026-11-30T15:22:49.123456789-05:30"}`,
	`{"time": "2026-11-30t15:22:49z"}`,
	`{"time": "2026-11-30 15:22:49+00:00"}`,
	`{"time": "0000-12-31T23:59:59Z"}`,
	`{"time": "0001-01-01T00:00:00Z"}`,
	`{"time": "2026-11-30T15:22:49+00:00:00"}`,
	`{"time": ""}`,
	`{"time": 5}`,
	`{"time": {"seconds": 5}}`,
	`{"counts": []}`,
	`{"caller": "a", "caller": "b"}`,
	`{"caller": null, "caller": "b"}`,
	`{"counts": null, "counts": {}}`,
	`{"counts": {"total": 1, "total": 2}}`,
	`{"Caller": "x"}`,
	`{"CALLER": "x", "Counts": {"Total": 1}}`,
	`{"c\u0061ller": "x"}`,
	`{"caller": "\"\\\/\b\f\n\r\t\u00e9\u00E9\u0000\u2028 end"}`,
	`{"caller": "\x"}`,
	`{"caller": "\u00g9"}`,
	`{"caller": "\u00e"}`,
	"{\"caller\": \"raw\ttab\"}",
	"{\"caller\": \"raw\x7f del\"}",
	"{\"caller\":\n\t\"x\"\r\n}\n",
	`{"caller": "x",}`,
	`{,"caller": "x"}`,
	`{"caller" "x"}`,
	`{"caller": nul}`,
	`{"caller": nullx}`,
	`{"counts": {"total": 01}}`,
	`{"counts": {"total": -01}}`,
	`{"counts": {"total": - 5}}`,
	`{"counts": {"total": -}}`,
	`{"counts": {"total": +5}}`,
	`{"counts": {"total": -0}}`,
	`{"counts": {"total": 9223372036854775807, "delivered": -9223372036854775808}}`,
	`{"counts": {"total": -9223372036854775809}}`,
	`{"counts": {"total": 18446744073709551615}}`,
	`{"counts": {"total": 99999999999999999999}}`,
	`{"counts": {"total": 1E2}}`,
	`{"counts": {"total": 5 }, "time": "2026-11-30T15:22:49.123+05:30"}`,
	`{"time": "2026-11-30T15:22:49.123456+00:00", "time": "2026-11-30T15:22:49Z"}`,
}

func TestEventBodyFallsBackToProtojson(t *testing.T) {
	t.Parallel()
	for _, c := range storedEventCases {
		sameAsProtojson(t, []byte(c))
	}
}

// FuzzEventBody: whatever protojson reads, eventBody publishes the same bytes, and the fast
// path reads nothing protojson refuses.
func FuzzEventBody(f *testing.F) {
	for _, c := range storedEventCases {
		f.Add([]byte(c))
	}
	f.Add([]byte(sampleEvent))
	f.Fuzz(func(t *testing.T, stored []byte) {
		want, err := protojsonEventBody(stored)
		if err != nil {
			if ev, fast := decodeStoredEvent(stored); fast {
				t.Fatalf("decodeStoredEvent(%q) = %v; protojson refused it: %v", stored, ev, err)
			}
			return
		}
		got, err := eventBody(stored)
		if err != nil {
			t.Fatalf("eventBody(%q): %v; protojson read it", stored, err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("eventBody(%q) = %x, protojson+proto.Marshal = %x", stored, got, want)
		}
	})
}

// sampleEvent is a final event as StatusEventsSQL writes it for a one-token notification.
const sampleEvent = `{"notificationId" : "0193c9a4-6f5e-7b7a-9a51-3f1f0f4b2c1d", "caller" : "bench", "type" : "comment.reply", "app" : "default", "status" : "delivered", "counts" : {"total" : 1, "delivered" : 1, "invalid" : 0, "retrying" : 0, "failed" : 0, "expired" : 0, "skipped" : 0, "cancelled" : 0}, "time" : "2026-11-30T15:22:49.123456+00:00"}`

// BenchmarkEventBody: the relay's cost of one status event, before (protojson) and now.
// cpu-ns/op (the process's CPU time, garbage collection included) is steadier than ns/op
// on a busy machine.
func BenchmarkEventBody(b *testing.B) {
	stored := []byte(sampleEvent)
	for _, c := range []struct {
		name string
		fn   func([]byte) ([]byte, error)
	}{{"protojson", protojsonEventBody}, {"eventBody", eventBody}} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			cpu := processCPU(b)
			for b.Loop() {
				if _, err := c.fn(stored); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(processCPU(b)-cpu)/float64(b.N), "cpu-ns/op")
		})
	}
}

func TestSampleEventIsFast(t *testing.T) {
	t.Parallel()
	if !sameAsProtojson(t, []byte(sampleEvent)) {
		t.Fatal("the benchmark's sample is not read by the fast path")
	}
}
