package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	notifyv1 "notify/proto/gen/notify/v1"
)

// Ids the fake answers specially.
const (
	missingID     = "01890a5d-0000-7000-8000-000000000404" // NotFound / REPLAY_OUTCOME_NOT_FOUND
	unavailableID = "01890a5d-0000-7000-8000-000000000503" // the server itself answers Unavailable
	pendingID     = "01890a5d-0000-7000-8000-000000000102" // GetNotification: always pending
	scheduledID   = "01890a5d-0000-7000-8000-000000000103" // GetNotification: scheduled for sendAt
)

// created is the creation time of everything the fake lists.
var created = time.Date(2026, 5, 1, 12, 30, 0, 0, time.UTC)

// sendAt is when the fake's scheduled notifications are to be sent.
var sendAt = created.Add(6 * time.Hour)

// fake is a hand-written notify API: fixed answers, API keys "admin" and "publisher", and a
// record of what it was asked and by whom.
type fake struct {
	notifyv1.UnimplementedAdminServiceServer
	notifyv1.UnimplementedNotificationServiceServer
	notifyv1.UnimplementedDeviceServiceServer

	mu          sync.Mutex
	publishes   []*notifyv1.PublishRequest
	batches     []int // requests per PublishBatch call
	replays     []*notifyv1.ReplayRequest
	deviceLists []*notifyv1.ListDevicesRequest
	keyCreates  []*notifyv1.CreateAPIKeyRequest
	registers   []*notifyv1.RegisterDeviceRequest
	deviceApps  []string            // the app of each CheckDevice and UnregisterDevice, in order
	muted       map[string][]string // by user, as SetPreferences stored them
	clientNames []string            // common names of the client certificates presented (mTLS)

	// When set (before the first call), the listings and Replay by filter answer from these,
	// filtered and paged as the producer does, instead of their fixed answers.
	notifications []*notifyv1.Notification
	deadLetters   []*notifyv1.DeadLetter

	// When set (before the first call), PublishBatch call n (from 0, counting the refused
	// ones) answers refuseBatch(n) instead, writing nothing, when that is not nil.
	refuseBatch func(n int) error
	batchCalls  int
}

// inWindow says whether t is in [start, end) (unset bounds: none).
func inWindow(t, start, end *timestamppb.Timestamp) bool {
	return (start == nil || !t.AsTime().Before(start.AsTime())) && (end == nil || t.AsTime().Before(end.AsTime()))
}

// matchingDeadLetters are f.deadLetters that filter selects.
func (f *fake) matchingDeadLetters(filter *notifyv1.DeadLetterFilter) []*notifyv1.DeadLetter {
	var out []*notifyv1.DeadLetter
	for _, d := range f.deadLetters {
		if (filter.GetReason() == "" || d.GetReason() == filter.GetReason()) &&
			inWindow(d.GetCreateTime(), filter.GetStartTime(), filter.GetEndTime()) &&
			(filter == nil || filter.Replayed == nil || filter.GetReplayed() == (d.GetReplayTime() != nil)) {
			out = append(out, d)
		}
	}
	return out
}

// page is the size items of all (0: 50) from the offset the page token names ("at-N"; empty: the
// first), and the next page token when there are more.
func page[T any](all []T, size int32, token string) ([]T, string) {
	if size == 0 {
		size = 50
	}
	start := 0
	if token != "" {
		n, err := strconv.Atoi(strings.TrimPrefix(token, "at-"))
		if err != nil || n > len(all) {
			return nil, ""
		}
		start = n
	}
	all = all[start:]
	if len(all) > int(size) {
		return all[:size], fmt.Sprintf("at-%d", start+int(size))
	}
	return all, ""
}

// startFake serves the fake on a free port and returns it with its address.
func startFake(t *testing.T, opts ...grpc.ServerOption) (*fake, string) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &fake{}
	srv := grpc.NewServer(opts...)
	notifyv1.RegisterAdminServiceServer(srv, f)
	notifyv1.RegisterNotificationServiceServer(srv, f)
	notifyv1.RegisterDeviceServiceServer(srv, f)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	return f, lis.Addr().String()
}

