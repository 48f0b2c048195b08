#!/usr/bin/env bash
# Runs every go test -fuzz target of the module for FUZZTIME each (make fuzz).
# A target fails when it writes a reproducer to its package's testdata/fuzz;
# go1.26's coordinator can also end a clean run with a bare "context deadline
# exceeded" at the -fuzztime boundary (golang.org/issue/75804, fixed in Go
# 1.27): such a run, with no reproducer written, is reported as that race,
# not as a failure. Goes on through every target; names the failed ones.
set -uo pipefail
GO=${GO:-go}
FUZZTIME=${FUZZTIME:-1m}
FUZZFLAGS=${FUZZFLAGS:-}
failed=() raced=() ran=0
for pkg in $($GO list ./...); do
	dir=$($GO list -f '{{.Dir}}' "$pkg")
	for f in $($GO test -list '^Fuzz' "$pkg" 2>/dev/null | grep '^Fuzz'); do
		corpus="$dir/testdata/fuzz/$f"
		before=$(ls "$corpus" 2>/dev/null | wc -l)
		echo "== $pkg $f ($FUZZTIME)"
		log=$(mktemp)
		# shellcheck disable=SC2086
		$GO test -run '^$' -fuzz "^$f\$" -fuzztime "$FUZZTIME" $FUZZFLAGS "$pkg" 2>&1 | tee "$log"
		status=${PIPESTATUS[0]}
		after=$(ls "$corpus" 2>/dev/null | wc -l)
		ran=$((ran + 1))
		if [ "$status" -ne 0 ]; then
			if [ "$after" -eq "$before" ] && grep -q '^    context deadline exceeded$' "$log"; then
				echo "fuzz: $pkg.$f: no reproducer written; the go1.26 -fuzztime deadline race (golang.org/issue/75804), not a failure"
				raced+=("$pkg.$f")
			else
				failed+=("$pkg.$f")
			fi
		fi
		rm -f "$log"
	done
done
echo "fuzz: $ran targets, $FUZZTIME each; ${#raced[@]} ended on the deadline race: ${raced[*]:-none}"
if [ ${#failed[@]} -gt 0 ]; then
	echo "fuzz: failed (reproducers in their packages' testdata/fuzz): ${failed[*]}"
	exit 1
fi
echo "fuzz: no target failed"
