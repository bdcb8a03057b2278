package deadletter

import (
	"context"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"notify/pkg/pgtest"
)

// TestSaveBare stores what the database refuses as a bare row instead of failing forever.
// Classify cleans every text it produces; this feeds Save directly.
func TestSaveBare(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	s := NewStore(db.Pool)
	l := Letter{Key: "k1", Reason: "permanent_error", ErrorMessage: "nul\x00byte", Tokens: []string{"t"}, Message: []byte{0}}
	for range 2 {
		if _, err := s.Save(context.Background(), l); err != nil {
			t.Fatalf("Save: %v", err)
		}
	}
	got := readRows(t, db.Pool)
	if len(got) != 1 {
		t.Fatalf("got %d rows, want 1", len(got))
	}
	if !strings.HasPrefix(got[0].ErrorMessage, "stored bare, the database refused the letter: ") {
		t.Errorf("error message = %q, want the database's complaint", got[0].ErrorMessage)
	}
	got[0].ErrorMessage = ""
	want := storedRow{MessageID: "k1", Reason: "permanent_error", Tokens: []string{}, Message: []byte{0}}
	if diff := cmp.Diff(want, got[0]); diff != "" {
		t.Errorf("row mismatch (-want +got):\n%s", diff)
	}
}