// authorize checks the bearer key like the producer does and notes a client certificate.
func (f *fake) authorize(ctx context.Context, needAdmin bool) error {
	if p, ok := peer.FromContext(ctx); ok {
		if info, ok := p.AuthInfo.(credentials.TLSInfo); ok && len(info.State.PeerCertificates) > 0 {
			f.mu.Lock()
			f.clientNames = append(f.clientNames, info.State.PeerCertificates[0].Subject.CommonName)
			f.mu.Unlock()
		}
	}
	md, _ := metadata.FromIncomingContext(ctx)
	switch key := strings.TrimPrefix(strings.Join(md.Get("authorization"), ""), "Bearer "); {
	case key == "admin", key == "publisher" && !needAdmin:
		return nil
	case key == "publisher":
		return status.Error(codes.PermissionDenied, "this API key's role (publisher) may not call the admin API")
	default:
		return status.Error(codes.Unauthenticated, "missing, unknown or revoked API key")
	}
}

// Cancel answers 3 sent, 1 of them waiting for a retry; missingID is NOT_FOUND, "delivered"
// FAILED_PRECONDITION.
func (f *fake) Cancel(ctx context.Context, req *notifyv1.CancelRequest) (*notifyv1.CancelResponse, error) {
	if err := f.authorize(ctx, false); err != nil {
		return nil, err
	}
	switch req.GetNotificationId() {
	case missingID:
		return nil, status.Errorf(codes.NotFound, "notification %s not found", missingID)
	case "delivered":
		return nil, status.Error(codes.FailedPrecondition, "notification delivered is delivered; only a scheduled, pending or retrying notification can be cancelled")
	}
	return &notifyv1.CancelResponse{Sent: 3, RetryCancelled: 1}, nil
}

func (f *fake) Publish(ctx context.Context, req *notifyv1.PublishRequest) (*notifyv1.PublishResponse, error) {
	if err := f.authorize(ctx, false); err != nil {
		return nil, err
	}
	f.mu.Lock()
	f.publishes = append(f.publishes, req)
	f.mu.Unlock()
	return &notifyv1.PublishResponse{NotificationId: "01890a5d-0000-7000-8000-000000000001", Duplicate: req.GetIdempotencyKey() == "used"}, nil
}

// PublishBatch accepts every request except those of type "bad", which it refuses with a
// field violation, and answers "used" keys as duplicates.
func (f *fake) PublishBatch(ctx context.Context, req *notifyv1.PublishBatchRequest) (*notifyv1.PublishBatchResponse, error) {
	if err := f.authorize(ctx, false); err != nil {
		return nil, err
	}
	if proto.Size(req) > 4<<20 { // as the server: the whole call is refused
		return nil, status.Error(codes.InvalidArgument, "invalid request: requests are over 4194304 bytes")
	}
	f.mu.Lock()
	n := f.batchCalls
	f.batchCalls++
	if f.refuseBatch != nil {
		if err := f.refuseBatch(n); err != nil {
			f.mu.Unlock()
			return nil, err
		}
	}
	f.publishes = append(f.publishes, req.GetRequests()...)
	f.batches = append(f.batches, len(req.GetRequests()))
	f.mu.Unlock()
	resp := &notifyv1.PublishBatchResponse{}
	for i, r := range req.GetRequests() {
		if r.GetType() == "bad" {
			st, _ := status.New(codes.InvalidArgument, "invalid request: type").WithDetails(&errdetails.BadRequest{
				FieldViolations: []*errdetails.BadRequest_FieldViolation{{Field: "type", Description: "is bad"}},
			})
			resp.Results = append(resp.Results, &notifyv1.PublishResult{Outcome: &notifyv1.PublishResult_Error{Error: st.Proto()}})
			continue
		}
		resp.Results = append(resp.Results, &notifyv1.PublishResult{Outcome: &notifyv1.PublishResult_Accepted{
			Accepted: &notifyv1.PublishResponse{NotificationId: fmt.Sprintf("id-%d", i), Duplicate: r.GetIdempotencyKey() == "used"},
		}})
	}
	return resp, nil
}

func (f *fake) RegisterDevice(ctx context.Context, req *notifyv1.RegisterDeviceRequest) (*notifyv1.RegisterDeviceResponse, error) {
	if err := f.authorize(ctx, false); err != nil {
		return nil, err
	}
	f.mu.Lock()
	f.registers = append(f.registers, req)
	f.mu.Unlock()
	return &notifyv1.RegisterDeviceResponse{Created: true}, nil
}

