package server

import (
	"context"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	notifyv1 "notify/proto/gen/notify/v1"
)

// The fuzz targets below call the validation the handlers run before they touch the
// database, with requests built from fuzzed strings. Their seeds run in every `go test`;
// `make fuzz` explores further. The invariants: nothing panics, a refused request is
// refused with INVALID_ARGUMENT naming its fields (never INTERNAL), and an accepted one can
// be stored as it is.

// checkRefusal fails unless v, turned into the client's error, is INVALID_ARGUMENT with a
// BadRequest detail naming a field for every violation.
func checkRefusal(t *testing.T, v violations) {
	t.Helper()
	for _, fv := range v {
		if fv.GetField() == "" || fv.GetDescription() == "" {
			t.Fatalf("violation without field or description: %v", fv)
		}
	}
	st, _ := status.FromError(invalidArgument(v))
	if st.Code() != codes.InvalidArgument {
		t.Fatalf("refusal answered %v, want INVALID_ARGUMENT", st.Code())
	}
	for _, d := range st.Details() {
		if br, ok := d.(*errdetails.BadRequest); ok && len(br.GetFieldViolations()) == len(v) {
			return
		}
	}
	t.Fatalf("INVALID_ARGUMENT without its %d field violations: %v", len(v), st.Details())
}

// serve runs req through what the server runs before a handler touches the database: the
// text check every RPC gets, then the RPC's validation. It returns the client's error, nil
// for an accepted request.
func serve(req proto.Message, validate func() violations) error {
	_, err := checkText(context.Background(), req, nil, func(context.Context, any) (any, error) {
		if v := validate(); len(v) > 0 {
			return nil, invalidArgument(v)
		}
		return nil, nil
	})
	return err
}

// checkServed fails unless err is nil or INVALID_ARGUMENT naming fields, and unless a
// request holding text PostgreSQL cannot store (NUL, invalid UTF-8) is refused.
func checkServed(t *testing.T, req proto.Message, err error) {
	t.Helper()
	var bad violations
	nameBadText(&bad, "", req.ProtoReflect()) // the naming walk: the whole check, independent of goodMessage
	if err == nil {
		if len(bad) > 0 {
			t.Fatalf("accepted a request with text PostgreSQL cannot store: %v", bad)
		}
		return
	}
	st, _ := status.FromError(err)
	if st.Code() != codes.InvalidArgument {
		t.Fatalf("refusal answered %v, want INVALID_ARGUMENT: %v", st.Code(), err)
	}
	for _, d := range st.Details() {
		if br, ok := d.(*errdetails.BadRequest); ok && len(br.GetFieldViolations()) > 0 {
			checkRefusal(t, br.GetFieldViolations())
			return
		}
	}
	t.Fatalf("INVALID_ARGUMENT without field violations: %v", err)
}

// tame turns a fuzzed string into one every validation accepts: valid UTF-8 without NUL,
// non-empty, at most n bytes.
func tame(s string, n int) string {
	s = strings.ToValidUTF8(strings.ReplaceAll(s, "\x00", ""), "")
	for len(s) > n {
		_, size := utf8.DecodeLastRuneInString(s)
		s = s[:len(s)-size]
	}
	if s == "" {
		return "x"
	}
	return s
}

