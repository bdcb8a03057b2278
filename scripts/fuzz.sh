#!/usr/bin/env bash
# Runs fuzz targets for FUZZTIME each: scripts/fuzz.sh DIR:TARGET ... (make fuzz passes
# every target in FUZZ_TARGETS). Each package's fuzzing test binary is built once, all
# packages in parallel, then the targets run one after the other: Go fuzzes one target per
# process, using every CPU. Seeds come from each package's testdata/fuzz; what a run
# discovers goes to the same cache `go test -fuzz` uses. The first failing target stops the
# run, and its failing input is written to the package's testdata/fuzz/TARGET/ (commit it
# with the fix, as a regression seed).
set -euo pipefail
cd "$(dirname "$0")/.."
FUZZTIME=${FUZZTIME:-10s}
cache="$(go env GOCACHE)/fuzz"
bins=$(mktemp -d)
trap 'rm -rf "$bins"' EXIT

declare -A built
for t in "$@"; do
	dir=${t%%:*}
	[[ -n ${built[$dir]:-} ]] && continue
	built[$dir]="$bins/$(echo "$dir" | tr / _).test"
	(cd "$dir" && go test -c -fuzz=. -o "${built[$dir]}" .) &
done
wait_all() { local rc=0; for p in $(jobs -p); do wait "$p" || rc=1; done; return $rc; }
wait_all || { echo "fuzz: building the fuzzing test binaries failed" >&2; exit 1; }

# fuzz_once DIR NAME LOG: one run of a target, its output shown and kept in LOG.
fuzz_once() {
	(cd "$1" && "${built[$1]}" -test.run='^$' -test.fuzz="^$2\$" -test.fuzztime="$FUZZTIME" \
		-test.fuzzcachedir="$cache") 2>&1 | tee "$3"
}
# crashers DIR NAME: how many failing inputs the target's seed corpus holds.
crashers() {
	local d="$1/testdata/fuzz/$2"
	if [[ -d $d ]]; then find "$d" -type f | wc -l; else echo 0; fi
}

start=$SECONDS
log="$bins/log"
for t in "$@"; do
	dir=${t%%:*} name=${t##*:}
	echo "fuzz $name ($dir, $FUZZTIME)"
	before=$(crashers "$dir" "$name")
	fuzz_once "$dir" "$name" "$log" && continue
	# Go 1.26's fuzzing coordinator can fail a target at the end of -fuzztime with a bare
	# "context deadline exceeded" and no failing input (golang/go#75804, fixed in Go 1.27):
	# a race between its deadline and its workers, not a finding. Only that signature, with
	# no input written, is run once more; a second failure, or any failure that wrote an
	# input, fails the run.
	if [[ $(crashers "$dir" "$name") == "$before" ]] && tail -n 3 "$log" | grep -qx '[[:space:]]*context deadline exceeded'; then
		echo "fuzz $name: 'context deadline exceeded' with no failing input: Go's fuzzing coordinator (golang/go#75804), running it once more"
		fuzz_once "$dir" "$name" "$log" && continue
	fi
	exit 1
done
echo "fuzz: $# targets, $FUZZTIME each, in $((SECONDS - start))s after the build"
