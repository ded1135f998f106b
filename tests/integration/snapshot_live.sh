#!/usr/bin/env bash
# Live save (docs/SNAPSHOT.md): the test guest dirties memory on 4 vCPUs (with verify) while
# `vmsnap save --live` pre-copies it into the image; the guest is paused only for the last
# round. The image verifies and restores (mmap and eager) to a guest whose verify passes and
# whose heartbeats continue. Its pause, as vmsnap reports it and as the guest shows it (the
# largest heartbeat gap hbwatch saw), is far below a plain save's of the same guest. A
# guest dirtying faster than the bound allows is paused anyway, with a note saying why.
. "$(dirname "$0")/lib.bash"
. "$(dirname "$0")/snapshot_lib.bash"
require_kvm

CPUS=4
# gap_ms: the largest heartbeat gap of the current VM since the last reset (SIGUSR2).
gap_ms() { kill -USR1 "$WATCH_PID"; sleep 0.3; json_field "$SUM" max_gap_ms 2>/dev/null || echo -1; }
lt() { python3 -c "import sys; sys.exit(0 if float(sys.argv[1]) < float(sys.argv[2]) else 1)" "$@"; }

vm_boot src $CPUS 512M "workload=dirty wss=256 rate=64 verify=300ms"
check "source READY" wait_line READY 30
check "source verified once" wait_line "VERIFY OK" 30
sleep 5 # the dirtier touches its whole working set (256 MiB at 64 MiB/s) first

# A plain save of the same guest: the reference pause.
kill -USR2 "$WATCH_PID"; sleep 0.2
check "plain save" save_image "$WORK/plain.img"
plain_pause=$(json_field "$WORK/save.json" pause_ms)
sleep 0.5; plain_gap=$(gap_ms)
echo "plain save: pause $plain_pause ms, guest-observed gap $plain_gap ms, $(json_field "$WORK/save.json" bytes_written) bytes"

kill -USR2 "$WATCH_PID"; sleep 0.2
check "live save" save_image "$WORK/live.img" --live
cat "$WORK/save.err" >&2
live_pause=$(json_field "$WORK/save.json" pause_ms)
sleep 0.5; live_gap=$(gap_ms)
python3 - "$WORK/save.json" "$live_gap" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
print("live save: pause %.2f ms, guest-observed gap %s ms, total %.1f ms, %d rounds (pages %s), "
      "pre-copy %.1f ms, final round %d pages, converged %s%s" % (d["pause_ms"], sys.argv[2],
      d["total_ms"], d["rounds"], d["pages_per_round"], d["precopy_ms"], d["final_pages"],
      d["converged"], ("; note: " + d["note"]) if "note" in d else ""))
PY
check "live reply reports rounds and the final round" grep -q '"rounds":[0-9]' "$WORK/save.json"
check "live pause ($live_pause ms) far below the plain save's ($plain_pause ms)" \
	lt "$live_pause" "$(python3 -c "print($plain_pause / 3)")"
check "guest-observed gap of the live save ($live_gap ms) below the plain save's ($plain_gap ms)" \
	lt "$live_gap" "$plain_gap"
check "source keeps running" bash -c "'$VMSNAP' ctl '$API' status | grep -q 'state: running'"
check "live image verifies" "$VMSNAP" verify "$WORK/live.img"
check "sha256 of verify equals save's" bash -c "'$VMSNAP' verify --json '$WORK/live.img' | grep -q $(json_field "$WORK/save.json" sha256)"
check "the live image is linear (mmap-able)" bash -c "'$VMSNAP' inspect '$WORK/live.img' | grep -qi linear"

# Bounds: a guest that dirties as fast as it can with one round allowed is paused anyway.
check "live save with --max-rounds 1 --pause-target-ms 1" \
	save_image "$WORK/bounded.img" --live --max-rounds 1 --pause-target-ms 1
check "bounded save says why it paused" grep -q '"note":"paused after' "$WORK/save.json"
echo "bounded: $(python3 -c "import json;print(json.load(open('$WORK/save.json')).get('note'))")"
check "bounded image verifies" "$VMSNAP" verify "$WORK/bounded.img"
out=$("$VMSNAP" save --api "$API" "$WORK/x.img" --live --compress 2>&1); st=$?
check "--live --compress refused as a usage error ($out)" [ "$st" = 2 ]
# A full disk during the pre-copy: one clear line, no temporary file, the guest runs on.
SMALL=$WORK/small
mkdir -p "$SMALL"
if mount -t tmpfs -o size=16m tmpfs "$SMALL"; then
	trap 'umount "$SMALL" 2>/dev/null; cleanup' EXIT
	save_image "$SMALL/vm.img" --live; st=$?
	err=$(cat "$WORK/save.err")
	check "live save to a full disk fails with one line (status $st: $err)" \
		[ "$st" = 1 ] && [ "$(wc -l <<<"$err")" = 1 ] && grep -qi "no space left" <<<"$err"
	check "no image and no temporary file left" bash -c "[ -z \"\$(ls -A '$SMALL')\" ]"
	off=$(con_size); sleep 0.5
	check "VM keeps running after the failed live save" every_cpu_beats $CPUS "$off"
	check "a live save elsewhere works after it" save_image "$WORK/again.img" --live
	umount "$SMALL"
else
	fail "cannot mount a tmpfs (this test needs root)"
fi
check "no VERIFY FAIL or PANIC on the source" no_failures
check "source quits" ctl quit
vm_wait_exit 20

for mode in mmap eager; do
	vm_restore "live-$mode" "$WORK/live.img" --memory-mode $mode
	check "$mode: a verify pass after restore is OK" wait_line "VERIFY OK" 30
	sleep 0.5
	check "$mode: every vCPU's heartbeats continue" every_cpu_beats $CPUS 0
	check "$mode: no VERIFY FAIL or PANIC" no_failures
	ctl quit >/dev/null; vm_wait_exit 20
	check "$mode: restored VM quits cleanly ($VM_STATUS)" [ "$VM_STATUS" = 0 ]
done
vm_restore bounded "$WORK/bounded.img"
check "bounded image: verify after restore is OK" wait_line "VERIFY OK" 30
check "bounded image: no VERIFY FAIL or PANIC" no_failures
ctl quit >/dev/null; vm_wait_exit 20
finish