func FuzzValidatePublish(f *testing.F) {
	f.Add("comment.created", "New comment", "Ana replied", "https://example.com/a.png", "post_id", "42", "key-1", "u1", uint8(0), int32(1), int64(3600), int32(0), "")
	f.Add("comment.created", "", "", "", "", "", "", "t1", uint8(1), int32(0), int64(0), int32(0), "")
	f.Add("alert", "\x00", "bad\xff\xfeutf8", "http://insecure", "from", "x", "", "", uint8(2), int32(7), int64(-1), int32(-5), "c")
	f.Add("type with spaces", "t", "b", "https://", "google.sent_time", "1", strings.Repeat("k", 200), "\x00", uint8(1), int32(2), int64(30*24*3600), int32(999_999_999), strings.Repeat("c", 100))
	f.Add(strings.Repeat("a", 65), strings.Repeat("T", 5000), "", "https://[::1", "gcm.n.e", "", "", strings.Repeat("u", 129), uint8(0), int32(-1), int64(1<<62), int32(1<<30), "\xff")
	f.Add("a", "t", "", "::", "message_type", "", "", "", uint8(3), int32(1), int64(1), int32(-1), "")
	f.Fuzz(func(t *testing.T, typ, title, body, image, key, value, idem, recipient string, audience uint8,
		priority int32, ttlSeconds int64, ttlNanos int32, collapse string) {
		req := &notifyv1.PublishRequest{
			IdempotencyKey: idem,
			Type:           typ,
			Content:        &notifyv1.Content{Title: title, Body: body, ImageUrl: image},
			Data:           map[string]string{key: value},
			Options: &notifyv1.Options{
				Priority:    notifyv1.Priority(priority),
				Ttl:         &durationpb.Duration{Seconds: ttlSeconds, Nanos: ttlNanos},
				CollapseKey: collapse,
			},
		}
		switch audience % 4 {
		case 0:
			req.Recipients = &notifyv1.Recipients{Target: &notifyv1.Recipients_UserIds{UserIds: &notifyv1.UserIDs{UserIds: []string{recipient}}}}
		case 1:
			req.Recipients = &notifyv1.Recipients{Target: &notifyv1.Recipients_Tokens{Tokens: &notifyv1.Tokens{Tokens: []string{recipient}}}}
		case 2:
			req.Recipients = &notifyv1.Recipients{Target: &notifyv1.Recipients_AllDevices{AllDevices: &notifyv1.AllDevices{}}}
		}
		err := serve(req, func() violations { return validatePublish(req) })
		checkServed(t, req, err)
		if err == nil {
			if _, err := protojson.Marshal(req); err != nil {
				// Publish stores the request as JSON: failing here would answer INTERNAL.
				t.Fatalf("accepted request does not encode: %v", err)
			}
		}

		// The same request tamed into a valid one is accepted.
		valid := &notifyv1.PublishRequest{
			Type:       "fuzz.valid",
			Recipients: &notifyv1.Recipients{Target: &notifyv1.Recipients_UserIds{UserIds: &notifyv1.UserIDs{UserIds: []string{tame(recipient, MaxUserIDLen)}}}},
			Content:    &notifyv1.Content{Title: tame(title, 150), Body: tame(body, 150)},
			Data:       map[string]string{"k" + tame(key, 60): tame(value, 150)},
			Options: &notifyv1.Options{
				Priority:    notifyv1.Priority(uint32(priority) % uint32(len(notifyv1.Priority_name))),
				Ttl:         durationpb.New(time.Duration(1+uint64(ttlSeconds)%uint64(MaxTTL/time.Second)) * time.Second),
				CollapseKey: tame(collapse, MaxCollapseKeyLen),
			},
		}
		if v := validatePublish(valid); len(v) > 0 {
			t.Fatalf("valid request refused: %v", v)
		}
	})
}

func FuzzValidateRegisterDevices(f *testing.F) {
	f.Add("u1", "d1", "tok-1", int32(1), "u2", "d2", "tok-2", int32(3))
	f.Add("u1", "d1", "tok-1", int32(2), "u1", "d1", "tok-1", int32(2))
	f.Add("", "", "", int32(0), "\x00", "\xff\xfe", strings.Repeat("t", 2000), int32(-1))
	f.Add(strings.Repeat("u", 129), "d", "\x00tok", int32(99), "u", strings.Repeat("d", 129), "t", int32(1))
	f.Fuzz(func(t *testing.T, user1, device1, token1 string, platform1 int32, user2, device2, token2 string, platform2 int32) {
		req := &notifyv1.RegisterDevicesRequest{Devices: []*notifyv1.Device{
			{UserId: user1, DeviceId: device1, Token: token1, Platform: notifyv1.Platform(platform1)},
			{UserId: user2, DeviceId: device2, Token: token2, Platform: notifyv1.Platform(platform2)},
		}}
		var b deviceBatch
		err := serve(req, func() (v violations) { b, v = validateRegisterDevices(req); return v })
		checkServed(t, req, err)
		if err == nil {
			for i, p := range b.platforms {
				if p == "" {
					t.Fatalf("accepted device %d without a platform name", i)
				}
			}
			if b.deviceIDs[0] == b.deviceIDs[1] || b.tokens[0] == b.tokens[1] {
				t.Fatalf("accepted a batch that repeats a device or token: %+v", b)
			}
		}

		// RegisterDevice validates its one device the same way.
		one := &notifyv1.RegisterDeviceRequest{UserId: user1, DeviceId: device1, Token: token1, Platform: notifyv1.Platform(platform1)}
		checkServed(t, one, serve(one, func() (v violations) {
			validateDevice(&v, "", user1, device1, token1, notifyv1.Platform(platform1))
			return v
		}))

		valid := &notifyv1.RegisterDevicesRequest{Devices: []*notifyv1.Device{
			{UserId: tame(user1, MaxUserIDLen), DeviceId: "a" + tame(device1, MaxDeviceIDLen-1), Token: "a" + tame(token1, MaxTokenLen-1), Platform: notifyv1.Platform_PLATFORM_ANDROID},
			{UserId: tame(user2, MaxUserIDLen), DeviceId: "b" + tame(device2, MaxDeviceIDLen-1), Token: "b" + tame(token2, MaxTokenLen-1), Platform: notifyv1.Platform_PLATFORM_WEB},
		}}
		if _, v := validateRegisterDevices(valid); len(v) > 0 {
			t.Fatalf("valid devices refused: %v", v)
		}
	})
}

