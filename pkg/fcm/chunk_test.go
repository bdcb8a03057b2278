package fcm

import (
	"fmt"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

func tokens(prefix string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%s%04d", prefix, i)
	}
	return out
}

func TestChunk(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		tokens int
		size   int
		want   []int // chunk lengths
	}{
		{"none", 0, MaxMulticast, nil},
		{"one", 1, MaxMulticast, []int{1}},
		{"499", 499, MaxMulticast, []int{499}},
		{"500", 500, MaxMulticast, []int{500}},
		{"501", 501, MaxMulticast, []int{500, 1}},
		{"1201", 1201, MaxMulticast, []int{500, 500, 201}},
		{"size above max is clamped", 1201, 1000, []int{500, 500, 201}},
		{"size 0 is clamped to 1", 3, 0, []int{1, 1, 1}},
		{"negative size is clamped to 1", 2, -5, []int{1, 1}},
		{"small size", 7, 3, []int{3, 3, 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			in := tokens("t", tt.tokens)
			chunks := Chunk(in, tt.size)

			var lens []int
			var joined []string
			for _, c := range chunks {
				lens = append(lens, len(c))
				joined = append(joined, c...)
			}
			if diff := cmp.Diff(tt.want, lens); diff != "" {
				t.Errorf("chunk sizes (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(in, joined, cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("chunks joined differ from input (-want +got):\n%s", diff)
			}
			// No copying: each chunk is a window on the input, and full (cap == len), so
			// appending to it cannot clobber the next chunk.
			off := 0
			for i, c := range chunks {
				if &c[0] != &in[off] {
					t.Errorf("chunk %d does not share the input's backing array", i)
				}
				if cap(c) != len(c) {
					t.Errorf("chunk %d: cap %d, len %d; want cap == len", i, cap(c), len(c))
				}
				off += len(c)
			}
		})
	}
}
