#!/usr/bin/env bash
# Run every vmsnap test: installs missing build dependencies, builds the normal and the
# ASan+UBSan configurations, runs the whole ctest suite (unit, fuzz replay, integration) in
# both, then runs each libFuzzer target for a bounded time. Exits non-zero if anything fails.
#
#   scripts/test.sh               everything
#   FUZZ_SECONDS=60 scripts/test.sh   longer libFuzzer runs (default 15 s per target)
set -uo pipefail
cd "$(dirname "$0")/.."
JOBS=$(nproc)
FUZZ_SECONDS=${FUZZ_SECONDS:-15}

scripts/deps.sh || exit 1
if [ ! -c /dev/kvm ]; then
	echo "test.sh: /dev/kvm is missing: the integration tests need KVM and will FAIL" >&2
fi

total_pass=0
total_fail=0
failed_suites=()

run_suite() { # name, build dir, extra cmake args...
	local name=$1 dir=$2
	shift 2
	echo "=== $name: configure and build ($dir)"
	if ! cmake -S . -B "$dir" "$@" >"$dir.configure.log" 2>&1; then
		cat "$dir.configure.log"
		failed_suites+=("$name (configure)")
		total_fail=$((total_fail + 1))
		return
	fi
	if ! cmake --build "$dir" -j"$JOBS" >"$dir.build.log" 2>&1; then
		tail -50 "$dir.build.log"
		failed_suites+=("$name (build)")
		total_fail=$((total_fail + 1))
		return
	fi
	echo "=== $name: ctest"
	ctest --test-dir "$dir" --output-on-failure --timeout 600 | tee "$dir.ctest.log"
	local line pass fail
	line=$(grep -E 'tests passed, [0-9]+ tests failed out of' "$dir.ctest.log" | tail -1)
	fail=$(echo "$line" | sed -E 's/.*passed, ([0-9]+) tests failed out of ([0-9]+).*/\1/')
	local all
	all=$(echo "$line" | sed -E 's/.*failed out of ([0-9]+).*/\1/')
	if [ -z "$line" ]; then
		failed_suites+=("$name (ctest ran nothing)")
		total_fail=$((total_fail + 1))
		return
	fi
	pass=$((all - fail))
	total_pass=$((total_pass + pass))
	total_fail=$((total_fail + fail))
	[ "$fail" -eq 0 ] || failed_suites+=("$name ($fail failed)")
}

run_suite release build -DCMAKE_BUILD_TYPE=RelWithDebInfo
run_suite asan build-asan -DCMAKE_BUILD_TYPE=Debug -DVMSNAP_SANITIZE=ON

# libFuzzer: coverage-guided runs of every fuzz target, bounded in time.
if command -v clang >/dev/null; then
	echo "=== fuzz: libFuzzer, ${FUZZ_SECONDS}s per target"
	if CC=clang cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=RelWithDebInfo -DVMSNAP_FUZZ=ON \
		-DVMSNAP_SANITIZE=ON >build-fuzz.configure.log 2>&1 &&
		cmake --build build-fuzz -j"$JOBS" >build-fuzz.build.log 2>&1; then
		for bin in build-fuzz/tests/fuzz/fuzz_*; do
			[ -x "$bin" ] || continue
			t=$(basename "$bin")
			work=$(mktemp -d)
			cp -r "tests/fuzz/corpus/$t/." "$work/" 2>/dev/null || true
			if "$bin" -max_total_time="$FUZZ_SECONDS" -rss_limit_mb=2048 -timeout=10 \
				-artifact_prefix="build-fuzz/$t-" \
				"$work" >"build-fuzz/$t.log" 2>&1; then
				echo "fuzz $t: ok ($(grep -Eo 'Done [0-9]+ runs' "build-fuzz/$t.log" | tail -1))"
				total_pass=$((total_pass + 1))
			else
				echo "fuzz $t: FAILED"; tail -40 "build-fuzz/$t.log"
				total_fail=$((total_fail + 1)); failed_suites+=("libFuzzer $t")
			fi
			rm -rf "$work"
		done
	else
		tail -40 build-fuzz.build.log
		total_fail=$((total_fail + 1)); failed_suites+=("libFuzzer (build)")
	fi
fi

echo
[ ${#failed_suites[@]} -eq 0 ] || echo "failed: ${failed_suites[*]}"
echo "$total_pass passed, $total_fail failed"
[ "$total_fail" -eq 0 ]
