package delivery

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestSettlerPacesConsecutiveFailures(t *testing.T) {
	t.Parallel()
	s := &Settler{MaxPause: 2 * time.Second}
	var got []time.Duration
	for range 6 {
		got = append(got, s.failed())
	}
	want := []time.Duration{250 * time.Millisecond, 500 * time.Millisecond, time.Second, 2 * time.Second, 2 * time.Second, 2 * time.Second}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("pauses (-want +got):\n%s", diff)
	}
	s.succeeded()
	if p := s.failed(); p != 250*time.Millisecond {
		t.Errorf("pause after a success = %s, want the first pause again", p)
	}
}