func (f *fake) CheckDevice(ctx context.Context, req *notifyv1.CheckDeviceRequest) (*notifyv1.CheckDeviceResponse, error) {
	if err := f.authorize(ctx, false); err != nil {
		return nil, err
	}
	f.mu.Lock()
	f.deviceApps = append(f.deviceApps, "check:"+req.GetApp())
	f.mu.Unlock()
	return &notifyv1.CheckDeviceResponse{Registered: req.GetDeviceId() == "known"}, nil
}

func (f *fake) UnregisterDevice(ctx context.Context, req *notifyv1.UnregisterDeviceRequest) (*notifyv1.UnregisterDeviceResponse, error) {
	if err := f.authorize(ctx, false); err != nil {
		return nil, err
	}
	f.mu.Lock()
	f.deviceApps = append(f.deviceApps, "unregister:"+req.GetApp())
	f.mu.Unlock()
	return &notifyv1.UnregisterDeviceResponse{Found: req.GetDeviceId() != "missing-device"}, nil
}

// SetPreferences stores the muted types sorted and without duplicates; a type with a space is
// refused as the producer refuses it (INVALID_ARGUMENT with a field violation).
func (f *fake) SetPreferences(ctx context.Context, req *notifyv1.SetPreferencesRequest) (*notifyv1.SetPreferencesResponse, error) {
	if err := f.authorize(ctx, false); err != nil {
		return nil, err
	}
	for i, t := range req.GetMutedTypes() {
		if strings.Contains(t, " ") {
			st, _ := status.New(codes.InvalidArgument, "invalid request: muted_types").WithDetails(&errdetails.BadRequest{
				FieldViolations: []*errdetails.BadRequest_FieldViolation{{
					Field: fmt.Sprintf("muted_types[%d]", i), Description: "may contain only letters, digits, '.', '_' and '-'",
				}},
			})
			return nil, st.Err()
		}
	}
	muted := slices.Compact(slices.Sorted(slices.Values(req.GetMutedTypes())))
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.muted == nil {
		f.muted = map[string][]string{}
	}
	f.muted[req.GetUserId()] = muted
	return &notifyv1.SetPreferencesResponse{MutedTypes: muted}, nil
}

// GetPreferences answers what SetPreferences stored.
func (f *fake) GetPreferences(ctx context.Context, req *notifyv1.GetPreferencesRequest) (*notifyv1.GetPreferencesResponse, error) {
	if err := f.authorize(ctx, false); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return &notifyv1.GetPreferencesResponse{MutedTypes: f.muted[req.GetUserId()]}, nil
}

// ListDevices answers three devices of any user, paged by page_size up to 2 (the page token is the
// index of the next device).
func (f *fake) ListDevices(ctx context.Context, req *notifyv1.ListDevicesRequest) (*notifyv1.ListDevicesResponse, error) {
	if err := f.authorize(ctx, false); err != nil {
		return nil, err
	}
	f.mu.Lock()
	f.deviceLists = append(f.deviceLists, req)
	f.mu.Unlock()
	all := []*notifyv1.Device{
		{UserId: req.GetUserId(), DeviceId: "phone", App: "default", Token: "tok-phone", Platform: notifyv1.Platform_PLATFORM_ANDROID, Active: true,
			CreateTime: timestamppb.New(created), RegisterTime: timestamppb.New(created), LastSeenTime: timestamppb.New(created)},
		{UserId: req.GetUserId(), DeviceId: "tablet", App: "staff", Token: "tok-tablet", Platform: notifyv1.Platform_PLATFORM_IOS,
			DeactivationReason: "UNREGISTERED", DeactivateTime: timestamppb.New(created),
			CreateTime: timestamppb.New(created), RegisterTime: timestamppb.New(created), LastSeenTime: timestamppb.New(created)},
		{UserId: req.GetUserId(), DeviceId: "browser", App: "default", Token: "tok-browser", Platform: notifyv1.Platform_PLATFORM_WEB, Active: true,
			CreateTime: timestamppb.New(created), RegisterTime: timestamppb.New(created), LastSeenTime: timestamppb.New(created)},
	}
	start := 0
	if req.GetPageToken() != "" {
		start = int(req.GetPageToken()[0] - '0')
	}
	end := min(len(all), start+int(min(req.GetPageSize(), 2))) // at most 2 a page, to make clients page
	resp := &notifyv1.ListDevicesResponse{Devices: all[start:end]}
	if end < len(all) {
		resp.NextPageToken = string(rune('0' + end))
	}
	return resp, nil
}

