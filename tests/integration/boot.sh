#!/usr/bin/env bash
# The test guest boots on 1 and 4 vCPUs, heartbeats arrive from every vCPU, the dirtier's
# verify passes, and a guest power-off ends vmsnap with status 0.
. "$(dirname "$0")/lib.bash"
require_kvm

for cpus in 1 4; do
	start_vm "$cpus" 256M "workload=dirty wss=32 rate=64 verify=300ms run=3"
	check "$cpus vCPU: READY" wait_line "READY cpus=$cpus" 20
	check "$cpus vCPU: a verify pass succeeds" wait_line "VERIFY OK" 20
	wait_exit 30
	check "$cpus vCPU: guest power-off ends vmsnap with status 0 (got $VM_STATUS)" [ "$VM_STATUS" = 0 ]
	check "$cpus vCPU: no VERIFY FAIL or PANIC" bash -c "! grep -qE 'VERIFY FAIL|PANIC' '$CON'"
	check "$cpus vCPU: POWEROFF line" grep -q '^POWEROFF' "$CON"
	for c in $(seq 0 $((cpus - 1))); do
		tok=$(printf "\\x$(printf %x $((97 + c)))")
		n=$(grep -E '^[a-z]+$' "$CON" | tr -cd "$tok" | wc -c)
		check "$cpus vCPU: vCPU $c sent heartbeats ($n)" [ "$n" -gt 500 ]
	done
	check "$cpus vCPU: nothing on stderr" [ ! -s "$VM_ERR" ]
	[ -s "$VM_ERR" ] && cat "$VM_ERR"
done
finish
