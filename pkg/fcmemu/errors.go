package fcmemu

import (
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
)

// ErrorCode is an FCM v1 error code, the errorCode of the FcmError detail that the Go SDK's
// messaging.Is* helpers read.
type ErrorCode string

// The FCM error codes the emulator can answer with.
const (
	Unregistered        ErrorCode = "UNREGISTERED"
	InvalidArgument     ErrorCode = "INVALID_ARGUMENT"
	SenderIDMismatch    ErrorCode = "SENDER_ID_MISMATCH"
	QuotaExceeded       ErrorCode = "QUOTA_EXCEEDED"
	Unavailable         ErrorCode = "UNAVAILABLE"
	Internal            ErrorCode = "INTERNAL"
	ThirdPartyAuthError ErrorCode = "THIRD_PARTY_AUTH_ERROR"
)

// errorCodes lists every code the emulator produces; wires follows the same order.
var errorCodes = [...]ErrorCode{
	Unregistered, InvalidArgument, SenderIDMismatch, QuotaExceeded,
	Unavailable, Internal, ThirdPartyAuthError,
}

// ErrorCodes returns every code the emulator produces, in a stable order.
func ErrorCodes() []ErrorCode {
	return slices.Clone(errorCodes[:])
}

// wire is how FCM answers one error code: the HTTP status, the google.rpc.Status status
// string (the SDK's platform-wide code, read by errorutils.Is*) and FCM's usual message.
type wire struct {
	httpStatus int
	status     string
	message    string
}

var wires = [...]wire{
	{http.StatusNotFound, "NOT_FOUND", "Requested entity was not found."},
	{http.StatusBadRequest, "INVALID_ARGUMENT", "The registration token is not a valid FCM registration token"},
	{http.StatusForbidden, "PERMISSION_DENIED", "SenderId mismatch"},
	{http.StatusTooManyRequests, "RESOURCE_EXHAUSTED", "Quota exceeded for quota metric 'Send requests' (emulated)."},
	{http.StatusServiceUnavailable, "UNAVAILABLE", "The service is currently unavailable."},
	{http.StatusInternalServerError, "INTERNAL", "Internal error encountered."},
	{http.StatusUnauthorized, "UNAUTHENTICATED", "Auth error from APNS or Web Push Service"},
}

// index returns the code's position in errorCodes, or -1 for an unknown code.
func (c ErrorCode) index() int {
	for i, k := range errorCodes {
		if k == c {
			return i
		}
	}
	return -1
}

// HTTPStatus is the HTTP status FCM answers the code with (0 for an unknown code).
func (c ErrorCode) HTTPStatus() int {
	if i := c.index(); i >= 0 {
		return wires[i].httpStatus
	}
	return 0
}

func parseErrorCode(s string) (ErrorCode, error) {
	c := ErrorCode(s)
	if c.index() < 0 {
		return "", fmt.Errorf("unknown FCM error code %q (want one of %v)", s, errorCodes)
	}
	return c, nil
}

const fcmErrorType = "type.googleapis.com/google.firebase.fcm.v1.FcmError"

// errorBody is google.rpc.Status as FCM sends it. The SDK reads error.status (platform code),
// error.message (the error string) and the errorCode of the first details entry whose @type
// is FcmError (the messaging code); it ignores error.code and any other detail.
type errorBody struct {
	Error errorStatus `json:"error"`
}

type errorStatus struct {
	Code    int      `json:"code"`
	Message string   `json:"message"`
	Status  string   `json:"status"`
	Details []detail `json:"details"`
}

type detail struct {
	Type            string           `json:"@type"`
	ErrorCode       ErrorCode        `json:"errorCode,omitempty"`
	FieldViolations []fieldViolation `json:"fieldViolations,omitempty"`
}

type fieldViolation struct {
	Field       string `json:"field,omitempty"`
	Description string `json:"description"`
}

// encodeError renders the body for code; message "" means FCM's usual message. A field,
// when given, adds the google.rpc.BadRequest detail FCM sends with validation errors.
func encodeError(code ErrorCode, message, field string) []byte {
	w := wires[code.index()]
	if message == "" {
		message = w.message
	}
	b := errorBody{Error: errorStatus{
		Code:    w.httpStatus,
		Message: message,
		Status:  w.status,
		Details: []detail{{Type: fcmErrorType, ErrorCode: code}},
	}}
	if field != "" {
		b.Error.Details = append(b.Error.Details, detail{
			Type:            "type.googleapis.com/google.rpc.BadRequest",
			FieldViolations: []fieldViolation{{Field: field, Description: message}},
		})
	}
	out, err := json.Marshal(b)
	if err != nil {
		// Only strings and ints: Marshal cannot fail. Answer something valid regardless.
		return []byte(`{"error":{"code":500,"message":"emulator: encode error","status":"INTERNAL"}}`)
	}
	return out
}
