package buildinfo

import (
	"runtime"
	"testing"
)

func TestInfoString(t *testing.T) {
	t.Parallel()
	tests := []struct {
		info Info
		want string
	}{
		{
			Info{Version: "(devel)", GoVersion: "go1.26.0", Platform: "linux/amd64"},
			"(devel) go1.26.0 linux/amd64",
		},
		{
			Info{Version: "v1.2.3", Commit: "0123456789abcdef0123", Time: "2026-11-30T02:00:00Z", Modified: true, GoVersion: "go1.26.0", Platform: "linux/arm64"},
			"v1.2.3 commit 0123456789ab (2026-11-30T02:00:00Z) modified go1.26.0 linux/arm64",
		},
	}
	for _, tt := range tests {
		if got := tt.info.String(); got != tt.want {
			t.Errorf("String() = %q, want %q", got, tt.want)
		}
	}
}

func TestReadPrefersLinkerFlags(t *testing.T) {
	// Not parallel: it sets the package variables -ldflags -X would set.
	version, commit = "v9.9.9", "feedface"
	defer func() { version, commit = "", "" }()
	i := Read()
	if i.Version != "v9.9.9" || i.Commit != "feedface" || i.GoVersion != runtime.Version() {
		t.Errorf("Read() = %+v", i)
	}
}
