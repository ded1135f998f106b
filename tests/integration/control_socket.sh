#!/usr/bin/env bash
# Garbage, oversized and unknown requests on the control socket get an error reply; the VM
# keeps running and answers the next request. A second VM cannot take over a live socket.
. "$(dirname "$0")/lib.bash"
require_kvm

start_vm 1 64M "workload=idle"
check "READY" wait_line READY 20
send() { python3 - "$API" "$1" <<'PY'
import socket, sys
s = socket.socket(socket.AF_UNIX); s.settimeout(10); s.connect(sys.argv[1])
s.sendall(sys.argv[2].encode().decode('unicode_escape').encode('latin-1'))
buf = b''
while b'\n' not in buf:
    d = s.recv(65536)
    if not d: break
    buf += d
print(buf.split(b'\n')[0].decode(errors='replace'))
PY
}
r=$(send 'this is not json\n'); check "garbage -> error reply ($r)" grep -q '"ok":false' <<<"$r"
r=$(send '{"cmd":"frob"}\n'); check "unknown command -> error ($r)" grep -q '"ok":false' <<<"$r"
r=$(send '{"cmd":"status","v":99}\n'); check "unsupported version -> error ($r)" grep -q '"ok":false' <<<"$r"
r=$(send '{"cmd":"status","bogus":1}\n'); check "unknown argument -> error ($r)" grep -q '"ok":false' <<<"$r"
r=$(send '\x00\xff\xfe{"\n'); check "binary junk -> error ($r)" grep -q '"ok":false' <<<"$r"
big=$(head -c 100000 /dev/zero | tr '\0' 'x')
r=$(send "{\"cmd\":\"$big\"}\\n{\"cmd\":\"status\"}\\n"); check "oversized line -> error" grep -q '"ok":false' <<<"$r"
r=$(send '{"cmd":"status"}\n'); check "status still answers ($r)" grep -q '"state":"running"' <<<"$r"
python3 -c "import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.sendall(b'{\"cmd\":\"sta'); s.close()" "$API"
check "a client that leaves mid-line does no harm" ctl status
off=$(con_size)
n=$(wait_heartbeats "$off" 100); st=$?
check "guest still running ($n heartbeats)" [ $st -eq 0 ]
timeout 10 "$VMSNAP" run --kernel "$GUEST" --api "$API" --console /dev/null 2>"$WORK/second.err"
st=$?
check "a second VM cannot take over a live socket, one error line" [ "$(wc -l <"$WORK/second.err")" -eq 1 ]
check "a second VM cannot take over a live socket (status $st: $(cat "$WORK/second.err"))" \
	bash -c "[ $st -ne 0 ] && grep -q 'in use by a running process' '$WORK/second.err'"
check "the first VM still answers" ctl status
check "help lists the commands" bash -c "'$VMSNAP' ctl '$API' help | grep -q pause"
ctl quit >/dev/null
wait_exit 10
check "quit -> status 0 (got $VM_STATUS)" [ "$VM_STATUS" = 0 ]
finish