func notification(id string) *notifyv1.Notification {
	return &notifyv1.Notification{
		Id: id, Caller: "shop", Type: "order.shipped",
		Status:     notifyv1.NotificationStatus_NOTIFICATION_STATUS_FAILED,
		Counts:     &notifyv1.DeliveryCounts{Total: 3, Delivered: 2, Failed: 1},
		CreateTime: timestamppb.New(created),
	}
}

func (f *fake) GetNotification(ctx context.Context, req *notifyv1.GetNotificationRequest) (*notifyv1.GetNotificationResponse, error) {
	if err := f.authorize(ctx, true); err != nil {
		return nil, err
	}
	switch req.GetNotificationId() {
	case missingID:
		return nil, status.Errorf(codes.NotFound, "notification %s not found", missingID)
	case unavailableID:
		return nil, status.Error(codes.Unavailable, "database unavailable")
	}
	n := notification(req.GetNotificationId())
	if n.GetId() == pendingID {
		n.Status = notifyv1.NotificationStatus_NOTIFICATION_STATUS_PENDING
	}
	if n.GetId() == scheduledID {
		n.Status, n.SendTime = notifyv1.NotificationStatus_NOTIFICATION_STATUS_SCHEDULED, timestamppb.New(sendAt)
	}
	return &notifyv1.GetNotificationResponse{
		Notification: n,
		Deliveries: []*notifyv1.Delivery{
			{Token: "tok-1", UserId: "ana", DeviceId: "ana-phone", Outcome: notifyv1.DeliveryOutcome_DELIVERY_OUTCOME_DELIVERED, Attempts: 1},
			{Token: "tok-2", UserId: "ana", DeviceId: "ana-tablet", Outcome: notifyv1.DeliveryOutcome_DELIVERY_OUTCOME_FAILED, Attempts: 3, ErrorCode: "UNAVAILABLE"},
		},
	}, nil
}

func (f *fake) ListNotifications(ctx context.Context, req *notifyv1.ListNotificationsRequest) (*notifyv1.ListNotificationsResponse, error) {
	if err := f.authorize(ctx, true); err != nil {
		return nil, err
	}
	if f.notifications != nil {
		var match []*notifyv1.Notification
		for _, n := range f.notifications {
			if (req.GetType() == "" || n.GetType() == req.GetType()) &&
				(req.GetStatus() == notifyv1.NotificationStatus_NOTIFICATION_STATUS_UNSPECIFIED || n.GetStatus() == req.GetStatus()) &&
				inWindow(n.GetCreateTime(), req.GetStartTime(), req.GetEndTime()) {
				match = append(match, n)
			}
		}
		list, next := page(match, req.GetPageSize(), req.GetPageToken())
		return &notifyv1.ListNotificationsResponse{Notifications: list, NextPageToken: next}, nil
	}
	return &notifyv1.ListNotificationsResponse{Notifications: []*notifyv1.Notification{
		notification("01890a5d-0000-7000-8000-000000000001"), notification("01890a5d-0000-7000-8000-000000000002"),
	}}, nil
}

func (f *fake) ListDeadLetters(ctx context.Context, req *notifyv1.ListDeadLettersRequest) (*notifyv1.ListDeadLettersResponse, error) {
	if err := f.authorize(ctx, true); err != nil {
		return nil, err
	}
	if f.deadLetters != nil {
		list, next := page(f.matchingDeadLetters(req.GetFilter()), req.GetPageSize(), req.GetPageToken())
		return &notifyv1.ListDeadLettersResponse{DeadLetters: list, NextPageToken: next}, nil
	}
	return &notifyv1.ListDeadLettersResponse{DeadLetters: []*notifyv1.DeadLetter{{
		Id: 7, NotificationId: "01890a5d-0000-7000-8000-000000000001", Reason: "retries_exhausted",
		TokenCount: 2, Attempts: 6, ErrorCode: "UNAVAILABLE", CreateTime: timestamppb.New(created),
	}}}, nil
}

