package schema

import (
	"cmp"
	"fmt"
	"strconv"
	"strings"

	"github.com/google/uuid"
	"google.golang.org/protobuf/encoding/protojson"

	"notify/pkg/fcm/topic"
	notifyv1 "notify/proto/gen/notify/v1"
)

// EncodeRequest is how a notification's PublishRequest is stored (notifications.request,
// jsonb): protobuf JSON, readable by operators in SQL.
func EncodeRequest(req *notifyv1.PublishRequest) ([]byte, error) {
	b, err := protojson.Marshal(req)
	if err != nil {
		return nil, fmt.Errorf("encode request: %w", err)
	}
	return b, nil
}

// DecodeRequest reads a stored PublishRequest (notifications.request).
func DecodeRequest(b []byte) (*notifyv1.PublishRequest, error) {
	var req notifyv1.PublishRequest
	if err := protojson.Unmarshal(b, &req); err != nil {
		return nil, fmt.Errorf("decode stored request: %w", err)
	}
	return &req, nil
}

// AudienceKind says who a notification is for.
type AudienceKind int

// Audience kinds, one per PublishRequest recipients choice. The zero value is none of them,
// so an Audience nobody decoded selects nothing (and never every device).
const (
	AudienceUsers  AudienceKind = iota + 1 // the active devices of some users
	AudienceAll                            // every active device
	AudienceTokens                         // raw FCM tokens, registered or not
)

func (k AudienceKind) String() string {
	switch k {
	case AudienceUsers:
		return "users"
	case AudienceAll:
		return "all"
	case AudienceTokens:
		return "tokens"
	}
	return "AudienceKind(" + strconv.Itoa(int(k)) + ")"
}

// Audience is who a notification is for, as its stored request (notifications.request)
// says. The sender pages through it (UnsettledPage) and a replay counts what the sender
// will send (CountUnsettled): both read it from here, so they cannot disagree.
type Audience struct {
	Kind    AudienceKind
	Targets []string // user ids (AudienceUsers) or tokens (AudienceTokens); nil for AudienceAll
	// MutedType, when set, is the notification's type, and the devices of users who muted
	// it (preferences.muted_types) are marked muted in UnsettledPage: the sender records them
	// skipped_preference and does not send. Empty when preferences do not apply: raw tokens,
	// or a request with options.ignore_preferences.
	MutedType string
	// App is the app whose devices the audience is (and whose registrations raw tokens are
	// matched with); "" is DefaultApp.
	App string
}

// AudienceOf returns the audience a PublishRequest names. A request without recipients
// (Publish refuses those) is a broadcast, as it always was. Users and broadcasts honour
// the users' preferences unless the request ignores them; raw tokens name devices, not
// users, and are sent as given.
func AudienceOf(req *notifyv1.PublishRequest) Audience {
	muted := req.GetType()
	if req.GetOptions().GetIgnorePreferences() {
		muted = ""
	}
	switch t := req.GetRecipients().GetTarget().(type) {
	case *notifyv1.Recipients_UserIds:
		return Audience{Kind: AudienceUsers, Targets: t.UserIds.GetUserIds(), MutedType: muted, App: AppOf(req)}
	case *notifyv1.Recipients_Tokens:
		return Audience{Kind: AudienceTokens, Targets: t.Tokens.GetTokens(), App: AppOf(req)}
	case *notifyv1.Recipients_Topic:
		// A topic or condition is one target, recorded under its key (see package topic):
		// paged, settled, retried and replayed exactly like a raw token. No device holds
		// such a token, and preferences cannot apply to subscribers notify does not know.
		return Audience{Kind: AudienceTokens, Targets: []string{topic.Key(strings.TrimPrefix(t.Topic, topic.TopicPrefix))}, App: AppOf(req)}
	case *notifyv1.Recipients_Condition:
		return Audience{Kind: AudienceTokens, Targets: []string{topic.ConditionKey(t.Condition)}, App: AppOf(req)}
	}
	return Audience{Kind: AudienceAll, MutedType: muted, App: AppOf(req)}
}

