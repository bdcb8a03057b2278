package fcm

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"firebase.google.com/go/v4/errorutils"
	"firebase.google.com/go/v4/messaging"
)

// The kinds of failure. Every error SendMulticast returns, per token or for the call, is a
// *SendError that matches exactly one of them with errors.Is; the kind decides what the
// caller does next.
var (
	// ErrTokenGone: the token is dead (UNREGISTERED, SENDER_ID_MISMATCH, INVALID_ARGUMENT
	// about the token). Deactivate it; never retry.
	ErrTokenGone = errors.New("fcm: token gone")
	// ErrTransient: nothing was delivered but a later attempt may succeed (QUOTA_EXCEEDED,
	// UNAVAILABLE, INTERNAL, timeouts, network errors, a cancelled call). Retry later,
	// honouring SendError.RetryAfter when it is set.
	ErrTransient = errors.New("fcm: transient failure")
	// ErrPermanent: retrying the same request will not help (THIRD_PARTY_AUTH_ERROR, an
	// invalid payload, bad credentials, anything unrecognised). Dead-letter it with the reason.
	ErrPermanent = errors.New("fcm: permanent failure")
)

// Codes of our own, for failures FCM did not name. The others are FCM's own error codes
// ("UNREGISTERED", "QUOTA_EXCEEDED", …) or, for an HTTP answer without one, its
// google.rpc status ("UNAUTHENTICATED", "PERMISSION_DENIED", …) or "HTTP_<status>".
const (
	codeOK             = "OK"              // Code(nil)
	codeTimeout        = "TIMEOUT"         // a request or the call's context timed out
	codeCanceled       = "CANCELED"        // the call's context was cancelled
	codeNetwork        = "NETWORK"         // no HTTP answer: reset, EOF, DNS, TLS…
	codeUnavailable    = "UNAVAILABLE"     // also used when the connection was refused
	codeInvalidRequest = "INVALID_REQUEST" // SendMulticast was given 0 or more than 500 tokens
	codeInvalidMessage = "INVALID_MESSAGE" // the SDK refused the message before sending it
	codeUnknown        = "UNKNOWN"         // none of the above
)

// SendError is a classified FCM failure: what FCM (or the network) said, what it means for
// the caller, and the SDK's error as it was returned.
//
// errors.Is(err, ErrTransient) (or ErrTokenGone, ErrPermanent) tests the kind; errors.As
// gives the code and RetryAfter; Unwrap yields the SDK error. Build it from an SDK error
// only in this package: the SDK's own helpers no longer recognise an error once wrapped.
type SendError struct {
	// Code names the failure for logs and metric labels, e.g. "UNREGISTERED",
	// "QUOTA_EXCEEDED", "UNAVAILABLE", "INTERNAL", "TIMEOUT".
	Code string
	// RetryAfter is FCM's Retry-After (seconds or HTTP date); 0 when FCM sent none.
	RetryAfter time.Duration
	// Kind is ErrTokenGone, ErrTransient or ErrPermanent.
	Kind error
	// Err is the underlying error, as the SDK returned it.
	Err error

	// noAnswer is set when the request got no HTTP answer at all (network, timeout,
	// cancelled): if that holds for every token, the call as a whole failed.
	noAnswer bool
}

func (e *SendError) Error() string {
	if e.Err == nil {
		return "fcm " + e.Code
	}
	return "fcm " + e.Code + ": " + e.Err.Error()
}

// Unwrap returns the SDK's error.
func (e *SendError) Unwrap() error { return e.Err }

// Is reports whether target is e's kind.
func (e *SendError) Is(target error) bool { return target != nil && target == e.Kind }

// Code returns the code of err for metric labels and logs: "OK" for nil, the SendError's
// Code, or "UNKNOWN" for an error that is not (or does not wrap) a *SendError.
func Code(err error) string {
	if err == nil {
		return codeOK
	}
	if se, ok := errors.AsType[*SendError](err); ok {
		return se.Code
	}
	return codeUnknown
}