func (f *fake) Replay(ctx context.Context, req *notifyv1.ReplayRequest) (*notifyv1.ReplayResponse, error) {
	if err := f.authorize(ctx, true); err != nil {
		return nil, err
	}
	f.mu.Lock()
	f.replays = append(f.replays, req)
	f.mu.Unlock()
	resp := &notifyv1.ReplayResponse{DryRun: req.GetDryRun()}
	ids := req.GetNotificationIds().GetIds()
	if req.GetDeadLetters() != nil {
		for _, d := range f.matchingDeadLetters(req.GetDeadLetters()) {
			if id := d.GetNotificationId(); id != "" && !slices.Contains(ids, id) {
				ids = append(ids, id)
			}
		}
	}
	for _, id := range ids {
		r := &notifyv1.ReplayResult{NotificationId: id, Outcome: notifyv1.ReplayOutcome_REPLAY_OUTCOME_REPLAYED, TokenCount: 1}
		if id == missingID {
			r.Outcome, r.TokenCount = notifyv1.ReplayOutcome_REPLAY_OUTCOME_NOT_FOUND, 0
		}
		resp.Results = append(resp.Results, r)
	}
	return resp, nil
}

func (f *fake) CreateAPIKey(ctx context.Context, req *notifyv1.CreateAPIKeyRequest) (*notifyv1.CreateAPIKeyResponse, error) {
	if err := f.authorize(ctx, true); err != nil {
		return nil, err
	}
	f.mu.Lock()
	f.keyCreates = append(f.keyCreates, req)
	f.mu.Unlock()
	return &notifyv1.CreateAPIKeyResponse{
		Key: &notifyv1.APIKey{Name: req.GetName(), Role: req.GetRole(), CreateTime: timestamppb.New(created),
			AllowIgnorePreferences: req.GetAllowIgnorePreferences()},
		Secret: "nfy_secret",
	}, nil
}

func (f *fake) ListAPIKeys(ctx context.Context, req *notifyv1.ListAPIKeysRequest) (*notifyv1.ListAPIKeysResponse, error) {
	if err := f.authorize(ctx, true); err != nil {
		return nil, err
	}
	return &notifyv1.ListAPIKeysResponse{Keys: []*notifyv1.APIKey{
		{Name: "ops", Role: notifyv1.Role_ROLE_ADMIN, CreateTime: timestamppb.New(created), AllowIgnorePreferences: true},
		{Name: "shop", Role: notifyv1.Role_ROLE_PUBLISHER, CreateTime: timestamppb.New(created), PublishRate: proto.Int32(50), PublishBurst: proto.Int32(100)},
	}}, nil
}

func (f *fake) RevokeAPIKey(ctx context.Context, req *notifyv1.RevokeAPIKeyRequest) (*notifyv1.RevokeAPIKeyResponse, error) {
	if err := f.authorize(ctx, true); err != nil {
		return nil, err
	}
	return &notifyv1.RevokeAPIKeyResponse{Revoked: req.GetName() == "ops"}, nil
}

// result is one in-process notifyctl run.
type result struct {
	code           int
	stdout, stderr string
}

// ctl runs notifyctl in process with only env as its environment.
func ctl(t *testing.T, env map[string]string, args ...string) result {
	t.Helper()
	var out, errOut bytes.Buffer
	code := run(context.Background(), args, func(k string) string { return env[k] }, &out, &errOut)
	return result{code: code, stdout: out.String(), stderr: errOut.String()}
}

// mustCtl runs notifyctl and fails the test unless it exits with want.
func mustCtl(t *testing.T, want int, env map[string]string, args ...string) result {
	t.Helper()
	r := ctl(t, env, args...)
	if r.code != want {
		t.Fatalf("notifyctl %s: exit %d, want %d\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), r.code, want, r.stdout, r.stderr)
	}
	return r
}

// env is the environment of a notifyctl pointed at addr with key.
func env(addr, key string) map[string]string {
	return map[string]string{"NOTIFY_ADDR": addr, "NOTIFY_API_KEY": key}
}
