#!/usr/bin/env bash
# devenv.sh makes RabbitMQ (with its management plugin) and PostgreSQL reachable for notify.
#
# In order of preference:
#   1. what already answers at AMQP_URL / DATABASE_URL (nothing is touched);
#   2. a Docker engine: `docker compose --env-file deployments/compose/dev.env up -d --wait
#      rabbitmq postgres` (the development passwords, which the default URLs above use);
#   3. Debian packages: install rabbitmq-server and postgresql if missing, start them without
#      systemd, create the notify role and database.
# Idempotent and quiet when all is well; loud and specific when something fails.
set -euo pipefail

AMQP_URL=${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/}
DATABASE_URL=${DATABASE_URL:-postgres://notify:notify@127.0.0.1:5432/notify?sslmode=disable}
root=$(cd "$(dirname "$0")/.." && pwd)
cd /  # su postgres/rabbitmq below must not start in a directory they cannot read

say() { echo "devenv: $*" >&2; }
die() { echo "devenv: ERROR: $*" >&2; exit 1; }

# host_port URL DEFAULT_PORT prints "host port" of a URL.
host_port() {
	local rest=${1#*://}
	rest=${rest#*@}
	rest=${rest%%/*}
	rest=${rest%%\?*}
	local host=${rest%%:*} port=$2
	[[ $rest == *:* ]] && port=${rest##*:}
	echo "${host:-127.0.0.1} $port"
}

tcp_open() { timeout 2 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null; }

read -r amqp_host amqp_port < <(host_port "$AMQP_URL" 5672)
read -r pg_host pg_port < <(host_port "$DATABASE_URL" 5432)

rabbit_ok() { tcp_open "$amqp_host" "$amqp_port"; }
postgres_ok() { psql "$DATABASE_URL" -qAtc 'select 1' >/dev/null 2>&1; }

if rabbit_ok && postgres_ok; then
	exit 0
fi

local_host() { [[ $1 == 127.0.0.1 || $1 == localhost || $1 == ::1 ]]; }

if docker info >/dev/null 2>&1; then
	say "starting RabbitMQ and PostgreSQL with docker compose"
	docker compose -f "$root/docker-compose.yml" --env-file "$root/deployments/compose/dev.env" up -d --wait rabbitmq postgres ||
		die "docker compose could not start rabbitmq and postgres (see 'docker compose logs')"
	rabbit_ok || die "RabbitMQ still not reachable at $amqp_host:$amqp_port after docker compose"
	postgres_ok || die "PostgreSQL still not reachable at $DATABASE_URL after docker compose"
	exit 0
fi

# From here on we install and start local services, which only makes sense for local URLs.
rabbit_ok || local_host "$amqp_host" ||
	die "RabbitMQ is not reachable at $amqp_host:$amqp_port (AMQP_URL) and that is not this machine"
postgres_ok || local_host "$pg_host" ||
	die "PostgreSQL is not reachable at $DATABASE_URL (DATABASE_URL) and that is not this machine"
[[ $(id -u) == 0 ]] || die "RabbitMQ/PostgreSQL are not running and installing them needs root (no Docker engine answers)"
command -v apt-get >/dev/null || die "no Docker engine and no apt-get: start RabbitMQ and PostgreSQL yourself and set AMQP_URL / DATABASE_URL"

missing=()
command -v rabbitmq-server >/dev/null || missing+=(rabbitmq-server)
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || missing+=(postgresql)
if ((${#missing[@]})); then
	say "installing ${missing[*]} from Debian packages (first run only)"
	# Keep the packages' maintainer scripts from trying to start services: there is no systemd here.
	policy=/usr/sbin/policy-rc.d
	own_policy=0
	if [[ ! -e $policy ]]; then
		printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && own_policy=1
	fi
	export DEBIAN_FRONTEND=noninteractive
	log=$(mktemp)
	if ! { apt-get update -q && apt-get install -y -q --no-install-recommends "${missing[@]}"; } >"$log" 2>&1; then
		((own_policy)) && rm -f "$policy"
		tail -n 30 "$log" >&2
		die "apt-get install ${missing[*]} failed (full log: $log)"
	fi
	((own_policy)) && rm -f "$policy"
	rm -f "$log"
fi

if ! postgres_ok; then
	version=$(ls /usr/lib/postgresql | sort -n | tail -n 1)
	pg_lsclusters -h | grep -q "^$version main" || pg_createcluster "$version" main >/dev/null
	if ! pg_lsclusters -h | awk -v v="$version" '$1==v && $2=="main" {print $4}' | grep -q online; then
		say "starting PostgreSQL $version"
		pg_ctlcluster "$version" main start || die "pg_ctlcluster $version main start failed (see /var/log/postgresql/)"
	fi
	for _ in $(seq 1 30); do
		su postgres -c "psql -p $pg_port -qAtc 'select 1'" >/dev/null 2>&1 && break
		sleep 1
	done
	# Role and database named by DATABASE_URL (defaults: notify/notify, database notify).
	creds=${DATABASE_URL#*://}
	creds=${creds%%@*}
	pg_user=${creds%%:*}
	pg_pass=${creds#*:}
	pg_db=${DATABASE_URL##*/}
	pg_db=${pg_db%%\?*}
	su postgres -c "psql -p $pg_port -v ON_ERROR_STOP=1 -qAt" >/dev/null <<SQL || die "could not create role $pg_user / database $pg_db"
SELECT 'CREATE ROLE "$pg_user" LOGIN SUPERUSER PASSWORD ''$pg_pass'''
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '$pg_user')\gexec
SELECT 'CREATE DATABASE "$pg_db" OWNER "$pg_user"'
WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = '$pg_db')\gexec
SQL
	postgres_ok || die "PostgreSQL is running but $DATABASE_URL does not answer"
fi

if ! rabbit_ok; then
	rabbitmq-plugins enable --offline rabbitmq_management >/dev/null 2>&1 ||
		die "could not enable the rabbitmq_management plugin"
	if ! rabbitmq-diagnostics -q check_running >/dev/null 2>&1; then
		say "starting RabbitMQ"
		su rabbitmq -s /bin/sh -c 'ulimit -n 20000; cd /var/lib/rabbitmq; exec rabbitmq-server -detached' ||
			die "rabbitmq-server -detached failed (see /var/log/rabbitmq/)"
	fi
	for _ in $(seq 1 60); do
		rabbitmq-diagnostics -q check_running >/dev/null 2>&1 && rabbit_ok && break
		sleep 1
	done
	rabbit_ok || die "RabbitMQ did not come up within 60s (see /var/log/rabbitmq/)"
fi
