#!/usr/bin/env bash
# Runs every go test -fuzz target of the module for FUZZTIME each (make fuzz).
# A target fails when it writes a reproducer to its package's testdata/fuzz;
# go1.26's coordinator can also end a clean run with a bare "context deadline
# exceeded" at the -fuzztime boundary (golang.org/issue/75804, fixed in Go
# 1.27): such a run, with no reproducer written, is reported as that race,
# not as a failure. Goes on through every target; names the failed ones.
# Each target's run is appended to FUZZLOG (docs/bench/fuzz.tsv), whose rows
# the Fuzzing section of docs/BENCHMARKS.md sums (bench/report/fuzz.go):
# date, package, target, time, execs, result.
# After a target's run, up to FUZZKEEP (default 64) of the inputs the fuzzer
# found interesting (go's generated corpus, in GOCACHE) are kept in the
# package's testdata/fuzz as seeds (up to FUZZKEEP there in all), to be
# committed: plain go test then replays them. FUZZKEEP=0 keeps none.
# FUZZTARGETS, an extended regexp, runs only the targets whose
# package.Target (e.g. gdbstub.FuzzReadPacket) it matches.
set -uo pipefail
GO=${GO:-go}
FUZZTIME=${FUZZTIME:-1m}
FUZZFLAGS=${FUZZFLAGS:-}
FUZZLOG=${FUZZLOG:-docs/bench/fuzz.tsv}
FUZZKEEP=${FUZZKEEP:-64}
FUZZTARGETS=${FUZZTARGETS:-.}
gocache=$($GO env GOCACHE)
failed=() raced=() ran=0
if [ ! -s "$FUZZLOG" ]; then
	printf '# date\tpackage\ttarget\ttime\texecs\tresult\tnote (appended by scripts/fuzz.sh)\n' >"$FUZZLOG"
fi
for pkg in $($GO list ./...); do
	dir=$($GO list -f '{{.Dir}}' "$pkg")
	for f in $($GO test -list '^Fuzz' "$pkg" 2>/dev/null | grep '^Fuzz'); do
		echo "${pkg#*/lucos/lucos/}.$f" | grep -qE -- "$FUZZTARGETS" || continue
		corpus="$dir/testdata/fuzz/$f"
		before=$(ls "$corpus" 2>/dev/null | wc -l)
		echo "== $pkg $f ($FUZZTIME)"
		date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
		log=$(mktemp)
		# shellcheck disable=SC2086
		$GO test -run '^$' -fuzz "^$f\$" -fuzztime "$FUZZTIME" $FUZZFLAGS "$pkg" 2>&1 | tee "$log"
		status=${PIPESTATUS[0]}
		after=$(ls "$corpus" 2>/dev/null | wc -l)
		ran=$((ran + 1))
		result=ok
		if [ "$status" -ne 0 ]; then
			if [ "$after" -eq "$before" ] && grep -q '^    context deadline exceeded$' "$log"; then
				echo "fuzz: $pkg.$f: no reproducer written; the go1.26 -fuzztime deadline race (golang.org/issue/75804), not a failure"
				raced+=("$pkg.$f")
				result=deadline-race
			else
				failed+=("$pkg.$f")
				result=failed
			fi
		fi
		# The coordinator's last progress line: "fuzz: elapsed: 3m0s, execs: 3912345 (...)".
		execs=$(grep -o 'execs: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
		note=
		[ "$result" = failed ] && note="reproducer in $(realpath --relative-to=. "$corpus"); fix it and say how here"
		case $FUZZTIME in
		*x) ;; # a count, not a time: not logged
		*) printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$date" "$pkg" "$f" "$FUZZTIME" "$execs" "$result" "$note" >>"$FUZZLOG" ;;
		esac
		rm -f "$log"
		if [ "$result" != failed ] && [ "$FUZZKEEP" -gt 0 ]; then
			generated="$gocache/fuzz/$pkg/$f"
			mkdir -p "$corpus"
			kept=$(ls "$corpus" | wc -l)
			# The newest first: they carry the coverage the run found last.
			for entry in $(ls -t "$generated" 2>/dev/null); do
				[ "$kept" -ge "$FUZZKEEP" ] && break
				[ -e "$corpus/$entry" ] && continue
				cp "$generated/$entry" "$corpus/$entry" && kept=$((kept + 1))
			done
			rmdir "$corpus" 2>/dev/null
		fi
	done
done
echo "fuzz: $ran targets, $FUZZTIME each; ${#raced[@]} ended on the deadline race: ${raced[*]:-none}"
if [ ${#failed[@]} -gt 0 ]; then
	echo "fuzz: failed (reproducers in their packages' testdata/fuzz): ${failed[*]}"
	exit 1
fi
echo "fuzz: no target failed"
