#!/usr/bin/env bash
# Bad command lines and bad kernels: one clear error line, non-zero exit, nothing runs.
. "$(dirname "$0")/lib.bash"
require_kvm

expect_error() { # expect_error STATUS PATTERN -- vmsnap args...
	local want=$1 pattern=$2; shift 3
	local err=$WORK/err.txt st
	timeout 20 "$VMSNAP" "$@" >"$WORK/out.txt" 2>"$err" </dev/null
	st=$?
	local lines
	lines=$(wc -l <"$err")
	if [ "$st" -eq "$want" ] && [ "$lines" -eq 1 ] && grep -qiE -e "$pattern" "$err"; then
		pass "vmsnap $* -> $st: $(cat "$err")"
	else
		fail "vmsnap $*: want status $want and one line matching '$pattern'; got $st, $lines lines: $(cat "$err")"
	fi
}

: >"$WORK/empty"
head -c 300 "$GUEST" >"$WORK/truncated.elf"
head -c 65536 /dev/urandom >"$WORK/random.bin"
printf '#!/bin/sh\necho hi\n' >"$WORK/script.sh"
# An ELF without a PVH note: the hbwatch binary itself.
K=(run --cmdline x)
expect_error 1 "cannot open kernel.*No such file" -- "${K[@]}" --kernel "$WORK/missing"
expect_error 1 "empty" -- "${K[@]}" --kernel "$WORK/empty"
expect_error 1 "kernel|ELF|truncated|segment" -- "${K[@]}" --kernel "$WORK/truncated.elf"
expect_error 1 "not a|kernel|bzImage|ELF" -- "${K[@]}" --kernel "$WORK/random.bin"
expect_error 1 "not a|kernel|bzImage|ELF" -- "${K[@]}" --kernel "$WORK/script.sh"
expect_error 1 "PVH|note|x86" -- "${K[@]}" --kernel "$HBWATCH"
expect_error 1 "not a regular file" -- "${K[@]}" --kernel /tmp
expect_error 2 "--mem must be more than 0" -- run --kernel "$GUEST" --mem 0
expect_error 2 "not a size" -- run --kernel "$GUEST" --mem lots
expect_error 1 "exceeds the host" -- run --kernel "$GUEST" --mem 1000G
expect_error 1 "above the maximum" -- run --kernel "$GUEST" --mem 2T
expect_error 1 "below the minimum" -- run --kernel "$GUEST" --mem 4M
expect_error 2 "--cpus '0'" -- run --kernel "$GUEST" --cpus 0
expect_error 2 "--cpus '65'" -- run --kernel "$GUEST" --cpus 65
expect_error 2 "--cpus 'two'" -- run --kernel "$GUEST" --cpus two
expect_error 2 "unknown option '--frobnicate'" -- run --kernel "$GUEST" --frobnicate
expect_error 2 "needs a value" -- run --kernel
expect_error 2 "--kernel FILE is required" -- run
expect_error 1 "unknown CPU template 'fast'" -- run --kernel "$GUEST" --cpu-template fast
expect_error 2 "unknown command 'runn'" -- runn
expect_error 1 "cannot open console file" -- run --kernel "$GUEST" --console /nonexistent/dir/con
expect_error 1 "no control socket there" -- ctl "$WORK/nosock" status
finish
