package fcmemu

import (
	"strconv"
	"strings"
)

// prefixRules map a token prefix to the error every request for such a token gets.
var prefixRules = []struct {
	prefix string
	code   ErrorCode
}{
	{"unregistered-", Unregistered},
	{"invalid-", InvalidArgument},
	{"mismatch-", SenderIDMismatch},
	{"unavailable-", Unavailable},
	{"internal-", Internal},
	{"quota-", QuotaExceeded},
	{"autherr-", ThirdPartyAuthError},
}

// tokenRule returns the error injected for token on its nth request (n starts at 1) that
// reached the token rules, or "" to deliver it. Rules:
//
//	<prefix>-…      always the prefix's error (see prefixRules)
//	flakyN-…        INTERNAL for the first N requests, then delivered
//	flakySxN-…      same with the error for HTTP status S: 429, 500 or 503
func tokenRule(token string, n int64) ErrorCode {
	for _, r := range prefixRules {
		if strings.HasPrefix(token, r.prefix) {
			return r.code
		}
	}
	if code, times, ok := parseFlaky(token); ok && n <= times {
		return code
	}
	return ""
}

// parseFlaky parses "flakyN-…" and "flakySxN-…".
func parseFlaky(token string) (ErrorCode, int64, bool) {
	rest, ok := strings.CutPrefix(token, "flaky")
	if !ok {
		return "", 0, false
	}
	first, rest := leadingNumber(rest)
	if first < 0 {
		return "", 0, false
	}
	if strings.HasPrefix(rest, "-") {
		return Internal, first, true
	}
	rest, ok = strings.CutPrefix(rest, "x")
	if !ok {
		return "", 0, false
	}
	times, rest := leadingNumber(rest)
	if times < 0 || !strings.HasPrefix(rest, "-") {
		return "", 0, false
	}
	switch first {
	case 429:
		return QuotaExceeded, times, true
	case 500:
		return Internal, times, true
	case 503:
		return Unavailable, times, true
	}
	return "", 0, false
}

// leadingNumber splits the decimal number at the start of s from the rest; -1 if there is none.
func leadingNumber(s string) (int64, string) {
	i := 0
	for i < len(s) && i < 9 && s[i] >= '0' && s[i] <= '9' {
		i++
	}
	if i == 0 {
		return -1, s
	}
	n, err := strconv.ParseInt(s[:i], 10, 64)
	if err != nil {
		return -1, s
	}
	return n, s[i:]
}
