package schema

import (
	"bytes"
	"testing"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgtype"
)

// TestUUIDsEncodeAlike: PostgreSQL receives the same uuid[] from UUIDs(ids) as from ids.
func TestUUIDsEncodeAlike(t *testing.T) {
	t.Parallel()
	m := pgtype.NewMap()
	ids := []uuid.UUID{uuid.New(), uuid.Nil, uuid.New()}
	for _, format := range []int16{pgtype.BinaryFormatCode, pgtype.TextFormatCode} {
		want, err := m.Encode(pgtype.UUIDArrayOID, format, ids, nil)
		if err != nil {
			t.Fatal(err)
		}
		got, err := m.Encode(pgtype.UUIDArrayOID, format, UUIDs(ids), nil)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("format %d: UUIDs encodes as %x, []uuid.UUID as %x", format, got, want)
		}
	}
	if got, err := m.Encode(pgtype.UUIDArrayOID, pgtype.BinaryFormatCode, UUIDs(nil), nil); err != nil || got == nil {
		t.Errorf("UUIDs(nil) encodes as %x, %v; want an empty array", got, err)
	}
}

// BenchmarkUUIDArray encodes a 500-id uuid[] argument (one chunk's outcomes) as pgx does
// for a query in binary: as []uuid.UUID and as UUIDs makes it.
func BenchmarkUUIDArray(b *testing.B) {
	m := pgtype.NewMap()
	ids := make([]uuid.UUID, 500)
	for i := range ids {
		ids[i] = uuid.New()
	}
	for _, tc := range []struct {
		name string
		arg  func() any
	}{
		{"uuid.UUID", func() any { return ids }},
		{"UUIDs", func() any { return UUIDs(ids) }},
	} {
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			var buf []byte
			for b.Loop() {
				var err error
				if buf, err = m.Encode(pgtype.UUIDArrayOID, pgtype.BinaryFormatCode, tc.arg(), buf[:0]); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
