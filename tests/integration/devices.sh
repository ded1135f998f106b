#!/usr/bin/env bash
# The devices a real guest needs (docs/DEVICES.md), through the test guest's drivers:
# - ACPI: the guest finds its virtio-mmio devices and the generation ID in the DSDT;
# - virtio-blk: the guest writes and verifies its disk on a raw file and on an overlay;
#   across save/restore (requests in flight survive, the base never changes, the saved disk
#   layer is frozen) and live migration; a restore gets a new generation ID, a migration not;
# - virtio-net: the guest's heartbeat frames reach a host reader on the tap, with its MAC;
# - bad input: one clear line each, before the guest starts.
. "$(dirname "$0")/lib.bash"
. "$(dirname "$0")/snapshot_lib.bash"
. "$(dirname "$0")/migrate_lib.bash"
require_kvm
TAPWATCH=$BUILD_DIR/tests/tapwatch
D=$WORK/disks
mkdir -p "$D"
truncate -s 64M "$D/base.raw"
printf 'vmsnap base disk\n' | dd of="$D/base.raw" conv=notrunc status=none
CMD="disk=verify disk_mib=8 status=500ms verify=300ms"

# last_genid: the newest generation ID the current guest printed.
last_genid() { grep -aoE '^GENID [0-9a-f]{32}' "$CON" | tail -1 | cut -d' ' -f2; }
no_disk_fail() { ! grep -aqE 'DISK (FAIL|ERR)|PANIC|VERIFY FAIL' "$CON"; }
# disk_passes_since OFFSET N [TIMEOUT]: N more "DISK OK" lines after OFFSET.
disk_passes_since() {
	local off=$1 n=$2 t=${3:-20} i=0
	while [ "$(tail -c +"$((off + 1))" "$CON" | grep -ac '^DISK OK')" -lt "$n" ]; do
		[ $i -ge $((t * 10)) ] && return 1
		sleep 0.1; i=$((i + 1))
	done
}

# 1. ACPI + a raw disk.
vm_boot raw 2 128M "$CMD" --disk "$D/base.raw"
check "raw: guest finds one virtio device and the generation ID through ACPI" \
	wait_line "ACPI rsdp=0xe0000 virtio=1 genid_addr=0xef000" 20
check "raw: the guest sees a virtio-blk device of 131072 sectors" wait_line "sectors=131072" 10
check "raw: three disk passes verify" disk_passes_since 0 3
check "raw: no DISK FAIL or PANIC" no_disk_fail
ctl quit >/dev/null; vm_wait_exit 20
check "raw: quit ends with 0 ($VM_STATUS)" [ "$VM_STATUS" = 0 ]
check "raw: the guest's writes are in the raw file" \
	bash -c "! cmp -s -n 1048576 '$D/base.raw' /dev/zero"
# A raw writable disk cannot be frozen for a snapshot that lets the VM run on.
vm_boot rawsave 2 128M "$CMD" --disk "$D/base.raw"
check "rawsave: READY" wait_line READY 20
check "rawsave: save of a VM writing a raw disk is refused with the way out" \
	bash -c "! '$VMSNAP' save --api '$API' '$WORK/raw.img' 2>'$WORK/rawsave.err' && grep -q 'overlay' '$WORK/rawsave.err' && [ \$(wc -l <'$WORK/rawsave.err') -eq 1 ]"
check "rawsave: no image left behind" [ ! -e "$WORK/raw.img" ]
check "rawsave: the VM still runs" bash -c "'$VMSNAP' ctl '$API' status | grep -q 'state: running'"
ctl quit >/dev/null; vm_wait_exit 20

# 2. An overlay: the base is never written again; save, restore twice.
base_sum=$(sha256sum <"$D/base.raw")
vm_boot ovl 2 128M "$CMD" --disk "$D/base.raw,overlay=$D/vm.ovl"
check "ovl: two disk passes on the overlay" disk_passes_since 0 2
gen0=$(last_genid)
check "ovl: save while the disk is busy" "$VMSNAP" save --api "$API" "$WORK/ovl.img"
frozen=$(ls "$WORK"/ovl.img.disk0-* 2>/dev/null | head -1)
check "ovl: the save froze the disk into a file of the image's ($frozen)" [ -n "$frozen" ]
off=$(con_size)
check "ovl: the source runs on, on a new overlay, and verifies" disk_passes_since "$off" 2
frozen_sum=$(sha256sum <"$frozen")
ctl quit >/dev/null; vm_wait_exit 20
check "ovl: the base disk was never written" [ "$(sha256sum <"$D/base.raw")" = "$base_sum" ]
for n in 1 2; do
	vm_restore "r$n" "$WORK/ovl.img" --disk-overlay "$WORK/r$n.ovl"
	check "restore $n: GENID changed line" wait_line "changed" 20
	g=$(last_genid)
	check "restore $n: a new generation ID ($g vs $gen0)" [ -n "$g" ] && [ "$g" != "$gen0" ]
	eval "gen_r$n=$g"
	check "restore $n: disk passes verify after restore" disk_passes_since 0 2
	check "restore $n: no DISK FAIL" no_disk_fail
	ctl quit >/dev/null; vm_wait_exit 20