// FuzzPageToken feeds the listings' page-token decoding garbage: it must refuse it (the
// handlers answer INVALID_ARGUMENT naming page_token) or return a cursor PostgreSQL can
// compare against, and a token it issues must decode to the same position.
func FuzzPageToken(f *testing.F) {
	f.Add(cursor{at: time.Date(2026, 11, 30, 3, 20, 0, 123000, time.UTC), id: "019ad0c4-7b1e-7c3a-9f00-0123456789ab"}.String())
	f.Add(cursor{at: time.Unix(0, 0), id: "42"}.String())
	f.Add("")
	f.Add("not base64!")
	f.Add("LTkyMjMzNzIwMzY4NTQ3NzU4MDgvMQ") // -9223372036854775808/1: a time PostgreSQL cannot hold
	f.Add("OTIyMzM3MjAzNjg1NDc3NTgwNy8x")   // 9223372036854775807/1
	f.Add("MTIzLw")                         // "123/": no id
	f.Add("\x00\xff")
	f.Add("MTcwMDAwMDAwMDAwMDAwMC9hAA") // "1700000000000000/a\x00": NUL in the id
	f.Fuzz(func(t *testing.T, token string) {
		c, ok, err := parseCursor(token)
		if err != nil || !ok {
			if token != "" && err == nil {
				t.Fatalf("token %q neither refused nor decoded", token)
			}
			return
		}
		if c.id == "" || !goodText(c.id) {
			t.Fatalf("token %q decoded to an id PostgreSQL cannot compare as text: %q", token, c.id)
		}
		if err := timestamppb.New(c.at).CheckValid(); err != nil {
			t.Fatalf("token %q decoded to a time PostgreSQL cannot compare: %v", token, err)
		}
		again, ok, err := parseCursor(c.String())
		if err != nil || !ok || !again.at.Equal(c.at) || again.id != c.id {
			t.Fatalf("cursor %v re-encoded as %q decodes to %v, %v, %v", c, c.String(), again, ok, err)
		}
	})
}

// FuzzListFilters drives the dead-letter filter (ListDeadLetters and Replay) and the time
// range every listing takes: refusals name their fields, and each predicate gets exactly the
// arguments its placeholders number.
func FuzzListFilters(f *testing.F) {
	f.Add("retries_exhausted", int64(1_700_000_000), int32(0), int64(1_800_000_000), int32(0), uint8(1))
	f.Add("", int64(0), int32(0), int64(0), int32(0), uint8(0))
	f.Add(strings.Repeat("r", 65), int64(-62135596801), int32(-1), int64(253402300800), int32(1e9), uint8(2))
	f.Add("\x00\xff", int64(5), int32(0), int64(4), int32(0), uint8(3))
	f.Fuzz(func(t *testing.T, reason string, startSec int64, startNanos int32, endSec int64, endNanos int32, flags uint8) {
		filter := &notifyv1.DeadLetterFilter{Reason: reason}
		if flags&1 != 0 {
			filter.StartTime = &timestamppb.Timestamp{Seconds: startSec, Nanos: startNanos}
		}
		if flags&2 != 0 {
			filter.EndTime = &timestamppb.Timestamp{Seconds: endSec, Nanos: endNanos}
		}
		if flags&4 != 0 {
			replayed := flags&8 != 0
			filter.Replayed = &replayed
		}
		req := &notifyv1.ListDeadLettersRequest{Filter: filter}
		var where conditions
		err := serve(req, func() (v violations) {
			validateDeadLetterFilter(&v, &where, "filter.", filter)
			return v
		})
		checkServed(t, req, err)
		if err != nil {
			return
		}
		placeholders := strings.Count(where.where(), "$")
		if placeholders != len(where.args) {
			t.Fatalf("%q has %d placeholders for %d args", where.where(), placeholders, len(where.args))
		}
		for _, a := range where.args {
			if at, ok := a.(time.Time); ok {
				if err := timestamppb.New(at).CheckValid(); err != nil {
					t.Fatalf("accepted a time PostgreSQL cannot compare: %v", at)
				}
			}
		}
	})
}

