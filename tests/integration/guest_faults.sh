#!/usr/bin/env bash
# A guest that crashes ends vmsnap with status 3 and one clear line; the VMM never crashes.
. "$(dirname "$0")/lib.bash"
require_kvm

start_vm 2 128M "fault=triple fault_at=50ms"
wait_exit 30
check "triple fault: exit status 3 (got $VM_STATUS)" [ "$VM_STATUS" = 3 ]
check "triple fault: one error line naming it" grep -q 'guest triple fault (shutdown) on vCPU [0-9]: rip=0x' "$VM_ERR"
check "triple fault: exactly one line on stderr" [ "$(wc -l <"$VM_ERR")" -eq 1 ]
cat "$VM_ERR"

# The guest's own exception handlers catch #UD/#PF/#GP, print PANIC and stop the machine.
for f in ud pf gp; do
	start_vm 1 64M "fault=$f fault_at=50ms"
	wait_exit 30
	check "fault=$f: the VM ended (status $VM_STATUS)" [ "$VM_STATUS" != timeout ]
	check "fault=$f: guest printed PANIC" grep -q '^PANIC' "$CON"
	check "fault=$f: the VMM did not crash (status < 128)" [ "$VM_STATUS" -lt 128 ]
done
finish
