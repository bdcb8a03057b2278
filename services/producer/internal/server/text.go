package server

import (
	"bytes"
	"context"
	"strconv"
	"strings"
	"sync"
	"unicode/utf8"

	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	notifyv1 "notify/proto/gen/notify/v1"
)

// Text PostgreSQL cannot store is refused, never stored in some altered form: a text or
// jsonb value cannot hold U+0000, and a client that sent bytes that are not UTF-8 meant
// something we cannot know. Every string field of every request is checked, by the
// server itself, before any handler runs, so a new field or RPC is covered without
// anyone remembering to.
const textRule = "must be UTF-8 text without U+0000 (NUL)"

// TextOptions are the gRPC server options that refuse such text with INVALID_ARGUMENT
// naming every field concerned: a codec that lets requests with invalid UTF-8 reach the
// check (grpc-go would answer INTERNAL before any handler ran), and the check itself.
func TextOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.ForceServerCodecV2(textCodec{encoding.GetCodecV2("proto")}),
		grpc.ChainUnaryInterceptor(checkText),
		grpc.ChainStreamInterceptor(checkTextStream),
	}
}

func checkText(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if _, ok := req.(*notifyv1.PublishBatchRequest); ok {
		return handler(ctx, req) // PublishBatch checks each request itself: one bad item refuses only itself
	}
	if m, ok := req.(proto.Message); ok && !goodMessage(m.ProtoReflect()) {
		var v violations
		nameBadText(&v, "", m.ProtoReflect())
		if len(v) > 0 {
			return nil, invalidArgument(v)
		}
	}
	return handler(ctx, req)
}

// checkTextStream checks every message a stream receives (health Watch, reflection).
func checkTextStream(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	return handler(srv, textStream{ss})
}

type textStream struct{ grpc.ServerStream }

func (s textStream) RecvMsg(m any) error {
	if err := s.ServerStream.RecvMsg(m); err != nil {
		return err
	}
	if pm, ok := m.(proto.Message); ok && !goodMessage(pm.ProtoReflect()) {
		var v violations
		nameBadText(&v, "", pm.ProtoReflect())
		if len(v) > 0 {
			return invalidArgument(v)
		}
	}
	return nil
}

// badText adds a violation for every string in m, at any depth, that breaks textRule.
// Fields are named as the other validations name them: proto names joined by dots, list
// items [i], map values [key].
//
// Nearly every request is clean, so badText first checks m with goodMessage, which walks
// only the fields that can hold text and names nothing; only a request it finds wrong is
// walked again to name the fields.
func badText(v *violations, prefix string, m protoreflect.Message) {
	if goodMessage(m) {
		return
	}
	nameBadText(v, prefix, m)
}

// nameBadText is badText's walk that names what it finds.
func nameBadText(v *violations, prefix string, m protoreflect.Message) {
	m.Range(func(fd protoreflect.FieldDescriptor, val protoreflect.Value) bool {
		name := prefix + string(fd.Name())
		switch {
		case fd.IsMap():
			val.Map().Range(func(k protoreflect.MapKey, mv protoreflect.Value) bool {
				key := k.String()
				if fd.MapKey().Kind() == protoreflect.StringKind && !goodText(key) {
					v.add(name, "key %s %s", strconv.QuoteToASCII(key), textRule)
					return true
				}
				badValue(v, name+"["+key+"]", fd.MapValue(), mv)
				return true
			})
		case fd.IsList():
			l := val.List()
			for i := range l.Len() {
				badValue(v, name+"["+strconv.Itoa(i)+"]", fd, l.Get(i))
			}
		default:
			badValue(v, name, fd, val)
		}
		return true
	})
}

func badValue(v *violations, name string, fd protoreflect.FieldDescriptor, val protoreflect.Value) {
	switch fd.Kind() {
	case protoreflect.StringKind:
		if !goodText(val.String()) {
			v.add(name, textRule)
		}
	case protoreflect.MessageKind, protoreflect.GroupKind:
		nameBadText(v, name+".", val.Message())
	}
}

func goodText(s string) bool { return strings.IndexByte(s, 0) < 0 && utf8.ValidString(s) }

