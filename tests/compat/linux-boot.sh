#!/bin/bash
# SPDX-License-Identifier: MIT
#
# Boot Debian's stock kernel with a busybox initramfs, as a bzImage and as a vmlinux (PVH),
# under vmsnap and under QEMU, and print for each run the last kernel log line and how long
# it ran. Not run by CI (it takes minutes); see docs/BOOT.md for what to expect on PVM hosts.
#
# usage: tests/compat/linux-boot.sh            (as root, for /dev/kvm)
# environment:
#   VMSNAP   vmsnap binary (default build/vmsnap); its cases are skipped when it is missing
#   KERNEL   bzImage (default: the newest /boot/vmlinuz-*)
#   TIMEOUT  seconds per run (default 90)
#   WORK     scratch directory (default: a new one under /tmp, kept for the console logs)
#   CASES    which runs, space separated (default: all of
#            "vmsnap-bzimage vmsnap-pvh qemu-microvm-pvh qemu-pc-bzimage qemu-tcg-pvh")
#   CPU      QEMU -cpu for the KVM runs (default host without CX16 and XSAVE, which the PVM
#            instruction emulator cannot run)
set -u

SRC_DIR=${SRC_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
VMSNAP=${VMSNAP:-$SRC_DIR/build/vmsnap}
KERNEL=${KERNEL:-$(ls /boot/vmlinuz-* 2>/dev/null | sort -V | tail -n 1)}
TIMEOUT=${TIMEOUT:-90}
WORK=${WORK:-$(mktemp -d /tmp/vmsnap-linux-boot.XXXXXX)}
CASES=${CASES:-vmsnap-bzimage vmsnap-pvh qemu-microvm-pvh qemu-pc-bzimage qemu-tcg-pvh}
CPU=${CPU:-host,-cx16,-xsave,-xsaveopt,-xsavec,-xsaves,-avx,-avx2}
CMDLINE=${CMDLINE:-console=ttyS0 earlyprintk=ttyS0 panic=-1 reboot=t rdinit=/init loglevel=8}
MARK="VMSNAP-COMPAT: userspace reached"

die() { echo "linux-boot: $*" >&2; exit 1; }

[ -n "$KERNEL" ] && [ -r "$KERNEL" ] || die "no kernel: install linux-image-amd64 or set KERNEL"
mkdir -p "$WORK" || die "cannot create $WORK"

# The kernel's scripts/extract-vmlinux technique: find each compression magic in the bzImage,
# decompress from there, keep the first result that is an ELF file.
extract_vmlinux() {
	local in=$1 out=$2 magic tool pos
	while read -r magic tool; do
		for pos in $(LC_ALL=C grep -obUaP "$magic" "$in" 2>/dev/null | cut -d: -f1); do
			tail -c +"$((pos + 1))" "$in" | $tool > "$out" 2>/dev/null
			if [ "$(head -c 4 "$out" | od -An -tx1 | tr -d ' ')" = 7f454c46 ]; then
				echo "linux-boot: vmlinux extracted with '$tool' at offset $pos" >&2
				return 0
			fi
		done
	done <<-'EOF'
		\x1f\x8b\x08 gunzip
		\xfd7zXZ\x00 unxz
		BZh bunzip2
		\x5d\x00\x00\x00 unlzma
		\x89LZO lzop -d
		\x02\x21\x4c\x18 lz4 -d
		\x28\xb5\x2f\xfd unzstd
	EOF
	rm -f "$out"
	return 1
}

build_initramfs() {
	local out=$1 root="$WORK/initramfs" bb
	bb=$(command -v busybox) || true
	if [ -z "$bb" ] || ! file -L "$bb" 2>/dev/null | grep -q 'statically linked'; then
		[ -x /bin/busybox ] && file -L /bin/busybox | grep -q 'statically linked' ||
			apt-get install -y busybox-static >&2 || die "busybox-static missing"
		bb=/bin/busybox
	fi
	rm -rf "$root"
	mkdir -p "$root"/{bin,dev,proc,sys} || return 1
	cp "$bb" "$root/bin/busybox"
	ln -s busybox "$root/bin/sh"
	cat > "$root/init" <<-EOF
		#!/bin/sh
		/bin/busybox mount -t proc proc /proc
		/bin/busybox mount -t sysfs sys /sys
		echo "$MARK, \$(/bin/busybox nproc) CPUs, up \$(/bin/busybox cut -d' ' -f1 /proc/uptime) s"
		/bin/busybox reboot -f
	EOF
	chmod +x "$root/init"
	(cd "$root" && find . | "$bb" cpio -o -H newc 2>/dev/null | gzip -9) > "$out"
}

# run NAME LOGFILE COMMAND...: run with a timeout, then report.
run_case() {
	local name=$1 log=$2 t0 t1 rc how last
	shift 2
	rm -f "$log"
	t0=$(date +%s.%N)
	timeout -k 5 "$TIMEOUT" "$@" > "$WORK/$name.out" 2>&1 < /dev/null
	rc=$?
	t1=$(date +%s.%N)
	case $rc in
	0) how="exited" ;;
	124 | 137) how="timed out" ;;
	*) how="failed (status $rc)" ;;
	esac
	[ -e "$log" ] || : > "$log"
	last=$(tr -d '\r' < "$log" 2>/dev/null | grep -aE '^\[ *[0-9]+\.[0-9]+\]' | tail -n 1)
	printf '%-18s %s after %.1f s, %s console lines\n' "$name" "$how" \
		"$(echo "$t1 - $t0" | bc)" "$(wc -l < "$log" 2>/dev/null || echo 0)"
	printf '  last kernel line: %s\n' "${last:-(none)}"
	if grep -aq "$MARK" "$log" 2>/dev/null; then
		printf '  %s\n' "$(grep -a "$MARK" "$log" | tr -d '\r' | head -n 1)"
	fi
	if [ $rc -ne 0 ] && [ $rc -ne 124 ] && [ $rc -ne 137 ]; then
		printf '  stderr: %s\n' "$(tail -n 2 "$WORK/$name.out" | tr '\n' ' ')"
	fi
}

