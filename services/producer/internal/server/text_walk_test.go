package server

import (
	"strings"
	"testing"

	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	_ "notify/proto/gen/notify/v1" // registers the API's messages
)

// TestGoodMessageSeesEveryStringField: for every message of the API (notify.v1) and every
// string it can hold, at any depth (nested messages, list items, map keys and values,
// oneof members), a NUL there makes goodMessage (the walk that runs on every request) say
// no, and the naming walk name it. Fields added later are covered without a test edit.
func TestGoodMessageSeesEveryStringField(t *testing.T) {
	t.Parallel()
	checked := 0
	protoregistry.GlobalTypes.RangeMessages(func(mt protoreflect.MessageType) bool {
		if !strings.HasPrefix(string(mt.Descriptor().FullName()), "notify.v1.") {
			return true
		}
		for _, p := range textPaths(mt.Descriptor(), nil, 0) {
			m := mt.New()
			p.set(m, "a\x00b")
			name := string(mt.Descriptor().Name()) + "." + p.name
			if goodMessage(m) {
				t.Errorf("%s: goodMessage accepted a NUL", name)
			}
			var v violations
			nameBadText(&v, "", m)
			if len(v) != 1 {
				t.Errorf("%s: named %d violations, want 1: %v", name, len(v), v)
			}
			clean := mt.New()
			p.set(clean, "ok")
			if !goodMessage(clean) {
				t.Errorf("%s: goodMessage refused clean text", name)
			}
			checked++
		}
		return true
	})
	t.Logf("%d string fields checked", checked)
	if checked < 50 {
		t.Errorf("checked %d string fields; the walk over the API's messages found too few", checked)
	}
}

// textPath is one place a string can be, with how to put one there.
type textPath struct {
	name string
	set  func(m protoreflect.Message, s string)
}

// textPaths lists where md can hold a string, descending into messages up to depth 4 and
// not into a message type already on the way (recursive types).
func textPaths(md protoreflect.MessageDescriptor, seen []protoreflect.FullName, depth int) []textPath {
	for _, s := range seen {
		if s == md.FullName() {
			return nil
		}
	}
	if depth > 4 {
		return nil
	}
	seen = append(seen, md.FullName())
	var out []textPath
	fields := md.Fields()
	for i := range fields.Len() {
		fd := fields.Get(i)
		name := string(fd.Name())
		switch {
		case fd.IsMap():
			if fd.MapKey().Kind() == protoreflect.StringKind {
				out = append(out, textPath{name + "{key}", func(m protoreflect.Message, s string) {
					mp := m.Mutable(fd).Map()
					mp.Set(protoreflect.ValueOfString(s).MapKey(), mp.NewValue())
				}})
			}
			switch fd.MapValue().Kind() {
			case protoreflect.StringKind:
				out = append(out, textPath{name + "[k]", func(m protoreflect.Message, s string) {
					m.Mutable(fd).Map().Set(protoreflect.ValueOfString("k").MapKey(), protoreflect.ValueOfString(s))
				}})
			case protoreflect.MessageKind:
				for _, p := range textPaths(fd.MapValue().Message(), seen, depth+1) {
					out = append(out, textPath{name + "[k]." + p.name, func(m protoreflect.Message, s string) {
						mp := m.Mutable(fd).Map()
						v := mp.NewValue()
						p.set(v.Message(), s)
						mp.Set(protoreflect.ValueOfString("k").MapKey(), v)
					}})
				}
			}
		case fd.IsList():
			switch fd.Kind() {
			case protoreflect.StringKind:
				out = append(out, textPath{name + "[1]", func(m protoreflect.Message, s string) {
					l := m.Mutable(fd).List()
					l.Append(protoreflect.ValueOfString("ok"))
					l.Append(protoreflect.ValueOfString(s))
				}})
			case protoreflect.MessageKind:
				for _, p := range textPaths(fd.Message(), seen, depth+1) {
					out = append(out, textPath{name + "[1]." + p.name, func(m protoreflect.Message, s string) {
						l := m.Mutable(fd).List()
						l.Append(l.NewElement())
						e := l.NewElement()
						p.set(e.Message(), s)
						l.Append(e)
					}})
				}
			}
		case fd.Kind() == protoreflect.StringKind:
			out = append(out, textPath{name, func(m protoreflect.Message, s string) { m.Set(fd, protoreflect.ValueOfString(s)) }})
		case fd.Kind() == protoreflect.MessageKind:
			for _, p := range textPaths(fd.Message(), seen, depth+1) {
				out = append(out, textPath{name + "." + p.name, func(m protoreflect.Message, s string) { p.set(m.Mutable(fd).Message(), s) }})
			}
		}
	}
	return out
}
