#!/usr/bin/env bash
# Console input reaches the guest through the UART: the test guest answers 's' with a STATUS
# line, 'v' with a verify pass and 'q' by powering off (tests/guest/README.md).
. "$(dirname "$0")/lib.bash"
require_kvm

mkfifo "$WORK/stdin.fifo"
exec 7<>"$WORK/stdin.fifo" # keep a writer open so vmsnap never sees EOF early
VM_STDIN=$WORK/stdin.fifo
start_vm 2 64M "workload=dirty wss=8 verify=3600 status=3600"
check "READY" wait_line READY 20
off=$(con_size)
printf s >&7
check "'s' typed on the console -> STATUS line" wait_line STATUS 10 "$off"
off=$(con_size)
printf v >&7
check "'v' typed on the console -> VERIFY OK" wait_line "VERIFY OK" 10 "$off"
printf q >&7
wait_exit 20
check "'q' typed on the console -> guest powers off, status 0 (got $VM_STATUS)" [ "$VM_STATUS" = 0 ]
exec 7>&-
finish
