#!/usr/bin/env bash
# restore -> run -> save -> restore, five times over: the guest verifies and beats on 4 vCPUs
# through every generation, and every image in the chain verifies.
. "$(dirname "$0")/lib.bash"
. "$(dirname "$0")/snapshot_lib.bash"
require_kvm

vm_boot gen0 4 128M "workload=dirty wss=16 verify=200ms"
check "gen0 READY" wait_line READY 30
check "gen0 verified" wait_line "VERIFY OK" 20
prev=gen0
for i in 1 2 3 4 5; do
	use_vm "$prev"
	check "gen$i: save of $prev" save_image "$WORK/gen$i.img"
	echo "gen$i: pause $(json_field "$WORK/save.json" pause_ms) ms"
	ctl quit >/dev/null; vm_wait_exit 10
	check "$prev ended cleanly ($VM_STATUS)" [ "$VM_STATUS" = 0 ]
	check "$prev: no VERIFY FAIL or PANIC" no_failures
	vm_restore "gen$i" "$WORK/gen$i.img"
	check "gen$i: a verify pass after restore is OK" wait_line "VERIFY OK" 20
	sleep 0.3
	check "gen$i: every vCPU beats" every_cpu_beats 4 0
	check "gen$i: control socket answers" wait_socket
	prev=gen$i
done
use_vm gen5
g=$(status_field gen last)
check "the guest's dirtier went on through 5 generations (gen=$g)" [ "${g:-0}" -gt 0 ]
ctl quit >/dev/null; vm_wait_exit 10
check "gen5 ended cleanly ($VM_STATUS)" [ "$VM_STATUS" = 0 ]
check "gen5: no VERIFY FAIL or PANIC" no_failures
for i in 1 2 3 4 5; do check "gen$i.img verifies" "$VMSNAP" verify "$WORK/gen$i.img"; done
finish
