#!/usr/bin/env bash
# memory.sh measures the services' memory under the load the Kubernetes manifests are sized
# for (deployments/k8s/base/kustomization.yaml, README "Sizing"): two broadcasts to DEVICES
# devices (default 100,000; 1% of the tokens always failing, into retries and dead letters,
# and 1% failing once), then SMALL one-user notifications (default 1,500) from 16 concurrent
# publishers. It prints each service's resident memory (VmRSS) and peak (VmHWM, from /proc)
# at rest and after each step.
#
# It runs the stack of scripts/run.sh (binaries from ./bin, make run's ports: not beside a
# running `make run`) on a database of its own, notify_memory, dropped and made again at
# each run, and the RabbitMQ topology notify-memory; retries wait 1 s, 2 s, then are dead
# letters (RETRY_BASE_DELAY, RETRY_MAX_DELAY, RETRY_MAX_ATTEMPTS), so a run takes minutes,
# not the production schedule's half hour. The devices are written straight into the
# database (RegisterDevices is measured by make bench). RabbitMQ and PostgreSQL must be
# running, and psql installed: `make memory` runs scripts/devenv.sh and make build first.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bin=$root/bin
devices=${DEVICES:-100000}
small=${SMALL:-1500}

base_url=${DATABASE_URL:-postgres://notify:notify@127.0.0.1:5432/notify?sslmode=disable}
db=notify_memory
# The same server and credentials, the database replaced.
export DATABASE_URL
DATABASE_URL=$(sed -E "s#^([a-z]+://[^/]*/)[^?]*#\1$db#" <<<"$base_url")
psql -qX "$base_url" -c "SET client_min_messages TO warning" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" -c "CREATE DATABASE $db"
export AMQP_TOPOLOGY=notify-memory
export RETRY_BASE_DELAY=1s RETRY_MAX_DELAY=2s RETRY_MAX_ATTEMPTS=3

log=$root/tmp/memory-run.log
mkdir -p "$root/tmp"
scripts/run.sh >"$log" 2>&1 &
run=$!
stop() {
	kill -TERM "$run" 2>/dev/null || true
	wait "$run" 2>/dev/null || true
	psql -qX "$base_url" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" || true
}
trap stop EXIT
for _ in $(seq 1 120); do
	grep -q "press Ctrl-C" "$log" 2>/dev/null && break
	kill -0 "$run" 2>/dev/null || { echo "memory: the stack did not start; $log:" >&2; tail -n 20 "$log" >&2; exit 1; }
	sleep 1
done
NOTIFY_API_KEY=$(cat "$root/tmp/dev-admin-key")
export NOTIFY_API_KEY

memory() {
	printf '%-28s' "$1"
	for s in producer sender retrier deadletter; do
		pid=$(pgrep -f "^$bin/$s\$" | head -n 1)
		awk -v s="$s" '/^VmRSS/ {rss = $2} /^VmHWM/ {hwm = $2} END {printf "  %s %d/%d MB", s, rss / 1024, hwm / 1024}' "/proc/$pid/status"
	done
	echo
}
# wait_settled waits until no notification is pending or retrying.
wait_settled() {
	for _ in $(seq 1 300); do
		left=$("$bin/notifyctl" list --since 1h --status pending --limit 0 --no-headers 2>/dev/null | wc -l)
		left=$((left + $("$bin/notifyctl" list --since 1h --status retrying --limit 0 --no-headers 2>/dev/null | wc -l)))
		((left == 0)) && return 0
		sleep 2
	done
	echo "memory: notifications still unfinished after 10 minutes" >&2
	exit 1
}

psql -qX "$DATABASE_URL" -c "INSERT INTO devices (device_id, user_id, token, platform, app)
	SELECT 'memory-device-' || g, 'memory-user-' || g,
		CASE g % 100 WHEN 0 THEN 'internal-' WHEN 1 THEN 'flaky1-' ELSE 'memory-' END || 'token-' || g, 'android', 'default'
	FROM generate_series(1, $devices) g" -c "ANALYZE devices"

echo "resident/peak memory (VmRSS/VmHWM) of each service"
memory "at rest"
for b in 1 2; do
	"$bin/notifyctl" publish --all --title "broadcast $b" --body "memory" >/dev/null
	wait_settled
	memory "after broadcast $b"
done
seq 1 "$small" | xargs -P 16 -I{} "$bin/notifyctl" publish --user memory-user-{} --title small --body memory >/dev/null
wait_settled
memory "after $small small ones"
echo "dead letters: $("$bin/notifyctl" dead list --since 1h --limit 0 --no-headers | wc -l)"
