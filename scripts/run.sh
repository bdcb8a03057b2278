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

export FCM_ENDPOINT=${FCM_ENDPOINT:-http://127.0.0.1:9099/v1}
export NOTIFY_ADDR=${NOTIFY_ADDR:-127.0.0.1:50051}

pids=()
stop_all() {
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

start fcm-emulator && wait_http http://127.0.0.1:9099/healthz fcm-emulator
start producer && wait_http http://127.0.0.1:9101/healthz producer
start sender && wait_http http://127.0.0.1:9102/healthz sender
start retrier && wait_http http://127.0.0.1:9103/healthz retrier
start deadletter && wait_http http://127.0.0.1:9104/healthz deadletter

echo "notify is running: gRPC on $NOTIFY_ADDR, FCM emulator on 127.0.0.1:9099, logs in tmp/logs/"
echo
ctl() { echo "\$ notifyctl $*"; "$bin/notifyctl" "$@"; }
run_id=$(date +%s)
echo "== demonstration: two users, three devices, one of them with a token FCM no longer knows"
ctl devices register --user "ana-$run_id" --device "ana-phone-$run_id" --token "demo-ana-phone-$run_id"
ctl devices register --user "ana-$run_id" --device "ana-tablet-$run_id" --token "demo-ana-tablet-$run_id" --platform ios
ctl devices register --user "bob-$run_id" --device "bob-phone-$run_id" --token "unregistered-bob-$run_id"
echo "\$ notifyctl publish --user ana-$run_id --user bob-$run_id --title 'Your order shipped' --body 'Parcel 42 is on its way'"
id=$("$bin/notifyctl" publish --user "ana-$run_id" --user "bob-$run_id" --type order.shipped --title 'Your order shipped' \
	--body 'Parcel 42 is on its way' --idempotency-key "demo-$run_id")
echo "$id"
ctl get --wait 15s "$id"
ctl devices check --user "bob-$run_id" --device "bob-phone-$run_id"
echo
echo "metrics: curl -s 127.0.0.1:9102/metrics | grep notify_   emulator: curl -s 127.0.0.1:9099/emulator/stats"

if [[ ${DEMO_ONLY:-} == 1 ]]; then
	exit 0
fi
echo "press Ctrl-C to stop"
wait