// goodMessage reports whether every string in m, at any depth (map keys and values, list
// items, nested messages), keeps textRule. It visits only the fields of m's type that can
// hold text, from a list made once per message type (textFields), and allocates nothing
// but for map fields.
func goodMessage(m protoreflect.Message) bool {
	for _, f := range textFieldsOf(m.Descriptor()) {
		if !m.Has(f.fd) {
			continue
		}
		val := m.Get(f.fd)
		switch f.shape {
		case textScalar:
			if !goodValue(f.kind, val) {
				return false
			}
		case textList:
			l := val.List()
			for i := range l.Len() {
				if !goodValue(f.kind, l.Get(i)) {
					return false
				}
			}
		case textMap:
			good := true
			keyIsText, valueKind := f.fd.MapKey().Kind() == protoreflect.StringKind, f.kind
			val.Map().Range(func(k protoreflect.MapKey, mv protoreflect.Value) bool {
				good = (!keyIsText || goodText(k.String())) && goodValue(valueKind, mv)
				return good
			})
			if !good {
				return false
			}
		}
	}
	return true
}

// goodValue checks one string or message value (of kind) by textRule.
func goodValue(kind protoreflect.Kind, val protoreflect.Value) bool {
	if kind == protoreflect.StringKind {
		return goodText(val.String())
	}
	if kind == protoreflect.MessageKind || kind == protoreflect.GroupKind {
		return goodMessage(val.Message())
	}
	return true
}

// textField is a field that can hold text: a string or a message, alone, in a list, or as
// a map's value (a map with string keys counts whatever its values).
type textField struct {
	fd    protoreflect.FieldDescriptor
	shape int               // textScalar, textList or textMap
	kind  protoreflect.Kind // of the value (a map's: of its values)
}

const (
	textScalar = iota
	textList
	textMap
)

// textFields holds the []textField of each message type met, by descriptor.
var textFields sync.Map

func textFieldsOf(md protoreflect.MessageDescriptor) []textField {
	if fs, ok := textFields.Load(md); ok {
		return fs.([]textField)
	}
	var fs []textField
	fields := md.Fields()
	for i := range fields.Len() {
		fd := fields.Get(i)
		f := textField{fd: fd, shape: textScalar, kind: fd.Kind()}
		switch {
		case fd.IsMap():
			f.shape, f.kind = textMap, fd.MapValue().Kind()
			if fd.MapKey().Kind() == protoreflect.StringKind {
				fs = append(fs, f)
				continue
			}
		case fd.IsList():
			f.shape = textList
		}
		switch f.kind {
		case protoreflect.StringKind, protoreflect.MessageKind, protoreflect.GroupKind:
			fs = append(fs, f)
		}
	}
	textFields.Store(md, fs)
	return fs
}

// textCodec is grpc-go's protobuf codec, except for a request whose string fields are
// not valid UTF-8: protobuf refuses to decode it and grpc-go answers INTERNAL before any
// handler runs. textCodec decodes such a request again with every invalid byte sequence
// replaced by U+0000, which checkText then refuses as INVALID_ARGUMENT naming the field.
// Valid requests take the ordinary path, untouched.
type textCodec struct{ encoding.CodecV2 }

func (c textCodec) Unmarshal(data mem.BufferSlice, v any) error {
	err := c.CodecV2.Unmarshal(data, v)
	m, ok := v.(proto.Message)
	if err == nil || !ok {
		return err
	}
	marked, changed := markInvalidUTF8(data.Materialize(), m.ProtoReflect().Descriptor())
	if !changed {
		return err
	}
	return proto.Unmarshal(marked, m)
}

// markInvalidUTF8 returns the wire-format message b with the invalid UTF-8 in its string
// fields, at any depth, replaced by U+0000, and whether it replaced anything. Malformed
// input is left alone: protobuf's own error describes it.
func markInvalidUTF8(b []byte, md protoreflect.MessageDescriptor) ([]byte, bool) {
	out := make([]byte, 0, len(b))
	changed := false
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return nil, false
		}
		if typ != protowire.BytesType {
			m := protowire.ConsumeFieldValue(num, typ, b[n:])
			if m < 0 {
				return nil, false
			}
			out, b = append(out, b[:n+m]...), b[n+m:]
			continue
		}
		val, m := protowire.ConsumeBytes(b[n:])
		if m < 0 {
			return nil, false
		}
		b = b[n+m:]
		switch fd := md.Fields().ByNumber(num); {
		case fd == nil:
		case fd.Kind() == protoreflect.StringKind && !utf8.Valid(val):
			val, changed = bytes.ToValidUTF8(val, []byte{0}), true
		case fd.Kind() == protoreflect.MessageKind:
			if inner, ok := markInvalidUTF8(val, fd.Message()); ok {
				val, changed = inner, true
			}
		}
		out = protowire.AppendTag(out, num, typ)
		out = protowire.AppendBytes(out, val)
	}
	return out, changed
}
