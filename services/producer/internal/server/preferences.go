package server

import (
	"context"
	"fmt"
	"slices"

	"github.com/jackc/pgx/v5"

	notifyv1 "notify/proto/gen/notify/v1"
)

// MaxMutedTypes is how many notification types one user may mute.
const MaxMutedTypes = 100

// SetPreferences replaces the notification types a user muted. The sender reads them for
// every page of an audience it resolves, so a change applies from the next chunk on.
func (s *Devices) SetPreferences(ctx context.Context, req *notifyv1.SetPreferencesRequest) (*notifyv1.SetPreferencesResponse, error) {
	var v violations
	v.required("user_id", req.GetUserId(), MaxUserIDLen)
	types := req.GetMutedTypes()
	if len(types) > MaxMutedTypes {
		v.add("muted_types", "has %d entries; at most %d are accepted", len(types), MaxMutedTypes)
	} else {
		for i, t := range types {
			if problem := typeProblem(t); problem != "" {
				v.add(fmt.Sprintf("muted_types[%d]", i), "%s", problem)
			}
		}
	}
	if len(v) > 0 {
		return nil, invalidArgument(v)
	}
	muted := slices.Compact(slices.Sorted(slices.Values(types)))
	if muted == nil {
		muted = []string{}
	}
	// An empty list is stored as a row too: cheaper than a delete, and equally "nothing muted".
	if _, err := s.pool.Exec(ctx, `
		INSERT INTO preferences (user_id, muted_types) VALUES ($1, $2)
		ON CONFLICT (user_id) DO UPDATE SET muted_types = EXCLUDED.muted_types, updated_at = now()`,
		req.GetUserId(), muted); err != nil {
		return nil, toStatus(ctx, s.log, "store preferences", err, "user_id", req.GetUserId())
	}
	return &notifyv1.SetPreferencesResponse{MutedTypes: muted}, nil
}

// GetPreferences returns the notification types a user muted.
func (s *Devices) GetPreferences(ctx context.Context, req *notifyv1.GetPreferencesRequest) (*notifyv1.GetPreferencesResponse, error) {
	var v violations
	v.required("user_id", req.GetUserId(), MaxUserIDLen)
	if len(v) > 0 {
		return nil, invalidArgument(v)
	}
	var muted []string
	err := s.pool.QueryRow(ctx, "SELECT muted_types FROM preferences WHERE user_id = $1", req.GetUserId()).Scan(&muted)
	if err != nil && err != pgx.ErrNoRows {
		return nil, toStatus(ctx, s.log, "read preferences", err, "user_id", req.GetUserId())
	}
	return &notifyv1.GetPreferencesResponse{MutedTypes: muted}, nil
}
