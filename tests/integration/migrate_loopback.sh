#!/usr/bin/env bash
# Live migration between two vmsnap processes over loopback, plain and TLS: the test guest
# dirties memory on 4 vCPUs, is migrated, and on the destination its memory verifies and its
# heartbeats continue; the source exits 0 only after the destination confirmed. Reports the
# downtime the source measured and the pause the guest showed (largest heartbeat gap across
# both consoles, one hbwatch on the merged console stream).
. "$(dirname "$0")/lib.bash"
. "$(dirname "$0")/migrate_lib.bash"
require_kvm
check "test certificates generated with openssl" make_certs "$WORK/pki"
P=$WORK/pki

for mode in plain tls; do
	tls_src=() tls_dst=()
	if [ $mode = tls ]; then
		tls_src=(--tls-cert "$P/client.pem" --tls-key "$P/client.key" --tls-ca "$P/ca.pem")
		tls_dst=(--tls-cert "$P/server.pem" --tls-key "$P/server.key" --tls-ca "$P/ca.pem")
	fi
	start_vm 4 256M "workload=dirty wss=64 rate=64 verify=300ms"
	check "$mode: source READY" wait_line READY 30
	check "$mode: source verifies before" wait_line "VERIFY OK" 15
	start_receiver "dst-$mode" "${tls_dst[@]}"
	check "$mode: receiver listening (port $RX_PORT)" [ -n "$RX_PORT" ]
	kill -USR2 "$WATCH_PID" # new measurement window: the migration
	off=$(con_size)
	"$VMSNAP" migrate --api "$API" --to "127.0.0.1:$RX_PORT" --downtime-ms 50 --max-time 60 \
		--json -q "${tls_src[@]}" >"$WORK/mig-$mode.json" 2>"$WORK/mig-$mode.err"
	st=$?
	check "$mode: migrate exits 0 ($(cat "$WORK/mig-$mode.err"))" [ $st -eq 0 ]
	check "$mode: state completed" grep -q '"state":"completed"' "$WORK/mig-$mode.json"
	if [ $mode = tls ]; then
		check "tls: transport is TLS 1.3" grep -q '"transport":"TLSv1.3' "$WORK/mig-$mode.json"
	fi
	wait_source 15
	check "$mode: source vmsnap exited 0 after the confirmation (got $VM_STATUS)" [ "$VM_STATUS" = 0 ]
	off2=$(con_size)
	check "$mode: destination verifies" wait_line "VERIFY OK" 15 "$off2"
	n=$(wait_heartbeats "$off2" 100); st=$?
	check "$mode: heartbeats continue on the destination ($n)" [ $st -eq 0 ]
	gap=$(gap_ms)
	python3 - "$WORK/mig-$mode.json" "$gap" "$mode" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
print("%s: total %.1f ms, downtime %.2f ms (target %d), guest-observed pause %s ms, "
      "rounds %d %s, first pass %.0f MB/s, %.1f MiB sent%s" % (sys.argv[3],
      d["total_ms"], d["downtime_ms"], d["downtime_target_ms"], sys.argv[2], d["round"] + 1,
      d["pages_per_round"], d["first_pass_mbps"], d["bytes_sent"] / 2**20,
      ("; note: " + d["downtime_note"]) if "downtime_note" in d else ""))
PY
	check "$mode: the guest's pause is bounded (${gap} ms < 2000)" \
		python3 -c "import sys; sys.exit(0 if 0 <= float('$gap') < 2000 else 1)"
	check "$mode: destination quit" "$VMSNAP" ctl "$RX_API" quit
	check "$mode: receive exits 0" [ "$(rx_status "dst-$mode")" = 0 ]
	wait "$WATCH_PID" 2>/dev/null
	check "$mode: no VERIFY FAIL or PANIC on either side" bash -c "! grep -qE 'VERIFY FAIL|PANIC' '$CON'"
done
finish