// audienceSQL is how one kind of audience is selected: one row per target, with $1 the
// notification id, $2 the targets when the kind has any, and the app after them.
type audienceSQL struct {
	from  string // the targets
	where string // the audience predicate over from; "" for none
	key   string // unique per target, the sender's keyset order: the device id, or the raw token
	token string // the target's token
	// devices joins the target's active device, if any, when from has none; deviceID and
	// userID are then "" for an unregistered token.
	devices, deviceID, userID string
}

func (a Audience) sql() (audienceSQL, error) {
	switch a.Kind {
	case AudienceUsers:
		return audienceSQL{from: "devices d", where: "d.active AND d.app = $3 AND d.user_id = ANY($2)", key: "d.device_id",
			token: "d.token", deviceID: "d.device_id", userID: "d.user_id"}, nil
	case AudienceAll:
		return audienceSQL{from: "devices d", where: "d.active AND d.app = $2", key: "d.device_id",
			token: "d.token", deviceID: "d.device_id", userID: "d.user_id"}, nil
	case AudienceTokens:
		return audienceSQL{from: "(SELECT DISTINCT token FROM unnest($2::text[]) AS token) t", key: "t.token",
			token: "t.token", devices: " LEFT JOIN devices d ON d.token = t.token AND d.app = $3 AND d.active",
			deviceID: "coalesce(d.device_id, '')", userID: "coalesce(d.user_id, '')"}, nil
	}
	return audienceSQL{}, fmt.Errorf("unknown audience kind %v", a.Kind)
}

// args returns $1, when the kind has targets $2, and the app.
func (a Audience) args(id uuid.UUID) []any {
	app := a.App
	if app == "" {
		app = DefaultApp
	}
	if a.Kind == AudienceAll {
		return []any{id, app}
	}
	return []any{id, a.Targets, app}
}

// WalkIndexesSQL turns sequential scans and sorts off for the rest of the transaction, so
// that a query planned from statistics older than its rows (an outbox analyzed while empty,
// devices analyzed before a bulk registration) still reads its indexes in their order and
// stops at its LIMIT, instead of reading and sorting the whole table. The outbox relay's
// claim and a broadcast's audience pages run under it.
const WalkIndexesSQL = "SELECT set_config('enable_seqscan', 'off', true), set_config('enable_sort', 'off', true)"

// unsettled is the predicate "token has no settled delivery of notification $1 in
// generation gen" (an SQL expression: see unsettledOf). It is a NOT EXISTS with OFFSET 0:
// the fence keeps PostgreSQL from flattening it into a join planned from statistics that
// know nothing of a broadcast minutes old (that plan re-read every settled row of the
// notification per device and made a broadcast quadratic); as a per-row primary-key probe
// it costs the same at any progress.
func unsettled(token, gen string) string { return unsettledOf("$1", token, gen) }

// unsettledOf is unsettled for the notification whose id is the SQL expression id. A
// delivery is settled when its outcome is one of SettledOutcomes, or when it is failed and
// was dead-lettered in generation gen (DeadLetteredIn): a task of that generation
// delivered again does not dead-letter it a second time, while a replay (a later
// generation) sends it again. The test is on the row the probe fetches anyway.
func unsettledOf(id, token, gen string) string {
	return "NOT EXISTS (SELECT 1 FROM deliveries x WHERE x.notification_id = " + id + " AND x.token = " + token +
		" AND " + settledIn("x", gen) + " OFFSET 0)"
}

// settledIn is the SQL predicate "the delivery row alias is settled in generation gen":
// its outcome is one of SettledOutcomes, or it was dead-lettered in gen (DeadLetteredIn).
func settledIn(alias, gen string) string {
	return "(" + alias + ".outcome IN " + SettledOutcomes + " OR " + DeadLetteredIn(alias, gen) + ")"
}

