#!/usr/bin/env bash
# Failed migrations never lose the guest: the destination killed mid-migration, garbage sent
# to `receive`, a plaintext source against a TLS receiver, a certificate from the wrong CA,
# and a cancel. Each time the source's guest keeps running and verifies; `receive` ends with
# one clear error and no crash.
. "$(dirname "$0")/lib.bash"
. "$(dirname "$0")/migrate_lib.bash"
require_kvm
check "test certificates generated with openssl" make_certs "$WORK/pki"
P=$WORK/pki
SRV_TLS=(--tls-cert "$P/server.pem" --tls-key "$P/server.key" --tls-ca "$P/ca.pem")

start_vm 4 128M "workload=dirty wss=48 rate=64 verify=300ms"
check "source READY" wait_line READY 30

# source_alive WHAT: the source still runs, its heartbeats go on and its memory verifies.
source_alive() {
	check "$1: source still running" bash -c "'$VMSNAP' ctl '$API' status | grep -q 'state: running'"
	local off; off=$(con_size)
	check "$1: source verifies afterwards" wait_line "VERIFY OK" 15 "$off"
	local n; n=$(wait_heartbeats "$off" 50); local st=$?
	check "$1: source heartbeats continue ($n)" [ $st -eq 0 ]
}

# 1. Kill the destination in the middle of the pre-copy (bandwidth capped so it lasts).
start_receiver dst-kill
"$VMSNAP" migrate --api "$API" --to "127.0.0.1:$RX_PORT" --bandwidth 8 --max-time 30 -q \
	>"$WORK/kill.out" 2>"$WORK/kill.err" &
MIG=$!
sleep 2
check "kill: migration is running" bash -c "'$VMSNAP' ctl '$API' migrate-status | grep -q 'state: active'"
kill -9 "$RX_PID"
wait "$MIG"; st=$?
check "kill: migrate exits 1 (got $st)" [ $st -eq 1 ]
check "kill: clear error ($(tail -1 "$WORK/kill.err"))" grep -qiE 'connection|closed|lost' "$WORK/kill.err"
source_alive kill

# 2. Garbage to receive.
start_receiver dst-garbage
python3 - "$RX_PORT" <<'PY'
import os, socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.sendall(b"GET / HTTP/1.0\r\n\r\n" + os.urandom(4096))
s.close()
PY
gst=$(rx_status dst-garbage)
check "garbage: receive exits 1 (got $gst)" [ "$gst" = 1 ]
check "garbage: one clear error ($(cat "$WORK/dst-garbage.err"))" \
	bash -c "[ \$(wc -l <'$WORK/dst-garbage.err') -eq 1 ] && grep -q 'not a vmsnap migration stream' '$WORK/dst-garbage.err'"
# A valid magic followed by a corrupt record.
start_receiver dst-badrec
python3 - "$RX_PORT" <<'PY'
import socket, struct, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
frame = struct.pack("<IHHQ", 0x0100 << 16, 1, 1, 64)
s.sendall(b"VMSNAPMG" + frame + b"\x00" * 64 + b"\xde\xad\xbe\xef")
s.recv(4096)
s.close()
PY
bst=$(rx_status dst-badrec)
check "bad record: receive exits 1 (got $bst)" [ "$bst" = 1 ]
check "bad record: CRC error reported ($(cat "$WORK/dst-badrec.err"))" grep -q 'CRC mismatch' "$WORK/dst-badrec.err"

# 3. Plaintext source against a TLS receiver.
start_receiver dst-tls "${SRV_TLS[@]}"
"$VMSNAP" migrate --api "$API" --to "127.0.0.1:$RX_PORT" -q >"$WORK/plain.out" 2>"$WORK/plain.err"
st=$?
check "plain->tls: migrate exits 1 (got $st)" [ $st -eq 1 ]
check "plain->tls: source says TLS is required ($(tail -1 "$WORK/plain.err"))" grep -q 'requires TLS' "$WORK/plain.err"
check "plain->tls: receive exits 1" [ "$(rx_status dst-tls)" = 1 ]
check "plain->tls: receive says why ($(cat "$WORK/dst-tls.err"))" grep -q 'requires TLS' "$WORK/dst-tls.err"

# 4. A client certificate from another CA.
start_receiver dst-rogue "${SRV_TLS[@]}"
"$VMSNAP" migrate --api "$API" --to "127.0.0.1:$RX_PORT" -q --tls-cert "$P/rogue.pem" \
	--tls-key "$P/rogue.key" --tls-ca "$P/ca.pem" >"$WORK/rogue.out" 2>"$WORK/rogue.err"
st=$?
check "wrong cert: migrate exits 1 (got $st)" [ $st -eq 1 ]
check "wrong cert: receive exits 1" [ "$(rx_status dst-rogue)" = 1 ]
check "wrong cert: receive names the certificate problem ($(cat "$WORK/dst-rogue.err"))" \
	grep -qi 'certificate' "$WORK/dst-rogue.err"
# And a TLS source against a plain receiver.
start_receiver dst-plain
"$VMSNAP" migrate --api "$API" --to "127.0.0.1:$RX_PORT" -q --tls-cert "$P/client.pem" \
	--tls-key "$P/client.key" --tls-ca "$P/ca.pem" >"$WORK/tlsplain.out" 2>"$WORK/tlsplain.err"
st=$?
check "tls->plain: migrate exits 1 (got $st)" [ $st -eq 1 ]
check "tls->plain: receive says the peer speaks TLS ($(cat "$WORK/dst-plain.err"))" \
	grep -q 'TLS handshake' "$WORK/dst-plain.err"
source_alive "tls refusals"

# 5. Cancel through the control socket.
start_receiver dst-cancel
"$VMSNAP" migrate --api "$API" --to "127.0.0.1:$RX_PORT" --bandwidth 8 --max-time 30 -q \
	>"$WORK/cancel.out" 2>"$WORK/cancel.err" &
MIG=$!
sleep 1.5
check "cancel: migrate-cancel accepted" ctl migrate-cancel
wait "$MIG"; st=$?
check "cancel: migrate exits 1 (got $st)" [ $st -eq 1 ]
check "cancel: state cancelled" grep -q 'cancelled' "$WORK/cancel.out"
check "cancel: receive discards its VM and exits 1" [ "$(rx_status dst-cancel)" = 1 ]
check "cancel: receive says the source gave up ($(cat "$WORK/dst-cancel.err"))" grep -q 'source gave up' "$WORK/dst-cancel.err"
source_alive cancel

check "quit" ctl quit
wait_source 15
check "source exits 0 (got $VM_STATUS)" [ "$VM_STATUS" = 0 ]
check "no VERIFY FAIL or PANIC" bash -c "! grep -qE 'VERIFY FAIL|PANIC' '$CON'"
finish
