package outbox

import (
	"bytes"
	"fmt"
	"strings"
	"time"
	"unicode/utf16"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	busv1 "notify/proto/gen/notify/bus/v1"
)

// eventBody turns a status event as the outbox holds it (protobuf JSON, written by SQL:
// schema.StatusEventsSQL) into the binary protobuf that is published.
//
// The rows SQL writes have one small fixed shape, so they are read by decodeStoredEvent,
// without protojson's reflection (protojson was ~5% of the producer's CPU in the sustain
// phase; encoding/json into a struct saved only ~15% of it, as it scans the input twice and
// cannot refuse what protojson refuses). Whatever decodeStoredEvent does not read exactly as
// protojson would is left to protojson: the proto field names, counts as strings, a key
// this relay does not know yet (a newer producer's), a key twice, escapes in keys. The
// published bytes are the same either way (TestEventBodyMatchesProtojson, FuzzEventBody).
func eventBody(stored []byte) ([]byte, error) {
	if ev, ok := decodeStoredEvent(stored); ok {
		return proto.Marshal(ev)
	}
	var ev busv1.StatusEvent
	if err := protojson.Unmarshal(stored, &ev); err != nil {
		return nil, fmt.Errorf("decode status event: %w", err)
	}
	return proto.Marshal(&ev)
}

// decodeStoredEvent reads a status event as StatusEventsSQL's json_build_object writes it
// (JSON names, integer counts, RFC 3339 time, keys in any order, null for unset); ok is
// false for anything else, which the caller gives to protojson.
func decodeStoredEvent(stored []byte) (ev *busv1.StatusEvent, ok bool) {
	if !utf8.Valid(stored) {
		return nil, false // protojson refuses it
	}
	d := jsonReader{b: stored}
	ev = &busv1.StatusEvent{}
	var seen uint
	ok = d.object(func(key []byte) bool {
		var bit uint
		var read bool
		switch string(key) {
		case "notificationId":
			bit, read = 1<<0, d.string(&ev.NotificationId)
		case "caller":
			bit, read = 1<<1, d.string(&ev.Caller)
		case "type":
			bit, read = 1<<2, d.string(&ev.Type)
		case "app":
			bit, read = 1<<3, d.string(&ev.App)
		case "status":
			bit, read = 1<<4, d.string(&ev.Status)
		case "counts":
			bit, read = 1<<5, d.counts(&ev.Counts)
		case "time":
			bit, read = 1<<6, d.time(&ev.Time)
		default:
			return false
		}
		if seen&bit != 0 {
			return false
		}
		seen |= bit
		return read
	})
	if !ok || !d.end() {
		return nil, false
	}
	return ev, true
}

// jsonReader reads the few JSON forms a stored status event is made of, each method
// returning false at anything it does not read exactly as protojson does.
type jsonReader struct {
	b []byte
	i int
}

func (d *jsonReader) space() {
	for d.i < len(d.b) {
		switch d.b[d.i] {
		case ' ', '\t', '\n', '\r':
			d.i++
		default:
			return
		}
	}
}

// next consumes c, after whitespace, if it comes next.
func (d *jsonReader) next(c byte) bool {
	d.space()
	if d.i < len(d.b) && d.b[d.i] == c {
		d.i++
		return true
	}
	return false
}

// null consumes a JSON null, if it comes next: protojson leaves such a field unset.
func (d *jsonReader) null() bool {
	d.space()
	if bytes.HasPrefix(d.b[d.i:], []byte("null")) {
		d.i += len("null")
		return true
	}
	return false
}

func (d *jsonReader) end() bool {
	d.space()
	return d.i == len(d.b)
}

// object reads an object, calling field with each key (unescaped keys only) to read its value.
func (d *jsonReader) object(field func(key []byte) bool) bool {
	if !d.next('{') {
		return false
	}
	if d.next('}') {
		return true
	}
	for {
		if !d.next('"') {
			return false
		}
		n := bytes.IndexByte(d.b[d.i:], '"')
		if n < 0 || bytes.IndexByte(d.b[d.i:d.i+n], '\\') >= 0 {
			return false
		}
		key := d.b[d.i : d.i+n]
		d.i += n + 1
		if !d.next(':') || !field(key) {
			return false
		}
		if !d.next(',') {
			return d.next('}')
		}
	}
}

// string reads a JSON string or null into s.
func (d *jsonReader) string(s *string) bool {
	if d.null() {
		return true
	}
	if !d.next('"') {
		return false
	}
	start := d.i
	for d.i < len(d.b) {
		switch c := d.b[d.i]; {
		case c == '"':
			*s = string(d.b[start:d.i])
			d.i++
			return true
		case c == '\\':
			return d.escaped(s, start)
		case c < ' ':
			return false // JSON allows no raw control characters in strings
		}
		d.i++
	}
	return false
}

