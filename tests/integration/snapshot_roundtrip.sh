#!/usr/bin/env bash
# Save a 4-vCPU test guest running the memory dirtier with verify, restore it (mmap, eager,
# compressed), twice from one image, and with save --stop: after every restore the guest's
# verify passes, every vCPU's heartbeats continue, and the guest's clock does not jump
# beyond what the host's clock saw.
. "$(dirname "$0")/lib.bash"
. "$(dirname "$0")/snapshot_lib.bash"
require_kvm

CPUS=4
CMD="workload=dirty wss=32 verify=200ms"

# check_restored NAME IMAGE U0 T0 [restore args...]: restore IMAGE as NAME and check it.
check_restored() {
	local name=$1 img=$2 u0=$3 t0=$4; shift 4
	vm_restore "$name" "$img" "$@"
	check "$name: first STATUS after restore" wait_line "STATUS" 20
	local t1 u1 d hostd
	t1=$(now_ms)
	u1=$(status_field up_ms first)
	check "$name: a verify pass after restore is OK" wait_line "VERIFY OK" 20
	sleep 0.5
	check "$name: every vCPU's heartbeats continue" every_cpu_beats $CPUS 0
	d=$((u1 - u0)); hostd=$((t1 - t0))
	# Guest time is frozen across a save when KVM can offset the TSC (d stays around the
	# STATUS period); on PVM hosts the guest reads the host's TSC and d follows the host's
	# clock. Either way it never goes back and never jumps beyond what the host saw.
	check "$name: guest clock continuous (up_ms +$d ms over $hostd ms of host time)" \
		[ "$d" -ge 0 ] && [ "$d" -le $((hostd + 1500)) ]
	check "$name: no VERIFY FAIL or PANIC" no_failures
}

vm_boot src $CPUS 256M "$CMD"
check "source READY" wait_line READY 30
check "source verified once" wait_line "VERIFY OK" 20
u0=$(status_field up_ms last); t0=$(now_ms)
check "save (plain)" save_image "$WORK/plain.img"
cat "$WORK/save.err" >&2
pause=$(json_field "$WORK/save.json" pause_ms); total=$(json_field "$WORK/save.json" total_ms)
echo "plain save: pause ${pause} ms, durable after ${total} ms, $(json_field "$WORK/save.json" bytes_written) bytes written"
check "save reply has a sha256" grep -qE '"sha256":"[0-9a-f]{64}"' "$WORK/save.json"
check "source keeps running after the save" bash -c "sleep 0.5; '$VMSNAP' ctl '$API' status | grep -q 'state: running'"
check "verify passes on the image" "$VMSNAP" verify "$WORK/plain.img"
check "sha256 of verify equals save's" bash -c "'$VMSNAP' verify --json '$WORK/plain.img' | grep -q \$(python3 -c 'import json;print(json.load(open(\"$WORK/save.json\"))[\"sha256\"])')"

check_restored mm "$WORK/plain.img" "$u0" "$t0" --memory-mode mmap
check_restored eager "$WORK/plain.img" "$u0" "$t0" --memory-mode eager

# Two VMs from one image run independently: both alive, ending one leaves the other running.
use_vm eager; off_eager=$(con_size)
use_vm mm
check "mmap VM quits" ctl quit
vm_wait_exit 10
check "mmap VM exits 0 ($VM_STATUS)" [ "$VM_STATUS" = 0 ]
use_vm eager
sleep 0.5
check "the other VM from the same image runs on" every_cpu_beats $CPUS "$off_eager"
check "eager VM quits" ctl quit
vm_wait_exit 10

# Save the source again, compressed, and restore it (auto picks eager).
use_vm src
u0=$(status_field up_ms last); t0=$(now_ms)
check "save --compress" save_image "$WORK/lz4.img" --compress
echo "compressed save: pause $(json_field "$WORK/save.json" pause_ms) ms, $(json_field "$WORK/save.json" file_size) bytes"
check "compressed image smaller than plain apparent size" \
	[ "$(stat -c %s "$WORK/lz4.img")" -lt "$(stat -c %s "$WORK/plain.img")" ]
check_restored lz4 "$WORK/lz4.img" "$u0" "$t0"
out=$("$VMSNAP" restore "$WORK/lz4.img" --memory-mode mmap 2>&1 </dev/null >/dev/null); st=$?
check "mmap of a compressed image refused with one line ($out)" \
	[ "$st" = 1 ] && [ "$(wc -l <<<"$out")" = 1 ] && grep -q "compressed" <<<"$out"
use_vm lz4; ctl quit >/dev/null; vm_wait_exit 10

# Save over an existing image replaces it; then save --stop ends the source cleanly.
use_vm src
check "save over an existing image" save_image "$WORK/plain.img"
u0=$(status_field up_ms last); t0=$(now_ms)
check "save --stop" save_image "$WORK/stopped.img" --stop
check "save --stop reply says stopping" grep -q '"state":"stopping"' "$WORK/save.json"
vm_wait_exit 20
check "source ended with status 0 after --stop ($VM_STATUS)" [ "$VM_STATUS" = 0 ]
check "source never failed verify" no_failures
check_restored resumed "$WORK/stopped.img" "$u0" "$t0"
ctl quit >/dev/null; vm_wait_exit 10
finish
