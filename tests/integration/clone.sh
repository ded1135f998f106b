#!/usr/bin/env bash
# Copy-on-write clones (vmsnap clone, docs/SNAPSHOT.md "Clones"): ten clones of one image with
# a disk and a network all run, verify their memory and disks, each with its own generation
# ID, MAC, tap and disk overlay; the image and the base disk are unchanged afterwards; a clone
# saved and cloned again works; refusals are one line each.
. "$(dirname "$0")/lib.bash"
. "$(dirname "$0")/snapshot_lib.bash"
require_kvm
TAPWATCH=$BUILD_DIR/tests/tapwatch
N=10
P=vc$$x # tap prefix: taps vc<pid>x0..9
export VMSNAP_RUN_DIR=$WORK/run
truncate -s 32M "$WORK/base.raw"

# The template: disk, network, memory workload; saved once it has written its disk.
TAP0=${P}t
# A light guest: 12 of them share this host's 2 cores (ring 0, the timer, is emulated here).
vm_boot tpl 2 128M "cpus=2 hz=100 workload=dirty wss=8 rate=4 verify=500ms disk=verify disk_mib=2 disk_rate=1 net=hb net_ms=200 status=1s" \
	--disk "$WORK/base.raw,overlay=$WORK/tpl.ovl" --net "tap=$TAP0"
check "template: two disk passes" bash -c "for i in \$(seq 200); do [ \$(grep -ac '^DISK OK' '$CON') -ge 2 ] && exit 0; sleep 0.1; done; exit 1"
check "template: memory verifies" wait_line "VERIFY OK" 20
check "template: save" "$VMSNAP" save --api "$API" "$WORK/tpl.img"
ctl quit >/dev/null; vm_wait_exit 20
img_sum=$(sha256sum <"$WORK/tpl.img")
base_sum=$(sha256sum <"$WORK/base.raw")
frozen=$(ls "$WORK"/tpl.img.disk0-* | head -1)
frozen_sum=$(sha256sum <"$frozen")

# Refusals first: nothing may start.
out=$("$VMSNAP" clone "$WORK/tpl.img" --count 2 --dir "$WORK/c0" 2>&1); st=$?
check "no --net-prefix for an image with a network: exit 1 ($st)" [ $st -eq 1 ]
check "  ... one line saying so ($out)" bash -c "[ \$(wc -l <<<'$out') -eq 1 ] && grep -q net-prefix <<<'$out'"
out=$("$VMSNAP" clone "$WORK/tpl.img" --count 1000 --expect-write 100 --net-prefix "$P" --dir "$WORK/c0" 2>&1); st=$?
check "a count beyond memory: exit 1 ($st)" [ $st -eq 1 ]
check "  ... refused up front with the figures ($out)" bash -c "[ \$(wc -l <<<'$out') -eq 1 ] && grep -q 'MiB available' <<<'$out'"
out=$("$VMSNAP" clone "$WORK/none.img" --count 2 2>&1); st=$?
check "a missing image: exit 1 ($st), one line" bash -c "[ $st -eq 1 ] && [ \$(wc -l <<<'$out') -eq 1 ]"
check "nothing was started" bash -c "[ \$('$VMSNAP' ps --json | grep -o '\"pid\"' | wc -l) -eq 0 ]"

# Ten clones.
"$VMSNAP" clone "$WORK/tpl.img" --count $N --net-prefix "$P" --dir "$WORK/c" --json >"$WORK/clone.json" 2>"$WORK/clone.err"
st=$?
check "clone --count $N: exit 0 ($st; $(head -c 300 "$WORK/clone.err"))" [ $st -eq 0 ]
python3 - "$WORK/clone.json" >"$WORK/clone.txt" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
print(d["count"], d["total_us"])
for c in d["clones"]:
    print(c["name"], c["pid"], c["genid"], c["taps"][0])