// escaped reads the rest of a string that started at start and has escapes from d.i on.
func (d *jsonReader) escaped(s *string, start int) bool {
	buf := append([]byte(nil), d.b[start:d.i]...)
	for d.i < len(d.b) {
		c := d.b[d.i]
		switch {
		case c == '"':
			*s = string(buf)
			d.i++
			return true
		case c < ' ':
			return false
		case c != '\\':
			buf = append(buf, c)
			d.i++
			continue
		}
		if d.i+1 >= len(d.b) {
			return false
		}
		e := d.b[d.i+1]
		d.i += 2
		switch e {
		case '"', '\\', '/':
			buf = append(buf, e)
		case 'b':
			buf = append(buf, '\b')
		case 'f':
			buf = append(buf, '\f')
		case 'n':
			buf = append(buf, '\n')
		case 'r':
			buf = append(buf, '\r')
		case 't':
			buf = append(buf, '\t')
		case 'u':
			r, ok := d.hex4()
			if !ok || utf16.IsSurrogate(r) {
				return false // surrogate pairs are left to protojson (SQL writes UTF-8)
			}
			buf = utf8.AppendRune(buf, r)
		default:
			return false
		}
	}
	return false
}

func (d *jsonReader) hex4() (rune, bool) {
	if d.i+4 > len(d.b) {
		return 0, false
	}
	var r rune
	for _, c := range d.b[d.i : d.i+4] {
		switch {
		case '0' <= c && c <= '9':
			r = r<<4 | rune(c-'0')
		case 'a' <= c && c <= 'f':
			r = r<<4 | rune(c-'a'+10)
		case 'A' <= c && c <= 'F':
			r = r<<4 | rune(c-'A'+10)
		default:
			return 0, false
		}
	}
	d.i += 4
	return r, true
}

// int64 reads an integer in JSON's own form (no fraction, no exponent: those are left to
// protojson) or null into n.
func (d *jsonReader) int64(n *int64) bool {
	if d.null() {
		return true
	}
	neg := d.next('-')
	if !neg {
		d.space()
	}
	start := d.i
	var u uint64
	for d.i < len(d.b) && '0' <= d.b[d.i] && d.b[d.i] <= '9' {
		if d.i-start == 19 {
			return false // beyond int64 (19 digits cannot overflow u)
		}
		u = u*10 + uint64(d.b[d.i]-'0')
		d.i++
	}
	digits := d.i - start
	if digits == 0 || (digits > 1 && d.b[start] == '0') {
		return false
	}
	if d.i < len(d.b) && (d.b[d.i] == '.' || d.b[d.i] == 'e' || d.b[d.i] == 'E') {
		return false
	}
	switch {
	case !neg && u <= 1<<63-1:
		*n = int64(u)
	case neg && u <= 1<<63:
		*n = int64(-u) // -(1<<63) wraps to itself: math.MinInt64
	default:
		return false
	}
	return true
}

// counts reads a StatusCounts object or null into c.
func (d *jsonReader) counts(c **busv1.StatusCounts) bool {
	if d.null() {
		return true
	}
	*c = &busv1.StatusCounts{}
	var seen uint
	return d.object(func(key []byte) bool {
		var bit uint
		var n *int64
		switch string(key) {
		case "total":
			bit, n = 1<<0, &(*c).Total
		case "delivered":
			bit, n = 1<<1, &(*c).Delivered
		case "invalid":
			bit, n = 1<<2, &(*c).Invalid
		case "retrying":
			bit, n = 1<<3, &(*c).Retrying
		case "failed":
			bit, n = 1<<4, &(*c).Failed
		case "expired":
			bit, n = 1<<5, &(*c).Expired
		case "skipped":
			bit, n = 1<<6, &(*c).Skipped
		case "cancelled":
			bit, n = 1<<7, &(*c).Cancelled
		default:
			return false
		}
		if seen&bit != 0 {
			return false
		}
		seen |= bit
		return d.int64(n)
	})
}

// time reads an RFC 3339 time or null into ts as protojson reads a
// google.protobuf.Timestamp (time.RFC3339Nano), such as json_build_object's timestamptz
// "2026-11-30T15:22:49.123456+00:00". What protojson refuses (out of Timestamp's range,
// more than 9 fractional digits) is not read.
func (d *jsonReader) time(ts **timestamppb.Timestamp) bool {
	if d.null() {
		return true
	}
	var s string
	if !d.string(&s) {
		return false
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return false
	}
	*ts = timestamppb.New(t)
	if (*ts).CheckValid() != nil {
		return false
	}
	if i, j := strings.LastIndexByte(s, '.'), strings.LastIndexAny(s, "Z-+"); i >= 0 && j >= i && j-i > len(".999999999") {
		return false
	}
	return true
}