VMLINUX=$WORK/vmlinux
INITRD=$WORK/initramfs.cpio.gz
extract_vmlinux "$KERNEL" "$VMLINUX" || die "cannot extract vmlinux from $KERNEL"
build_initramfs "$INITRD" || die "cannot build the initramfs"
echo "linux-boot: kernel $KERNEL, initramfs $(stat -c %s "$INITRD") bytes, logs in $WORK"
echo "linux-boot: command line: $CMDLINE; timeout ${TIMEOUT} s"

QEMU_COMMON=(-m 512 -smp 2 -display none -monitor none -no-reboot -nodefaults)
for c in $CASES; do
	log="$WORK/$c.console"
	case $c in
	vmsnap-bzimage | vmsnap-pvh)
		if [ ! -x "$VMSNAP" ]; then
			echo "$c: skipped, no vmsnap binary at $VMSNAP (set VMSNAP)"
			continue
		fi
		k=$KERNEL
		[ $c = vmsnap-pvh ] && k=$VMLINUX
		run_case $c "$log" "$VMSNAP" run --kernel "$k" --initrd "$INITRD" \
			--cmdline "$CMDLINE" --mem 512M --cpus 2 --cpu-template baseline \
			--console "$log"
		;;
	qemu-microvm-pvh)
		run_case $c "$log" qemu-system-x86_64 -M microvm,acpi=off -enable-kvm -cpu "$CPU" \
			"${QEMU_COMMON[@]}" -serial "file:$log" \
			-kernel "$VMLINUX" -initrd "$INITRD" -append "$CMDLINE"
		;;
	qemu-pc-bzimage)
		run_case $c "$log" qemu-system-x86_64 -M pc -enable-kvm -cpu "$CPU" \
			"${QEMU_COMMON[@]}" -serial "file:$log" \
			-kernel "$KERNEL" -initrd "$INITRD" -append "$CMDLINE"
		;;
	qemu-tcg-pvh)
		# The reference: pure emulation reaches userspace in ~3 s (acpi=off: with ACPI, microvm
		# under TCG stalls after "Marking TSC unstable"; without it Linux uses the MP table,
		# as it does under vmsnap).
		run_case $c "$log" qemu-system-x86_64 -M microvm,acpi=off -accel tcg \
			"${QEMU_COMMON[@]}" -serial "file:$log" \
			-kernel "$VMLINUX" -initrd "$INITRD" -append "$CMDLINE"
		;;
	*)
		echo "$c: unknown case"
		;;
	esac
done
