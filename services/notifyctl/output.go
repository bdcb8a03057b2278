package main

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math"
	"strings"
	"text/tabwriter"
	"time"

	"go.yaml.in/yaml/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// emit prints a response: with -o json or yaml as its tree (see messageTree), otherwise
// by table, the command's human form.
func (c *cli) emit(m proto.Message, table func() error) error {
	if c.output == formatTable {
		return table()
	}
	return c.printTree(messageTree(m.ProtoReflect()))
}

// printTree writes a tree of maps, slices and scalars as JSON or YAML.
func (c *cli) printTree(tree any) error {
	if c.output == formatYAML {
		enc := yaml.NewEncoder(c.out)
		enc.SetIndent(2)
		if err := enc.Encode(tree); err != nil {
			return err
		}
		return enc.Close()
	}
	enc := json.NewEncoder(c.out)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	return enc.Encode(tree)
}

// table starts a table with its header line, unless --no-headers.
func (c *cli) table(header ...string) *tabwriter.Writer {
	tw := tabwriter.NewWriter(c.out, 0, 4, 2, ' ', 0)
	if !c.noHeaders {
		fmt.Fprintln(tw, strings.Join(header, "\t"))
	}
	return tw
}

// summary writes a line that is not part of a table: on stdout after it, or on stderr
// with --no-headers so that stdout holds only the rows.
func (c *cli) summary(format string, args ...any) {
	w := c.out
	if c.noHeaders {
		w = c.errOut
	}
	fmt.Fprintf(w, format, args...)
}

// stamp is a time for tables: RFC 3339 in the local zone, with the zone.
func stamp(ts *timestamppb.Timestamp) string {
	if ts == nil {
		return "-"
	}
	return ts.AsTime().Local().Format(time.RFC3339)
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// messageTree is m as protojson writes it (JSON field names, enum names, well-known types
// in their JSON form: timestamps RFC 3339 in UTC), with two differences for scripts:
// 64-bit integers are numbers, not strings (protojson quotes them for JavaScript's sake;
// jq and every other reader want numbers), and plain fields are written even when zero,
// so that a count of 0 reads 0 rather than missing. Fields with presence (messages,
// oneofs, optional) are written only when set.
func messageTree(m protoreflect.Message) any {
	if strings.HasPrefix(string(m.Descriptor().FullName()), "google.protobuf.") {
		b, err := protojson.Marshal(m.Interface())
		var v any
		if err != nil || json.Unmarshal(b, &v) != nil {
			return nil
		}
		return v
	}
	obj := map[string]any{}
	fields := m.Descriptor().Fields()
	for i := range fields.Len() {
		fd := fields.Get(i)
		if fd.HasPresence() && !m.Has(fd) {
			continue
		}
		v := m.Get(fd)
		switch {
		case fd.IsList():
			l := v.List()
			items := make([]any, l.Len())
			for j := range items {
				items[j] = scalarTree(fd, l.Get(j))
			}
			obj[fd.JSONName()] = items
		case fd.IsMap():
			entries := map[string]any{}
			v.Map().Range(func(k protoreflect.MapKey, mv protoreflect.Value) bool {
				entries[k.String()] = scalarTree(fd.MapValue(), mv)
				return true
			})
			obj[fd.JSONName()] = entries
		default:
			obj[fd.JSONName()] = scalarTree(fd, v)
		}
	}
	return obj
}

// scalarTree is one value of field fd (a list element, a map value or a singular field).
func scalarTree(fd protoreflect.FieldDescriptor, v protoreflect.Value) any {
	switch fd.Kind() {
	case protoreflect.MessageKind, protoreflect.GroupKind:
		return messageTree(v.Message())
	case protoreflect.EnumKind:
		if ev := fd.Enum().Values().ByNumber(v.Enum()); ev != nil {
			return string(ev.Name())
		}
		return int32(v.Enum())
	case protoreflect.Int32Kind, protoreflect.Sint32Kind, protoreflect.Sfixed32Kind,
		protoreflect.Int64Kind, protoreflect.Sint64Kind, protoreflect.Sfixed64Kind:
		return v.Int()
	case protoreflect.Uint32Kind, protoreflect.Fixed32Kind, protoreflect.Uint64Kind, protoreflect.Fixed64Kind:
		return v.Uint()
	case protoreflect.FloatKind, protoreflect.DoubleKind:
		// JSON has no NaN or infinities; protojson writes them as strings too.
		if f := v.Float(); math.IsNaN(f) || math.IsInf(f, 0) {
			return fmt.Sprint(f)
		}
		return v.Float()
	case protoreflect.BytesKind:
		return base64.StdEncoding.EncodeToString(v.Bytes())
	}
	return v.Interface() // bool, string
}

// emitFound prints m (as text: done, when found) and, when nothing was found, ends with
// exit code 3 saying missing: the shape of the commands that act on one named thing.
func (c *cli) emitFound(m proto.Message, found bool, done, missing string) error {
	if err := c.emit(m, func() error {
		if found {
			fmt.Fprintln(c.out, done)
		}
		return nil
	}); err != nil {
		return err
	}
	if !found {
		return notFoundError{missing}
	}
	return nil
}