// DeadLetteredIn is the SQL predicate "the delivery row alias was dead-lettered in
// generation gen" (gen an SQL expression; NULL matches nothing): its outcome is failed and
// its dead_letter_generation is gen. A generation is a notification's replay_count as the
// sender or retrier that recorded the outcome read it (migration 0019).
func DeadLetteredIn(alias, gen string) string {
	return "(" + alias + ".outcome = '" + OutcomeFailed + "' AND " + alias + ".dead_letter_generation = " + gen + ")"
}

// UnsettledPage returns the query for a page of the audience of notification id that has
// no settled delivery yet in generation gen (the notification's replay_count: see
// unsettledOf), and its arguments: at most limit rows (key, device_id, user_id, token,
// muted, unrecorded) with key after `after`, in key order. The key is unique per target
// (the device id, or the token for raw tokens) and is the cursor of the next page;
// device_id and user_id are "" for a raw token no active device has; muted is true when the
// device's user muted a.MutedType (one primary-key probe of preferences per row);
// unrecorded is true when the token had no delivery of the notification at all (what the
// probe of the token's delivery, made for the settled test anyway, found), so that its
// outcome can be recorded without looking for an earlier one (delivery.Target.Unrecorded).
//
// The probe is a LEFT JOIN LATERAL with OFFSET 0, one primary-key probe per row like
// unsettled's NOT EXISTS (and fenced for the same reason), that returns the row it found.
// Its test is written coalesce(settled, false) = false rather than settled IS NOT TRUE:
// the planner estimates the latter from the outcomes' statistics (nearly all settled in a
// running system) at a row or so, costs the page as a walk of every device and, above
// jit_above_cost, compiled each page with JIT (8-12 ms a page); the former it estimates as
// it did the NOT EXISTS.
func (a Audience) UnsettledPage(id uuid.UUID, gen int, after string, limit int) (string, []any, error) {
	q, err := a.sql()
	if err != nil {
		return "", nil, err
	}
	args := a.args(id)
	muted := "false"
	if a.MutedType != "" && a.Kind != AudienceTokens {
		args = append(args, a.MutedType)
		muted = anyPreferences + " AND EXISTS (SELECT 1 FROM preferences p WHERE p.user_id = " + q.userID +
			" AND $" + strconv.Itoa(len(args)) + "::text = ANY (p.muted_types))"
	}
	args = append(args, int32(gen), after, limit)
	genArg, cursor, lim := "$"+strconv.Itoa(len(args)-2)+"::int", "$"+strconv.Itoa(len(args)-1), "$"+strconv.Itoa(len(args))
	return "SELECT " + q.key + ", " + q.deviceID + ", " + q.userID + ", " + q.token + ", " + muted + ", x.outcome IS NULL" +
		" FROM " + q.from + q.devices +
		" LEFT JOIN LATERAL (SELECT x.outcome, x.dead_letter_generation FROM deliveries x WHERE x.notification_id = $1 AND x.token = " +
		q.token + " OFFSET 0) x ON true" +
		" WHERE " + and(q.where, q.key+" > "+cursor, "coalesce("+settledIn("x", genArg)+", false) = false") +
		" ORDER BY " + q.key + " LIMIT " + lim, args, nil
}

// anyPreferences is true when any user has preferences: an uncorrelated subquery, run once
// per statement (an InitPlan) and written before the per-row probe of preferences in an AND,
// which PostgreSQL evaluates left to right, so that where nobody has preferences (an
// installation that does not use them) a page probes preferences once, not once per row
// (each probe of an empty table's index reads two buffers: ~1,000 of a 500-device page's
// ~3,500).
const anyPreferences = "(SELECT EXISTS (SELECT 1 FROM preferences))"