// classify translates an error the SDK returned for one send into a *SendError. It must see
// the SDK's error unwrapped: messaging.Is* and errorutils.* use plain type assertions. now
// resolves a Retry-After given as an HTTP date.
func classify(err error, now time.Time) *SendError {
	if err == nil {
		return nil
	}
	if se, ok := errors.AsType[*SendError](err); ok {
		return se
	}
	e := &SendError{Err: err}
	resp := errorutils.HTTPResponse(err) // nil unless FCM answered over HTTP
	switch {
	case messaging.IsUnregistered(err):
		e.Code, e.Kind = "UNREGISTERED", ErrTokenGone
	case messaging.IsSenderIDMismatch(err):
		e.Code, e.Kind = "SENDER_ID_MISMATCH", ErrTokenGone
	case messaging.IsInvalidArgument(err):
		e.Code, e.Kind = "INVALID_ARGUMENT", ErrPermanent
		if aboutToken(err, readStatus(resp)) {
			e.Kind = ErrTokenGone
		}
	case messaging.IsQuotaExceeded(err):
		e.Code, e.Kind = "QUOTA_EXCEEDED", ErrTransient
	case messaging.IsUnavailable(err):
		e.Code, e.Kind = "UNAVAILABLE", ErrTransient
	case messaging.IsInternal(err):
		e.Code, e.Kind = "INTERNAL", ErrTransient
	case messaging.IsThirdPartyAuthError(err):
		e.Code, e.Kind = "THIRD_PARTY_AUTH_ERROR", ErrPermanent
	case resp != nil:
		// An HTTP answer without an FCM code we know: a proxy's 502, a 401 for our own
		// credentials, an FCM code newer than this package. The status decides.
		e.Code, e.Kind = answerCode(readStatus(resp), resp.StatusCode)
	// The SDK turns a failed round trip (after its own retries) into an error with no
	// response whose platform code says what happened.
	case errorutils.IsDeadlineExceeded(err):
		e.Code, e.Kind, e.noAnswer = codeTimeout, ErrTransient, true
	case errorutils.IsUnavailable(err): // connection refused
		e.Code, e.Kind, e.noAnswer = codeUnavailable, ErrTransient, true
	case errorutils.IsUnknown(err):
		e.Code, e.Kind, e.noAnswer = codeNetwork, ErrTransient, true
	// The SDK returns ctx.Err() as is when the context ends while it waits to retry.
	case errors.Is(err, context.DeadlineExceeded):
		e.Code, e.Kind, e.noAnswer = codeTimeout, ErrTransient, true
	case errors.Is(err, context.Canceled):
		e.Code, e.Kind, e.noAnswer = codeCanceled, ErrTransient, true
	default:
		if ne, ok := errors.AsType[net.Error](err); ok {
			e.Code, e.Kind, e.noAnswer = codeNetwork, ErrTransient, true
			if ne.Timeout() {
				e.Code = codeTimeout
			}
			break
		}
		// E.g. a 200 whose body did not parse: the message may have gone out, so a retry
		// could deliver it twice. Let a human look.
		e.Code, e.Kind = codeUnknown, ErrPermanent
	}
	if resp != nil {
		e.RetryAfter = retryAfter(resp.Header.Get("Retry-After"), now)
	}
	return e
}

// answerCode names an HTTP error answer that carried no FCM code the SDK knows, and decides
// its kind from the status: 429 and 5xx are worth retrying, anything else is not.
func answerCode(st rpcStatus, status int) (string, error) {
	code := st.fcmCode()
	if code == "" {
		code = st.Error.Status
	}
	if code == "" || code == "UNKNOWN" {
		code = "HTTP_" + strconv.Itoa(status)
	}
	if status == http.StatusTooManyRequests || status >= 500 {
		return code, ErrTransient
	}
	return code, ErrPermanent
}

// aboutToken reports whether an INVALID_ARGUMENT is about the registration token rather than
// the payload. FCM uses the same code for both ("invalid registration, invalid package name,
// message too big, invalid data key, invalid TTL…"). For a bad token it answers "The
// registration token is not a valid FCM registration token", sometimes with a
// google.rpc.BadRequest naming message.token; payload errors name their field. When in doubt
// the answer is no: calling a payload error ErrTokenGone would deactivate a whole audience,
// while the opposite mistake only dead-letters one token.
func aboutToken(err error, st rpcStatus) bool {
	for _, d := range st.Error.Details {
		for _, v := range d.FieldViolations {
			if v.Field == "message.token" {
				return true
			}
			if v.Field != "" {
				return false
			}
		}
	}
	msg := st.Error.Message
	if msg == "" {
		msg = err.Error()
	}
	return strings.Contains(strings.ToLower(msg), "registration token")
}

// rpcStatus is the google.rpc.Status body of an FCM error answer.
type rpcStatus struct {
	Error struct {
		Message string `json:"message"`
		Status  string `json:"status"`
		Details []struct {
			Type            string `json:"@type"`
			ErrorCode       string `json:"errorCode"`
			FieldViolations []struct {
				Field string `json:"field"`
			} `json:"fieldViolations"`
		} `json:"details"`
	} `json:"error"`
}

// fcmCode is the errorCode of the FcmError detail, "" if there is none.
func (st rpcStatus) fcmCode() string {
	for _, d := range st.Error.Details {
		if d.Type == "type.googleapis.com/google.firebase.fcm.v1.FcmError" {
			return d.ErrorCode
		}
	}
	return ""
}

// readStatus decodes the error body of resp; a body that is not a google.rpc.Status gives
// the zero value. The SDK hands out a buffered copy of the body, readable once: it is put
// back so that whoever inspects the error later still finds it.
func readStatus(resp *http.Response) rpcStatus {
	var st rpcStatus
	if resp == nil || resp.Body == nil {
		return st
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body = io.NopCloser(bytes.NewReader(b))
	if err != nil {
		return st
	}
	_ = json.Unmarshal(b, &st) // not JSON (a proxy's HTML page): nothing to learn from it
	return st
}

// retryAfter parses a Retry-After value, delay-seconds or an HTTP date (RFC 9110 §10.2.3).
// Unparsable, negative and past values give 0: no advice.
func retryAfter(v string, now time.Time) time.Duration {
	if v == "" {
		return 0
	}
	if secs, err := strconv.ParseInt(v, 10, 64); err == nil {
		if secs <= 0 || secs > int64(365*24*time.Hour/time.Second) {
			return 0
		}
		return time.Duration(secs) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil && t.After(now) {
		return t.Sub(now)
	}
	return 0
}
