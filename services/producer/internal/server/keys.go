package server

import (
	"context"
	"fmt"
	"slices"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"notify/pkg/schema"
	notifyv1 "notify/proto/gen/notify/v1"
	"notify/services/producer/internal/apikey"
)

var roles = map[notifyv1.Role]apikey.Role{
	notifyv1.Role_ROLE_PUBLISHER: apikey.RolePublisher,
	notifyv1.Role_ROLE_ADMIN:     apikey.RoleAdmin,
}

func keyProto(k apikey.Key) *notifyv1.APIKey {
	p := &notifyv1.APIKey{Name: k.Name, Apps: k.Apps, CreateTime: timestamppb.New(k.CreatedAt),
		AllowIgnorePreferences: k.CanIgnorePreferences()}
	for r, name := range roles {
		if name == k.Role {
			p.Role = r
		}
	}
	if k.RevokedAt != nil {
		p.RevokeTime = timestamppb.New(*k.RevokedAt)
	}
	if k.LastUsedAt != nil {
		p.LastUsedTime = timestamppb.New(*k.LastUsedAt)
	}
	if k.Limit.PerSecond != nil {
		p.PublishRate = proto.Int32(int32(*k.Limit.PerSecond))
	}
	if k.Limit.Burst != nil {
		p.PublishBurst = proto.Int32(int32(*k.Limit.Burst))
	}
	return p
}

// CreateAPIKey creates a key and returns its secret, which is stored only as a hash.
func (a *Admin) CreateAPIKey(ctx context.Context, req *notifyv1.CreateAPIKeyRequest) (*notifyv1.CreateAPIKeyResponse, error) {
	var v violations
	if err := apikey.CheckName(req.GetName()); err != nil {
		v.add("name", "must be 1 to %d characters of letters, digits, '.', '_' and '-'", apikey.MaxNameLen)
	}
	role, ok := roles[req.GetRole()]
	if !ok {
		v.add("role", "must be ROLE_PUBLISHER or ROLE_ADMIN")
	}
	var limit apikey.Limit
	if req.PublishRate != nil {
		limit.PerSecond = ptr(int(req.GetPublishRate()))
		if r := req.GetPublishRate(); r < 0 || r > apikey.MaxLimit {
			v.add("publish_rate", "must be 0 (unlimited) to %d notifications per second", apikey.MaxLimit)
		}
	}
	if req.PublishBurst != nil {
		limit.Burst = ptr(int(req.GetPublishBurst()))
		if b := req.GetPublishBurst(); b < 1 || b > apikey.MaxLimit {
			v.add("publish_burst", "must be 1 to %d", apikey.MaxLimit)
		}
	}
	for i, app := range req.GetApps() {
		field := fmt.Sprintf("apps[%d]", i)
		switch j := slices.Index(req.GetApps(), app); {
		case app == "":
			// "" is the default app in a call, but a key's list names apps: a key limited
			// to "" would act for none.
			v.add(field, "must name an app (the default app is %q)", schema.DefaultApp)
		case j < i:
			v.add(field, "repeats apps[%d]", j)
		default:
			a.apps.check(&v, field, app)
		}
	}
	if role == apikey.RoleAdmin && len(req.GetApps()) > 0 {
		v.add("apps", "must be empty for an admin key: admin keys are never limited to apps; limit publisher keys")
	}
	if role == apikey.RoleAdmin && req.GetAllowIgnorePreferences() {
		v.add("allow_ignore_preferences", "must not be set for an admin key: admin keys may always ignore preferences; the permission is for publisher keys")
	}
	if len(v) > 0 {
		return nil, invalidArgument(v)
	}
	k, secret, err := a.keys.CreateWith(ctx, req.GetName(), role, apikey.Options{
		Limit: limit, Apps: req.GetApps(), MayIgnorePreferences: req.GetAllowIgnorePreferences(),
	})
	if err != nil {
		return nil, toStatus(ctx, a.log, "create API key", err, "key", req.GetName())
	}
	a.log.InfoContext(ctx, "API key created", "key", k.Name, "role", k.Role, "by", Caller(ctx),
		"publish_rate", limit.PerSecond, "publish_burst", limit.Burst, "allow_ignore_preferences", k.MayIgnorePreferences)
	return &notifyv1.CreateAPIKeyResponse{Key: keyProto(k), Secret: secret}, nil
}

// ListAPIKeys lists keys by name, never their secrets or hashes.
func (a *Admin) ListAPIKeys(ctx context.Context, req *notifyv1.ListAPIKeysRequest) (*notifyv1.ListAPIKeysResponse, error) {
	keys, err := a.keys.List(ctx, req.GetIncludeRevoked())
	if err != nil {
		return nil, toStatus(ctx, a.log, "list API keys", err)
	}
	resp := &notifyv1.ListAPIKeysResponse{Keys: make([]*notifyv1.APIKey, len(keys))}
	for i, k := range keys {
		resp.Keys[i] = keyProto(k)
	}
	return resp, nil
}

// RevokeAPIKey revokes a key. This process refuses it at once; other replicas within
// their key cache's TTL.
func (a *Admin) RevokeAPIKey(ctx context.Context, req *notifyv1.RevokeAPIKeyRequest) (*notifyv1.RevokeAPIKeyResponse, error) {
	if req.GetName() == "" {
		var v violations
		v.add("name", "is required")
		return nil, invalidArgument(v)
	}
	revoked, err := a.keys.Revoke(ctx, req.GetName())
	if err != nil {
		return nil, toStatus(ctx, a.log, "revoke API key", err, "key", req.GetName())
	}
	if a.cache != nil {
		a.cache.Forget(req.GetName())
	}
	if revoked {
		a.log.InfoContext(ctx, "API key revoked", "key", req.GetName(), "by", Caller(ctx))
	}
	return &notifyv1.RevokeAPIKeyResponse{Revoked: revoked}, nil
}

func ptr[T any](v T) *T { return &v }
