#!/usr/bin/env bash
# Every committed fixture image (formats/fixtures/) still verifies, inspects and restores:
# the guest continues (heartbeats from both vCPUs, VERIFY OK). Must pass forever.
. "$(dirname "$0")/lib.bash"
. "$(dirname "$0")/snapshot_lib.bash"
require_kvm

FIX=$SRC_DIR/formats/fixtures
n=0
for img in "$FIX"/*.img; do
	name=$(basename "$img" .img)
	n=$((n + 1))
	check "$name verifies" "$VMSNAP" verify "$img"
	check "$name inspects" bash -c "'$VMSNAP' inspect '$img' | grep -q 'vcpu.1'"
	modes=(auto)
	grep -q plain <<<"$name" && modes=(mmap eager)
	for mode in "${modes[@]}"; do
		vm_restore "$name-$mode" "$img" --memory-mode "$mode"
		check "$name ($mode): VERIFY OK after restore" wait_line "VERIFY OK" 20
		sleep 0.3
		check "$name ($mode): both vCPUs beat" every_cpu_beats 2 0
		check "$name ($mode): quit" ctl quit
		vm_wait_exit 10
		check "$name ($mode): exit 0 ($VM_STATUS)" [ "$VM_STATUS" = 0 ]
		check "$name ($mode): no VERIFY FAIL or PANIC" no_failures
	done
done
check "fixtures found ($n)" [ "$n" -ge 2 ]
finish
