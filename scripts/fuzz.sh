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

start=$SECONDS
for t in "$@"; do
	dir=${t%%:*} name=${t##*:}
	echo "fuzz $name ($dir, $FUZZTIME)"
	(cd "$dir" && "${built[$dir]}" -test.run='^$' -test.fuzz="^$name\$" -test.fuzztime="$FUZZTIME" \
		-test.fuzzcachedir="$cache")
done
echo "fuzz: $# targets, $FUZZTIME each, in $((SECONDS - start))s after the build"
