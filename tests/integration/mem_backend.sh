#!/usr/bin/env bash
# Guest RAM on anonymous memory with THP (--mem-backend anon): boot, dirty and verify, save,
# restore eagerly into anon RAM, verify again. An unknown backend is refused in one line.
. "$(dirname "$0")/lib.bash"
require_kvm

start_vm 2 256M "workload=dirty wss=64 rate=0 verify=300ms" --mem-backend anon
check "anon: READY" wait_line "READY cpus=2" 20
check "anon: verify passes" wait_line "VERIFY OK" 20
check "anon: save" "$VMSNAP" save --api "$API" "$WORK/anon.img"
check "anon: the image verifies" "$VMSNAP" verify "$WORK/anon.img"
check "anon: quit" ctl quit
wait_exit 20
check "anon: status 0 (got $VM_STATUS)" [ "$VM_STATUS" = 0 ]

CON2=$WORK/restored.console
"$VMSNAP" restore "$WORK/anon.img" --memory-mode eager --mem-backend anon --console "$CON2" \
	--api "$WORK/r.sock" 2>"$WORK/restore.err" &
PIDS+=($!)
RPID=$!
ok=0
for _ in $(seq 200); do grep -q "VERIFY OK" "$CON2" 2>/dev/null && { ok=1; break; }; sleep 0.1; done
check "anon: restored eagerly into anon RAM, verify passes" [ "$ok" = 1 ]
check "anon: restored guest has no VERIFY FAIL" bash -c "! grep -q 'VERIFY FAIL' '$CON2'"
"$VMSNAP" ctl "$WORK/r.sock" quit >/dev/null
wait "$RPID"
check "anon: restored VM quits with 0" [ $? = 0 ]

err=$("$VMSNAP" run --kernel "$GUEST" --mem-backend hugetlb 2>&1 >/dev/null)
st=$?
check "unknown backend refused in one line, status 1 ($st: $err)" \
	bash -c "[ $st = 1 ] && [ \$(printf '%s\n' \"\$1\" | wc -l) = 1 ] && grep -q \"unknown memory backend 'hugetlb'\" <<<\"\$1\"" _ "$err"
finish
