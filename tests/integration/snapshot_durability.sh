#!/usr/bin/env bash
# Durability: kill -9 of the VMM or of the client during a save leaves the earlier image
# intact; a full disk gives a clear error, keeps the earlier image and the VM running.
. "$(dirname "$0")/lib.bash"
. "$(dirname "$0")/snapshot_lib.bash"
require_kvm

sha() { "$VMSNAP" verify --json "$1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["sha256"])'; }

# --- kill -9 of the VMM in the middle of a save ---
vm_boot big 2 1G "workload=dirty wss=768 verify=0"
check "big READY" wait_line READY 30
sleep 1
check "first save" save_image "$WORK/img"
sha0=$(sha "$WORK/img")
vmm_pid=$("$VMSNAP" ctl --json "$API" status | python3 -c 'import json,sys; print(json.load(sys.stdin)["pid"])')
"$VMSNAP" save --api "$API" "$WORK/img" >"$WORK/save2.out" 2>"$WORK/save2.err" &
spid=$!
# Kill it once the temporary file exists, i.e. while memory is being written.
for _ in $(seq 200); do ls "$WORK"/.img.tmp-* >/dev/null 2>&1 && break; sleep 0.01; done
check "a save was in progress (temporary file seen)" bash -c "ls '$WORK'/.img.tmp-* >/dev/null 2>&1"
kill -9 "$vmm_pid"
wait "$spid"; st=$?
check "the save client fails with one clear line (status $st: $(cat "$WORK/save2.err"))" \
	[ "$st" = 1 ] && [ "$(wc -l <"$WORK/save2.err")" = 1 ]
check "earlier image still verifies after kill -9" "$VMSNAP" verify "$WORK/img"
check "earlier image unchanged (same sha256)" [ "$(sha "$WORK/img")" = "$sha0" ]
rm -f "$WORK"/.img.tmp-*

# --- kill -9 of the client: the VMM finishes or not, but the VM keeps running ---
vm_boot big2 2 1G "workload=dirty wss=512 verify=200ms"
check "big2 READY" wait_line READY 30
check "big2 first save" save_image "$WORK/img2"
"$VMSNAP" save --api "$API" "$WORK/img2" >/dev/null 2>&1 &
spid=$!
sleep 0.2
kill -9 "$spid"; wait "$spid" 2>/dev/null
sleep 2
off=$(con_size); sleep 0.5
check "VM still running after the client was killed" every_cpu_beats 2 "$off"
check "image after a killed client verifies" "$VMSNAP" verify "$WORK/img2"
check "big2: no VERIFY FAIL" no_failures
ctl quit >/dev/null; vm_wait_exit 10

# --- full disk ---
SMALL=$WORK/small
mkdir -p "$SMALL"
if ! mount -t tmpfs -o size=8m tmpfs "$SMALL"; then
	fail "cannot mount a tmpfs (this test needs root)"; finish
fi
trap 'umount "$SMALL" 2>/dev/null; cleanup' EXIT
vm_boot tiny 1 32M "workload=idle"
check "tiny READY" wait_line READY 30
check "small image saved on the 8 MiB tmpfs" save_image "$SMALL/vm.img"
sha1=$(sha "$SMALL/vm.img")
ctl quit >/dev/null; vm_wait_exit 10
vm_boot full 2 256M "workload=dirty wss=64 verify=200ms"
check "full READY" wait_line READY 30
check "full: verified" wait_line "VERIFY OK" 20
save_image "$SMALL/vm.img"; st=$?
err=$(cat "$WORK/save.err")
check "save to a full disk fails (status $st: $err)" [ "$st" = 1 ] && [ "$(wc -l <<<"$err")" = 1 ]
check "the error says the disk is full" grep -qi "no space left" <<<"$err"
check "earlier image intact on the full disk" [ "$(sha "$SMALL/vm.img")" = "$sha1" ]
check "no temporary file left behind" bash -c "! ls -A '$SMALL' | grep -q tmp"
off=$(con_size); sleep 0.5
check "VM keeps running after the failed save" every_cpu_beats 2 "$off"
check "VM state says running" bash -c "'$VMSNAP' ctl '$API' status | grep -q 'state: running'"
check "VM verifies after the failed save" wait_line "VERIFY OK" 10 "$off"
check "a later save elsewhere works" save_image "$WORK/after.img"
ctl quit >/dev/null; vm_wait_exit 10
check "full: no VERIFY FAIL or PANIC" no_failures
finish