done
check "two restores got different generation IDs" [ "$gen_r1" != "$gen_r2" ]
check "the frozen layer never changed" [ "$(sha256sum <"$frozen")" = "$frozen_sum" ]
check "the base never changed" [ "$(sha256sum <"$D/base.raw")" = "$base_sum" ]
# A changed frozen layer is refused before the guest starts.
cp "$frozen" "$WORK/frozen.bak"
printf 'X' | dd of="$frozen" bs=1 seek=70000 conv=notrunc status=none
vm_restore bad "$WORK/ovl.img" --disk-overlay "$WORK/bad.ovl"
vm_wait_exit 20
check "changed disk: restore exits 1 ($VM_STATUS)" [ "$VM_STATUS" = 1 ]
check "changed disk: one line naming the disk" \
	bash -c "[ \$(wc -l <'$VM_ERR') -eq 1 ] && grep -q 'changed since the image was saved' '$VM_ERR'"
cp "$WORK/frozen.bak" "$frozen"

# 3. Live migration with the disk (same files on both sides): the guest verifies on.
vm_boot mig 2 128M "$CMD" --disk "$D/base.raw,overlay=$D/mig.ovl"
check "mig: two disk passes" disk_passes_since 0 2
genm=$(last_genid)
rm -f "$WORK/con.fifo"; mkfifo "$WORK/con.fifo"
"$HBWATCH" -l "$WORK/rx-console.log" <"$WORK/con.fifo" >/dev/null 2>&1 &
PIDS+=("$!")
start_receiver rx --disk "$D/base.raw,overlay=$D/mig.ovl"
check "mig: migrate to the receiver" "$VMSNAP" migrate --api "$API" --to "127.0.0.1:$RX_PORT" -q
vm_wait_exit 20
check "mig: source ends with 0 after the handover ($VM_STATUS)" [ "$VM_STATUS" = 0 ]
CON=$WORK/rx-console.log API=$RX_API
check "mig: the destination's guest verifies its disk" disk_passes_since 0 2
check "mig: no DISK FAIL on the destination" no_disk_fail
check "mig: the generation ID stays (same VM)" bash -c "! grep -aq changed '$CON'"
ctl quit >/dev/null
check "mig: receiver exits 0" [ "$(rx_status rx)" = 0 ]
check "mig: the source's console had no DISK FAIL" bash -c "! grep -aqE 'DISK (FAIL|ERR)' '$WORK/mig/console.log'"
: "$genm"

# 4. virtio-net: heartbeat frames on the tap, with the MAC asked for.
TAP=vst$$
ip tuntap add dev "$TAP" mode tap && ip link set "$TAP" up
check "net: tap $TAP created" ip link show "$TAP"
"$TAPWATCH" -i "$TAP" -t 15 -n 10 -s "$WORK/tap.json" >"$WORK/tap.log" 2>&1 &
TW=$!
PIDS+=("$TW")
sleep 0.3
vm_boot net 1 64M "cpus=1 net=hb net_ms=50" --net "tap=$TAP,mac=02:12:34:56:78:9a"
check "net: guest reports its MAC" wait_line "NET mac=02:12:34:56:78:9a" 20
wait "$TW"; st=$?
check "net: the host reader saw 10 heartbeat frames (exit $st)" [ $st -eq 0 ]
check "net: frames come from the guest's MAC" grep -q "^[0-9]* 02:12:34:56:78:9a VMSNAP-HB seq=" "$WORK/tap.log"
ctl quit >/dev/null; vm_wait_exit 20
ip link del "$TAP" 2>/dev/null

# 5. Bad input: one line, non-zero, nothing runs.
bad() { # bad WHAT STATUS PATTERN vmsnap-args...
	local what=$1 want=$2 pat=$3; shift 3
	timeout 20 "$VMSNAP" "$@" >/dev/null 2>"$WORK/bad.err" </dev/null
	local st=$?
	check "bad input: $what: exit $want (got $st)" [ $st -eq "$want" ]
	check "bad input: $what: one line matching '$pat' ($(head -c 200 "$WORK/bad.err"))" \
		bash -c "[ \$(wc -l <'$WORK/bad.err') -eq 1 ] && grep -q -- '$pat' '$WORK/bad.err'"
}
RUN=(run --kernel "$GUEST" --mem 64M --console /dev/null)
bad "missing disk" 1 "no/such" "${RUN[@]}" --disk "$WORK/no/such.raw"
head -c 100 /dev/zero >"$WORK/tiny.raw"
bad "disk under a sector" 1 "512" "${RUN[@]}" --disk "$WORK/tiny.raw"
truncate -s 1M "$WORK/other.raw"
bad "overlay on another base" 1 "overlay" "${RUN[@]}" --disk "$WORK/other.raw,overlay=$D/vm.ovl"
bad "unknown disk option" 2 "unknown option" "${RUN[@]}" --disk "$D/base.raw,cache=none"
bad "bad MAC" 2 "mac" "${RUN[@]}" --net "tap=x0,mac=01:00:00:00:00:01"
bad "unknown net key" 2 "net" "${RUN[@]}" --net "tap=x0,queues=4"
finish
