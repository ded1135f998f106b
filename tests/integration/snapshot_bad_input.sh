#!/usr/bin/env bash
# save/restore/inspect/verify on bad input: one clear error line, non-zero exit, nothing runs.
# Also inspect/verify output on a good image.
. "$(dirname "$0")/lib.bash"
. "$(dirname "$0")/snapshot_lib.bash"
require_kvm

expect_error() { # expect_error STATUS PATTERN -- vmsnap args...
	local want=$1 pattern=$2; shift 3
	local err=$WORK/err.txt st lines
	timeout 20 "$VMSNAP" "$@" >"$WORK/out.txt" 2>"$err" </dev/null
	st=$?
	lines=$(wc -l <"$err")
	if [ "$st" -eq "$want" ] && [ "$lines" -eq 1 ] && grep -qiE -e "$pattern" "$err"; then
		pass "vmsnap $* -> $st: $(cat "$err")"
	else
		fail "vmsnap $*: want status $want and one line matching '$pattern'; got $st, $lines lines: $(cat "$err")"
	fi
}

GOOD=$SRC_DIR/formats/fixtures/v1.0-plain-16m-2cpu.img
LZ4=$SRC_DIR/formats/fixtures/v1.0-lz4-16m-2cpu.img
cp --sparse=always "$GOOD" "$WORK/good.img"
head -c 9000000 "$GOOD" >"$WORK/truncated.img"
head -c 100 "$GOOD" >"$WORK/stub.img"
cp --sparse=always "$GOOD" "$WORK/flipped.img"
printf '\x55' | dd of="$WORK/flipped.img" bs=1 seek=9000 conv=notrunc 2>/dev/null
cp "$LZ4" "$WORK/memflip.img"
# A bit in the middle of the compressed memory: only eager reading or verify can see it.
off=$(python3 -c "import sys; print(sys.argv[1])" "$(( $(stat -c %s "$LZ4") - 500000 ))")
printf '\xff' | dd of="$WORK/memflip.img" bs=1 seek="$off" conv=notrunc 2>/dev/null
head -c 65536 /dev/urandom >"$WORK/random.img"
: >"$WORK/empty.img"
# Newer major: patch the major (offset 8) and recompute the header CRC.
python3 - "$GOOD" "$WORK/newer.img" <<'PY'
import sys, struct
d = bytearray(open(sys.argv[1], 'rb').read())
def crc32c(b):
    c = 0xffffffff
    for x in b:
        c ^= x
        for _ in range(8):
            c = (c >> 1) ^ (0x82F63B78 & -(c & 1))
    return c ^ 0xffffffff
hl = struct.unpack_from('<I', d, 12)[0]
struct.pack_into('<H', d, 8, 2)
struct.pack_into('<I', d, hl - 4, crc32c(bytes(d[:hl - 4])))
open(sys.argv[2], 'wb').write(d)
PY

for cmd in restore verify inspect; do
	expect_error 1 "No such file|cannot open" -- $cmd "$WORK/missing.img"
	expect_error 1 "truncated" -- $cmd "$WORK/truncated.img"
	expect_error 1 "truncated|short|header" -- $cmd "$WORK/stub.img"
	expect_error 1 "magic|not a vmsnap image|not an image" -- $cmd "$WORK/random.img"
	expect_error 1 "empty|truncated|not a vmsnap image|short" -- $cmd "$WORK/empty.img"
	expect_error 1 "format 2.0 is not supported" -- $cmd "$WORK/newer.img"
	expect_error 1 "not a regular file|directory" -- $cmd "$WORK"
done
expect_error 1 "crc mismatch.*offset" -- verify "$WORK/flipped.img"
expect_error 1 "crc mismatch.*offset" -- restore "$WORK/flipped.img"
expect_error 1 "page|run|memory|lz4|crc" -- verify "$WORK/memflip.img"
expect_error 1 "page|run|memory|lz4|crc" -- restore "$WORK/memflip.img" --memory-mode eager
expect_error 1 "compressed" -- restore "$LZ4" --memory-mode mmap
expect_error 2 "--memory-mode 'lazy'" -- restore "$GOOD" --memory-mode lazy
expect_error 2 "IMAGE is required" -- restore
expect_error 2 "IMAGE is required" -- verify
expect_error 2 "IMAGE is required" -- inspect
expect_error 2 "--api SOCKET is required" -- save "$WORK/x.img"
expect_error 2 "IMAGE is required" -- save --api "$WORK/nosock"
expect_error 2 "unknown option '--frob'" -- save --api "$WORK/nosock" --frob x.img
expect_error 1 "no control socket there" -- save --api "$WORK/nosock" "$WORK/x.img"
expect_error 1 "does not exist" -- save --api "$WORK/nosock" "$WORK/nodir/x.img"
for c in save restore inspect verify; do check "$c --help" bash -c "'$VMSNAP' $c --help | grep -q usage"; done

# Good image: inspect and verify describe it.
check "verify says sound" bash -c "'$VMSNAP' verify '$WORK/good.img' | grep -q ': sound'"
check "verify --json ok" bash -c "'$VMSNAP' verify --json '$WORK/good.img' | python3 -c 'import json,sys; d=json.load(sys.stdin); sys.exit(0 if d[\"ok\"] and len(d[\"sha256\"])==64 else 1)'"
check "inspect names devices and vCPUs" bash -c "'$VMSNAP' inspect '$WORK/good.img' | grep -q uart-com1 && '$VMSNAP' inspect '$WORK/good.img' | grep -q 'rip='"
check "inspect --json has config and sections" bash -c "'$VMSNAP' inspect --json '$WORK/good.img' | python3 -c 'import json,sys; d=json.load(sys.stdin); assert d[\"vm\"][\"vcpus\"]==2 and d[\"vm\"][\"ram_size\"]==16<<20 and d[\"format_major\"]==1; assert any(s[\"name\"]==\"vcpu.1\" for s in d[\"sections\"]); assert d[\"memory\"][\"linear\"]'"
check "verify --json on a bad image reports the error" bash -c "'$VMSNAP' verify --json '$WORK/flipped.img' 2>/dev/null | grep -q '\"ok\":false'"

# Saving into an unwritable place: clear error, the VM runs on.
vm_boot src 1 32M "workload=idle"
check "src READY" wait_line READY 20
check "save to a directory path fails" bash -c "! '$VMSNAP' save --api '$API' '$WORK' 2>'$WORK/e' && grep -q 'not a regular file' '$WORK/e'"
check "save to a read-only place fails" bash -c "! '$VMSNAP' save --api '$API' /proc/x.img 2>'$WORK/e' && grep -q 'cannot create' '$WORK/e'"
check "VM still running" bash -c "'$VMSNAP' ctl '$API' status | grep -q 'state: running'"
check "unknown save argument refused" bash -c "! '$VMSNAP' ctl '$API' save path=/tmp/x frob=1 2>&1 | grep -q ok"
ctl quit >/dev/null; vm_wait_exit 10
finish