func FuzzValidateReplay(f *testing.F) {
	f.Add("019ad0c4-7b1e-7c3a-9f00-0123456789ab", "019ad0c4-7b1e-7c3a-9f00-0123456789ac", "", "", int32(0), false)
	f.Add("019ad0c4-7b1e-7c3a-9f00-0123456789ab", "019AD0C4-7B1E-7C3A-9F00-0123456789AB", "", "", int32(5), false)
	f.Add("not-a-uuid", "\x00", "", "", int32(-1), false)
	f.Add("", "", "retries_exhausted", "019ad0c4-7b1e-7c3a-9f00-0123456789ab", int32(10), true)
	f.Add("", "", "\xff", "garbage\x00", int32(1<<30), true)
	f.Fuzz(func(t *testing.T, id1, id2, reason, pageToken string, pageSize int32, deadLetters bool) {
		req := &notifyv1.ReplayRequest{PageToken: pageToken, PageSize: pageSize}
		if deadLetters {
			req.Selector = &notifyv1.ReplayRequest_DeadLetters{DeadLetters: &notifyv1.DeadLetterFilter{Reason: reason}}
		} else {
			req.Selector = &notifyv1.ReplayRequest_NotificationIds{NotificationIds: &notifyv1.NotificationIDs{Ids: []string{id1, id2}}}
		}
		var sel replaySelection
		err := serve(req, func() (v violations) { sel, v = validateReplay(req); return v })
		checkServed(t, req, err)
		if err != nil {
			return
		}
		if sel.limit < 1 || sel.limit > MaxReplayIDs {
			t.Fatalf("accepted replay selects up to %d notifications", sel.limit)
		}
		if deadLetters != (sel.deadLetters != nil) || (!deadLetters && len(sel.ids) != 2) {
			t.Fatalf("accepted replay selects the wrong thing: %+v", sel)
		}
		if sel.ids != nil && sel.ids[0] == sel.ids[1] {
			t.Fatalf("accepted a replay naming one notification twice: %v", sel.ids)
		}
	})
}

// FuzzDecodeRequest feeds the server's codec raw wire bytes of a PublishRequest. Whatever
// decodes goes on to the text check: invalid UTF-8 the codec marks must be refused there
// with INVALID_ARGUMENT, never reach a handler.
func FuzzDecodeRequest(f *testing.F) {
	valid, _ := proto.Marshal(&notifyv1.PublishRequest{Type: "t", Content: &notifyv1.Content{Title: "hi"}, Data: map[string]string{"k": "v"}})
	f.Add(valid)
	title := protowire.AppendTag(nil, 4, protowire.BytesType)
	title = protowire.AppendBytes(title, protowire.AppendBytes(protowire.AppendTag(nil, 1, protowire.BytesType), []byte("bad\xff\xfe")))
	f.Add(title)
	entry := protowire.AppendBytes(protowire.AppendTag(nil, 1, protowire.BytesType), []byte("\xc3"))
	entry = protowire.AppendBytes(protowire.AppendTag(entry, 2, protowire.BytesType), []byte("v"))
	f.Add(protowire.AppendBytes(protowire.AppendTag(nil, 5, protowire.BytesType), entry))
	f.Add([]byte{0x12, 0x02, 0xff, 0x00})
	f.Add([]byte{0x12, 0xff})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	codec := textCodec{encoding.GetCodecV2("proto")}
	f.Fuzz(func(t *testing.T, wire []byte) {
		var req notifyv1.PublishRequest
		if err := codec.Unmarshal(mem.BufferSlice{mem.SliceBuffer(wire)}, &req); err != nil {
			// Malformed protobuf, not text: grpc-go refuses it before any of our code runs.
			return
		}
		marked := proto.Unmarshal(wire, &notifyv1.PublishRequest{}) != nil
		err := serve(&req, func() violations { return validatePublish(&req) })
		checkServed(t, &req, err)
		if marked && err == nil {
			t.Fatalf("a request with invalid UTF-8 was accepted: %q", wire)
		}
	})
}
