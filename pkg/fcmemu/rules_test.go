package fcmemu

import "testing"

func TestTokenRule(t *testing.T) {
	t.Parallel()
	tests := []struct {
		token string
		// want is the code for requests 1, 2, 3 and 4.
		want [4]ErrorCode
	}{
		{"device-1", [4]ErrorCode{}},
		{"unregistered-1", [4]ErrorCode{Unregistered, Unregistered, Unregistered, Unregistered}},
		{"invalid-1", [4]ErrorCode{InvalidArgument, InvalidArgument, InvalidArgument, InvalidArgument}},
		{"mismatch-1", [4]ErrorCode{SenderIDMismatch, SenderIDMismatch, SenderIDMismatch, SenderIDMismatch}},
		{"unavailable-1", [4]ErrorCode{Unavailable, Unavailable, Unavailable, Unavailable}},
		{"internal-1", [4]ErrorCode{Internal, Internal, Internal, Internal}},
		{"quota-1", [4]ErrorCode{QuotaExceeded, QuotaExceeded, QuotaExceeded, QuotaExceeded}},
		{"autherr-1", [4]ErrorCode{ThirdPartyAuthError, ThirdPartyAuthError, ThirdPartyAuthError, ThirdPartyAuthError}},
		{"flaky3-a", [4]ErrorCode{Internal, Internal, Internal, ""}},
		{"flaky0-a", [4]ErrorCode{}},
		{"flaky1-", [4]ErrorCode{Internal}},
		{"flaky503x2-a", [4]ErrorCode{Unavailable, Unavailable}},
		{"flaky500x1-a", [4]ErrorCode{Internal}},
		{"flaky429x3-a", [4]ErrorCode{QuotaExceeded, QuotaExceeded, QuotaExceeded}},
		{"flaky404x3-a", [4]ErrorCode{}}, // unsupported status: an ordinary token
		{"flaky503x-a", [4]ErrorCode{}},
		{"flaky3a", [4]ErrorCode{}},
		{"flaky-3-a", [4]ErrorCode{}},
		{"Unregistered-1", [4]ErrorCode{}}, // prefixes are case-sensitive
		{"xunregistered-1", [4]ErrorCode{}},
	}
	for _, tc := range tests {
		t.Run(tc.token, func(t *testing.T) {
			t.Parallel()
			var got [4]ErrorCode
			for i := range got {
				got[i] = tokenRule(tc.token, int64(i+1))
			}
			if got != tc.want {
				t.Errorf("tokenRule(%q, 1..4) = %q, want %q", tc.token, got, tc.want)
			}
		})
	}
}

func TestParseTTL(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in     string
		want   int64
		wantOK bool
	}{
		{"0s", 0, true},
		{"3600s", 3600, true},
		{"1.500000000s", 1, true},
		{"1.5s", 1, true},
		{"3600", 0, false},
		{"1.s", 0, false},
		{".5s", 0, false},
		{"-1s", 0, false},
		{"1.0000000001s", 0, false},
		{"1h", 0, false},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			t.Parallel()
			got, ok := parseTTL(tc.in)
			if got != tc.want || ok != tc.wantOK {
				t.Errorf("parseTTL(%q) = %d, %v; want %d, %v", tc.in, got, ok, tc.want, tc.wantOK)
			}
		})
	}
}