// usersFirstPagesSQL selects the first page of several users audiences: for each
// notification (n, in the order given, i counting from 1) its first $7 targets unsettled in
// its generation gen, in device id order, exactly as UnsettledPage selects them with no
// cursor. The users of
// notification i are the slice [lo:hi] of the users array $6: arrays of arrays in
// PostgreSQL must be rectangular, slices of one array need not be.
var usersFirstPagesSQL = `
SELECT n.i, d.device_id, d.device_id, d.user_id, d.token,
	n.muted <> '' AND ` + anyPreferences + ` AND EXISTS (SELECT 1 FROM preferences p WHERE p.user_id = d.user_id AND n.muted = ANY (p.muted_types))
FROM unnest($1::uuid[], $2::text[], $3::text[], $4::int[], $5::int[], $8::int[]) WITH ORDINALITY AS n(id, app, muted, lo, hi, gen, i)
CROSS JOIN LATERAL (
	SELECT d.device_id, d.user_id, d.token FROM devices d
	WHERE d.active AND d.app = n.app AND d.user_id = ANY (($6::text[])[n.lo:n.hi])
	  AND ` + unsettledOf("n.id", "d.token", "n.gen") + `
	ORDER BY d.device_id LIMIT $7) d
ORDER BY n.i, d.device_id`

// UsersFirstPages returns one query for the first pages of the audiences of several
// notifications (ids[i] in generation gens[i] with audiences[i], every one of kind
// AudienceUsers), and its arguments: for each, what UnsettledPage(ids[i], gens[i], "",
// limit) selects, as rows (i, key,
// device_id, user_id, token, muted) in i then key order, i the index in ids. Planned and
// run once for a whole group of small notifications, where one UnsettledPage per
// notification was planned once each.
func UsersFirstPages(ids []uuid.UUID, gens []int, audiences []Audience, limit int) (string, []any, error) {
	apps, muted := make([]string, len(ids)), make([]string, len(ids))
	generations := make([]int32, len(ids))
	for i, g := range gens {
		generations[i] = int32(g)
	}
	lo, hi := make([]int32, len(ids)), make([]int32, len(ids))
	var users []string
	for i, a := range audiences {
		if a.Kind != AudienceUsers {
			return "", nil, fmt.Errorf("audience %d is of kind %v, not users", i, a.Kind)
		}
		apps[i], muted[i] = cmp.Or(a.App, DefaultApp), a.MutedType
		lo[i] = int32(len(users) + 1) // PostgreSQL's arrays count from 1; an empty slice has hi < lo
		users = append(users, a.Targets...)
		hi[i] = int32(len(users))
	}
	return usersFirstPagesSQL, []any{UUIDs(ids), apps, muted, lo, hi, users, limit, generations}, nil
}

// CountUnsettled returns the query that counts the targets of notification id with no
// settled delivery, failed ones included whatever their generation, and its arguments:
// what the sender sends when a replay (a new generation) gives it the notification again.
func (a Audience) CountUnsettled(id uuid.UUID) (string, []any, error) {
	return a.count(id, func(token string) string { return unsettled(token, "NULL") })
}

// CountUnsettledOrRetrying is CountUnsettled with the targets that wait for a retry counted
// too: what the sender sends when a forced replay gives it a notification still in flight,
// having moved its retrying tokens to failed (which the sender sends again) in the same
// transaction. A target is counted when it has no delivery with a final outcome
// (FinalOutcomes).
func (a Audience) CountUnsettledOrRetrying(id uuid.UUID) (string, []any, error) {
	return a.count(id, func(token string) string {
		return "NOT EXISTS (SELECT 1 FROM deliveries x WHERE x.notification_id = $1 AND x.token = " + token +
			" AND x.outcome IN " + FinalOutcomes + " OFFSET 0)"
	})
}

// count returns the query that counts the targets of notification id for which the SQL
// predicate pending(token) holds, and its arguments.
func (a Audience) count(id uuid.UUID, pending func(token string) string) (string, []any, error) {
	q, err := a.sql()
	if err != nil {
		return "", nil, err
	}
	args := a.args(id)
	if a.Kind == AudienceTokens {
		args = args[:2] // raw tokens are counted without their registrations: no app
	}
	return "SELECT count(*) FROM " + q.from + " WHERE " + and(q.where, pending(q.token)), args, nil
}

func and(preds ...string) string {
	out := ""
	for _, p := range preds {
		switch {
		case p == "":
		case out == "":
			out = p
		default:
			out += " AND " + p
		}
	}
	return out
}
