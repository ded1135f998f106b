#!/usr/bin/env bash
# Pause and resume through the control socket on 1 and 4 vCPUs: heartbeats stop while paused
# and continue after, status reports the state, the guest's memory still verifies.
. "$(dirname "$0")/lib.bash"
require_kvm

for cpus in 1 4; do
	start_vm "$cpus" 256M "workload=dirty wss=16 rate=32 verify=200ms"
	check "$cpus vCPU: READY" wait_line "READY" 20
	check "$cpus vCPU: status says running" bash -c "'$VMSNAP' ctl '$API' status | grep -q 'state: running'"
	check "$cpus vCPU: pause" ctl pause >/dev/null
	check "$cpus vCPU: status says paused" bash -c "'$VMSNAP' ctl --json '$API' status | grep -q '\"state\":\"paused\"'"
	sleep 0.2 # bytes already in flight drain
	off=$(con_size)
	sleep 1
	n=$(heartbeats_since "$off")
	check "$cpus vCPU: no heartbeats while paused ($n)" [ "$n" -eq 0 ]
	check "$cpus vCPU: pause is idempotent" ctl pause >/dev/null
	off=$(con_size)
	check "$cpus vCPU: resume" ctl resume >/dev/null
	n=$(wait_heartbeats "$off" 100); st=$?
	check "$cpus vCPU: heartbeats after resume ($n)" [ $st -eq 0 ]
	check "$cpus vCPU: verify passes after resume" wait_line "VERIFY OK" 10 "$off"
	# Ten quick pause/resume cycles: vCPUs always come back.
	for i in $(seq 10); do ctl pause >/dev/null && ctl resume >/dev/null || fail "cycle $i"; done
	off=$(con_size)
	n=$(wait_heartbeats "$off" 100); st=$?
	check "$cpus vCPU: running after 10 pause/resume cycles ($n)" [ $st -eq 0 ]
	kill -USR1 "$WATCH_PID"; sleep 0.2
	gap=$(json_field "$SUM" max_gap_ms 2>/dev/null || echo 0)
	check "$cpus vCPU: host saw the 1.2 s pause as a heartbeat gap ($gap ms)" \
		python3 -c "import sys; sys.exit(0 if float('$gap') >= 1000 else 1)"
	check "$cpus vCPU: quit" ctl quit >/dev/null
	wait_exit 10
	check "$cpus vCPU: quit ends vmsnap with status 0 (got $VM_STATUS)" [ "$VM_STATUS" = 0 ]
	check "$cpus vCPU: memory verified, no failures" bash -c "! grep -qE 'VERIFY FAIL|PANIC' '$CON'"
done
finish
