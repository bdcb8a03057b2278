#!/usr/bin/env bash
# run.sh starts every notify service and the FCM emulator on this machine (binaries from
# ./bin, built by `make build`), shows a notification going through, and keeps the stack
# running until Ctrl-C. RabbitMQ and PostgreSQL must be reachable (scripts/devenv.sh).
# DEMO_ONLY=1 stops the stack after the demonstration.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=$root/bin
logs=$root/tmp/logs
mkdir -p "$logs"

# The emulator unless real FCM credentials are given (FCM_ENDPOINT with credentials would send
# authenticated requests to the emulator).
if [[ -z ${FCM_CREDENTIALS_FILE:-} ]]; then
	export FCM_ENDPOINT=${FCM_ENDPOINT:-http://127.0.0.1:9099/v1}
fi
export NOTIFY_ADDR=${NOTIFY_ADDR:-127.0.0.1:50051}

run_id=$(date +%s)
dev_keys=()
pids=()
stop_all() {
	# This run's development keys end with it.
	for key in "${dev_keys[@]}"; do
		"$bin/producer" keys revoke "$key" >/dev/null 2>&1 || true
	done
	dev_keys=()
	((${#pids[@]})) || return 0
	echo "stopping notify…"
	kill -TERM "${pids[@]}" 2>/dev/null || true
	wait "${pids[@]}" 2>/dev/null || true
	pids=()
}
trap stop_all EXIT
trap 'exit 130' INT TERM

port_free() { ! timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }
for port in 9099 50051 9101 9102 9103 9104; do
	port_free "$port" || { echo "run: port $port is in use (is notify already running? see tmp/logs/)" >&2; exit 1; }
done

start() {
	local name=$1
	"$bin/$name" >"$logs/$name.log" 2>&1 &
	pids+=($!)
}
wait_http() {
	local url=$1 name=$2
	for _ in $(seq 1 100); do
		curl -fsS -o /dev/null "$url" 2>/dev/null && return 0
		kill -0 "${pids[-1]}" 2>/dev/null || break
		sleep 0.1
	done
	echo "run: $name did not come up; last lines of tmp/logs/$name.log:" >&2
	tail -n 20 "$logs/$name.log" >&2
	exit 1
}

start fcm-emulator && wait_http http://127.0.0.1:9099/readyz fcm-emulator
start producer && wait_http http://127.0.0.1:9101/readyz producer
start sender && wait_http http://127.0.0.1:9102/readyz sender
start retrier && wait_http http://127.0.0.1:9103/readyz retrier
start deadletter && wait_http http://127.0.0.1:9104/readyz deadletter

# Every RPC needs an API key. The first admin key is made directly in the database (the
# bootstrap path); this run's keys are revoked when it stops.
admin_key=$("$bin/producer" keys create "dev-admin-$run_id" --role admin 2>/dev/null)
dev_keys+=("dev-admin-$run_id")
export NOTIFY_API_KEY=$admin_key
(umask 077 && printf '%s\n' "$admin_key" >"$root/tmp/dev-admin-key")
publisher_key=$("$bin/notifyctl" keys create "demo-shop-$run_id" --role publisher 2>/dev/null)
dev_keys+=("demo-shop-$run_id")

echo "notify is running: gRPC on $NOTIFY_ADDR, FCM emulator on 127.0.0.1:9099, logs in tmp/logs/"
echo "development admin key dev-admin-$run_id (also in tmp/dev-admin-key; revoked when this stops):"
echo "  export NOTIFY_API_KEY=$admin_key"
echo
# shell_words prints its arguments as a command line that gives them back: a word with
# anything but [A-Za-z0-9_./:=@,+-] in single quotes.
shell_words() {
	local word words=()
	for word; do
		if [[ $word =~ ^[A-Za-z0-9_./:=@,+-]+$ ]]; then
			words+=("$word")
		else
			words+=("'${word//\'/\'\\\'\'}'")
		fi
	done
	echo "${words[*]}"
}
# ctl and shop print the command they run (the publisher's key as $PUBLISHER_KEY), then run it.
ctl() { echo "\$ notifyctl $(shell_words "$@")"; "$bin/notifyctl" "$@"; }
shop() { echo "\$ notifyctl --api-key \$PUBLISHER_KEY $(shell_words "$@")"; "$bin/notifyctl" --api-key "$publisher_key" "$@"; }
echo "== demonstration: a shop (publisher key demo-shop-$run_id) notifies two users with three devices,"
echo "   one of them with a token FCM no longer knows and one that fails once"
shop devices register --user "ana-$run_id" --device "ana-phone-$run_id" --token "demo-ana-phone-$run_id"
shop devices register --user "ana-$run_id" --device "ana-tablet-$run_id" --token "flaky1-ana-tablet-$run_id" --platform ios
shop devices register --user "bob-$run_id" --device "bob-phone-$run_id" --token "unregistered-bob-$run_id"
# As shop does, but keeping the id: the words are built once, then printed and run.
publish=(publish --user "ana-$run_id" --user "bob-$run_id" --type order.shipped
	--title 'Your order shipped' --body 'Parcel 42 is on its way' --idempotency-key "demo-$run_id")
echo "\$ notifyctl --api-key \$PUBLISHER_KEY $(shell_words "${publish[@]}")"
id=$("$bin/notifyctl" --api-key "$publisher_key" "${publish[@]}")
echo "$id"
echo "== the operator (admin key) looks at it: the tablet's send failed once and waits for a retry"
ctl get --wait 15s "$id"
shop devices check --user "bob-$run_id" --device "bob-phone-$run_id"
echo "== the operator's tools"
ctl list --since 1h --limit 5
ctl dead list --since 1h --limit 5
ctl replay --dry-run "$id"
ctl keys list
echo
echo "metrics: curl -s 127.0.0.1:9102/metrics | grep notify_   emulator: curl -s 127.0.0.1:9099/emulator/stats"

if [[ ${DEMO_ONLY:-} == 1 ]]; then
	exit 0
fi
echo "press Ctrl-C to stop"
wait