PY
read -r count total_us <"$WORK/clone.txt"
# Clones are detached processes: stop them when the test ends, whatever happens.
stop_clones() {
	for s in "$WORK"/c/*.sock "$WORK"/cc/*.sock; do
		[ -S "$s" ] && "$VMSNAP" ctl --timeout 2000 "$s" quit >/dev/null 2>&1
	done
	for p in $("$VMSNAP" ps --json | grep -oE '"pid":[0-9]+' | cut -d: -f2); do kill -9 "$p" 2>/dev/null; done
}
trap 'stop_clones; cleanup' EXIT
check "all $N clones report running ($count in $((total_us / 1000)) ms)" [ "$count" = $N ]
check "ten distinct generation IDs" [ "$(tail -n +2 "$WORK/clone.txt" | cut -d' ' -f3 | sort -u | wc -l)" = $N ]
check "vmsnap ps lists the $N clones" bash -c "[ \$('$VMSNAP' ps --json | grep -o '\"kind\":\"clone\"' | wc -l) -eq $N ]"
for i in $(seq 0 $((N - 1))); do ip link set "$P$i" up 2>/dev/null; done

for i in $(seq 0 $((N - 1))); do
	CON=$WORK/c/clone$i.console API=$WORK/c/clone$i.sock
	check "clone$i: a new generation ID" wait_line "changed" 20
	check "clone$i: memory verifies" wait_line "VERIFY OK" 20
	check "clone$i: its disk verifies" bash -c "for i in \$(seq 200); do [ \$(grep -ac '^DISK OK' '$CON') -ge 2 ] && exit 0; sleep 0.1; done; exit 1"
	check "clone$i: no FAIL or PANIC" bash -c "! grep -aqE 'FAIL|PANIC|DISK ERR' '$CON'"
	mac=$(grep -aoE 'NET mac=[0-9a-f:]{17}' "$CON" | tail -1 | cut -d= -f2)
	echo "$mac" >>"$WORK/macs"
done
check "ten distinct MACs ($(sort -u "$WORK/macs" | wc -l))" [ "$(sort -u "$WORK/macs" | wc -l)" = $N ]
check "ten distinct disk overlays, all written" bash -c "[ \$(ls '$WORK'/c/*.disk0.ovl | wc -l) -eq $N ] && [ \$(md5sum '$WORK'/c/*.disk0.ovl | cut -d' ' -f1 | sort -u | wc -l) -eq $N ]"
# Two clones' heartbeats on their own taps, from their own MACs.
for i in 0 1; do
	"$TAPWATCH" -i "$P$i" -t 10 -n 3 >"$WORK/tap$i.log" 2>/dev/null
	m=$(sed -n 1p "$WORK/macs" | tr -d '\n'); [ $i = 1 ] && m=$(sed -n 2p "$WORK/macs")
	check "clone$i: heartbeats on tap $P$i from its MAC $m" grep -q " $m VMSNAP-HB" "$WORK/tap$i.log"
done
# An idle clone's private memory.
priv=$("$VMSNAP" ps --json | python3 -c 'import json,sys; v=[x for x in json.load(sys.stdin)["vms"] if x["kind"]=="clone"]; print(max(x["private_bytes"] for x in v))')
echo "largest clone private memory: $((priv >> 20)) MiB of 128 MiB"

# A clone of a clone: save clone 0, clone that twice.
CON=$WORK/c/clone0.console API=$WORK/c/clone0.sock
check "clone0: save" "$VMSNAP" save --api "$API" "$WORK/clone0.img"
"$VMSNAP" clone "$WORK/clone0.img" --count 2 --name cc --net-prefix "${P}c" --dir "$WORK/cc" -q 2>"$WORK/cc.err"
check "clone of a clone: 2 running ($(head -c 200 "$WORK/cc.err"))" [ $? -eq 0 ]
for i in 0 1; do
	CON=$WORK/cc/cc$i.console
	check "cc$i: disk and memory verify" bash -c "for i in \$(seq 200); do [ \$(grep -ac '^DISK OK' '$CON') -ge 2 ] && grep -aq 'VERIFY OK' '$CON' && exit 0; sleep 0.1; done; exit 1"
	check "cc$i: no FAIL" bash -c "! grep -aqE 'FAIL|PANIC|DISK ERR' '$CON'"
done

# Stop everything; the image and base disk are byte-for-byte what they were.
for s in "$WORK"/c/*.sock "$WORK"/cc/*.sock; do "$VMSNAP" ctl "$s" quit >/dev/null 2>&1; done
for _ in $(seq 100); do [ "$("$VMSNAP" ps --json | grep -c '"pid"')" -eq 0 ] && break; sleep 0.1; done
check "all clones ended" bash -c "[ \$('$VMSNAP' ps --json | grep -o '\"pid\"' | wc -l) -eq 0 ]"
check "no clone logged an error or a sanitizer report" \
	bash -c "! grep -lE 'ERROR|runtime error|vmsnap: .*(fail|cannot)' '$WORK'/c/*.log '$WORK'/cc/*.log"
check "the image is unchanged" [ "$(sha256sum <"$WORK/tpl.img")" = "$img_sum" ]
check "the base disk is unchanged" [ "$(sha256sum <"$WORK/base.raw")" = "$base_sum" ]
check "the image's frozen disk is unchanged" [ "$(sha256sum <"$frozen")" = "$frozen_sum" ]

# A changed base disk: refused once, up front.
printf 'Y' | dd of="$frozen" bs=1 seek=100000 conv=notrunc status=none
out=$("$VMSNAP" clone "$WORK/tpl.img" --count 3 --net-prefix "$P" --dir "$WORK/c2" 2>&1); st=$?
check "a changed disk: exit 1 ($st)" [ $st -eq 1 ]
check "  ... one line naming it ($out)" bash -c "[ \$(wc -l <<<'$out') -eq 1 ] && grep -q 'changed since the image was saved' <<<'$out'"
finish
