#!/usr/bin/env bash
# vmsnap demo: the one command of the README. On Debian 12 (as root, or a user with sudo and
# access to /dev/kvm) it installs the build dependencies (scripts/deps.sh), builds everything
# into build/ (release), then runs the main job on the bundled test guest:
#
#   boot     the test guest on 2 vCPUs with the memory dirtier, periodic verify and a control
#            socket; show its boot line, heartbeat statistics and VERIFY OK lines
#   pause    through `vmsnap ctl SOCKET pause`; show that heartbeats stop and what status says
#   resume   heartbeats continue, memory still verifies; hbwatch measures the pause as a gap
#   save     `vmsnap save` writes the running VM to an image (the guest pauses briefly); then
#            the first VM quits (exit status 0)
#   restore  `vmsnap restore` continues the guest from the image in a new process (memory
#            mapped copy-on-write): heartbeats from every vCPU, memory still verifies
#   migrate  `vmsnap migrate` moves the restored VM live to a `vmsnap receive` over loopback;
#            the source exits 0, the guest runs on at the destination and verifies
#   quit     through the destination's control socket; vmsnap must exit 0
#
# usage: scripts/demo.sh [--no-setup]     (--no-setup: skip deps and build, use build/ as is)
# Exits 0 when every step passed, 1 otherwise (the console log is kept then). About 10 s after
# the build. Later issues add steps (clone, ...): see STEPS below.
# shellcheck disable=SC2317 # steps and helpers are called indirectly (STEPS, trap)
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
SRC=$(pwd)

SETUP=1
case "${1:-}" in
--no-setup) SETUP=0 ;;
"") ;;
-h | --help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
*) echo "demo.sh: unknown option '$1' (try --help)" >&2; exit 2 ;;
esac

BUILD=$SRC/build
VMSNAP=$BUILD/vmsnap
GUEST=$BUILD/tests/guest/guest.elf
HBWATCH=$BUILD/tests/hbwatch
CPUS=2
MEM=256M
GUEST_CMDLINE="cpus=$CPUS workload=dirty wss=64 rate=256 verify=500ms status=1s disk=verify disk_mib=4 disk_rate=4"
PAUSE_S=2

WORK=$(mktemp -d /tmp/vmsnap-demo.XXXXXX) # mode 0700: only we can reach the control socket
CON=$WORK/console.log
SUM=$WORK/hbwatch.json
API=$WORK/vm.sock
VM_PID=
WATCH_PID=
FAILED=
T_START=$(date +%s.%N)
calc() { awk "BEGIN { printf \"%.3f\", $* }"; } # no bc on a fresh Debian

if [ -t 1 ]; then B=$'\e[1m' G=$'\e[32m' R=$'\e[31m' D=$'\e[2m' N=$'\e[0m'; else B='' G='' R='' D='' N=''; fi
STEP_NO=0
header() { STEP_NO=$((STEP_NO + 1)); printf '\n%s== %d. %s%s\n' "$B" "$STEP_NO" "$1" "$N"; }
say() { printf '   %s\n' "$*"; }
ok() { printf '   %sok%s  %s\n' "$G" "$N" "$*"; }
shown() { printf '   %s$ %s%s\n' "$D" "$*" "$N"; } # a command the user could type
guest() { sed 's/^/   guest| /'; }                  # console lines, indented
fail() {
	printf '   %sFAIL%s %s\n' "$R" "$N" "$*"
	FAILED=${FAILED:-$*}
	return 1
}

cleanup() {
	[ -n "$VM_PID" ] && kill -9 "$VM_PID" 2>/dev/null
	[ -n "$WATCH_PID" ] && kill "$WATCH_PID" 2>/dev/null
	wait 2>/dev/null
	if [ -z "$FAILED" ]; then rm -rf "$WORK"; fi
}
trap cleanup EXIT

# --- helpers ---------------------------------------------------------------------------------
con_size() { stat -c %s "$CON"; }
# Heartbeat tokens in the console log from byte offset $1 on (text lines start upper-case).
heartbeats_since() { tail -c +"$(($1 + 1))" "$CON" | grep -aE '^[a-p]+$' | tr -d '\n' | wc -c; }
# Text lines of the console from offset $1 matching the regex $2.
lines_since() { tail -c +"$(($1 + 1))" "$CON" | grep -aE "$2"; }
# wait_for STR COUNT TIMEOUT OFFSET: wait for COUNT console lines containing STR.
wait_for() {
	"$HBWATCH" -w "$CON" -F "$1" -n "$2" -t "$3" -o "${4:-0}" -f PANIC -f 'VERIFY FAIL' >/dev/null
}
ctl() { "$VMSNAP" ctl --timeout 10000 "$API" "$@"; }
# Show a ctl command and its reply; fail the step if it fails.
ctl_shown() {
	shown "vmsnap ctl \$SOCK $*"
	local out
	out=$(ctl "$@" 2>&1) || { printf '%s\n' "$out" | sed 's/^/     /'; fail "vmsnap ctl $*"; return 1; }
	printf '%s\n' "$out" | sed 's/^/     /'
}
# New hbwatch measurement window (SIGUSR2) and, later, its summary as JSON (SIGUSR1).
hb_window() { kill -USR2 "$WATCH_PID"; sleep 0.05; }
hb_summary() {
	rm -f "$SUM"
	kill -USR1 "$WATCH_PID" || return 1
	for _ in $(seq 50); do [ -s "$SUM" ] && return 0; sleep 0.02; done
	return 1
}
# hb_field KEY: a field of the last summary (python3 is installed by deps.sh).
hb_field() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$SUM" "$1"; }
hb_report() { # one readable line about the last summary
	python3 - "$SUM" <<-'EOF'
		import json, sys
		s = json.load(open(sys.argv[1]))
		per = ", ".join("cpu%d %d" % (c["cpu"], c["heartbeats"]) for c in s["cpus"])
		rate = s["heartbeats"] / s["window_s"] / max(len(s["cpus"]), 1) if s["window_s"] else 0
		print("heartbeats: %d in %.2f s (%s), %.0f/s per vCPU; largest gap %.1f ms, "
		      "gaps over 10 ms: %d" % (s["heartbeats"], s["window_s"], per, rate,
		      s["max_gap_ms"], s["gaps_over_10ms"]))
	EOF
}

# --- steps -----------------------------------------------------------------------------------
step_preflight() {
	header "check the machine"
	# shellcheck disable=SC1091
	if [ -r /etc/os-release ]; then say "$(. /etc/os-release && echo "$PRETTY_NAME"), $(nproc) CPUs, kernel $(uname -r)"; fi
	command -v apt-get >/dev/null || say "no apt-get: install the packages of scripts/deps.sh by hand"
	if [ ! -c /dev/kvm ]; then
		fail "/dev/kvm does not exist: vmsnap needs KVM (load kvm_intel/kvm_amd, or enable nested virtualization)"
		return 1
	fi
	if [ ! -r /dev/kvm ] || [ ! -w /dev/kvm ]; then
		fail "/dev/kvm is not usable by $(id -un): run as root or join the 'kvm' group"
		return 1
	fi
	ok "/dev/kvm is usable"
}

step_deps() {
	header "install build dependencies (scripts/deps.sh)"
	shown scripts/deps.sh
	scripts/deps.sh 2>&1 | sed 's/^/     /'
	[ "${PIPESTATUS[0]}" -eq 0 ] || { fail "scripts/deps.sh"; return 1; }
	ok "dependencies present"
}

step_build() {
	header "build (release, into build/)"
	local t0 jobs
	t0=$(date +%s.%N)
	jobs=$(nproc)
	shown "cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo && cmake --build build -j$jobs"
	if ! cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=RelWithDebInfo >"$WORK/configure.log" 2>&1; then
		tail -20 "$WORK/configure.log"
		fail "cmake configure (log: $WORK/configure.log)"
		return 1
	fi
	if ! cmake --build "$BUILD" -j"$jobs" >"$WORK/build.log" 2>&1; then
		tail -30 "$WORK/build.log"
		fail "build (log: $WORK/build.log)"
		return 1
	fi
	ok "built in $(printf '%.0f' "$(calc "$(date +%s.%N) - $t0")") s: build/vmsnap, build/tests/guest/guest.elf, build/tests/hbwatch"
}

# start_vm NAME CMD...: run a vmsnap command whose console goes through hbwatch into
# $WORK/NAME.console; sets CON, SUM, VM_PID, WATCH_PID, VM_STATUS_FILE.
start_vm() {
	local name=$1
	shift
	CON=$WORK/$name.console
	SUM=$WORK/$name.hbwatch.json
	VM_STATUS_FILE=$WORK/$name.status
	: >"$CON"
	mkfifo "$WORK/$name.fifo"
	"$HBWATCH" -l "$CON" -j -s "$SUM" <"$WORK/$name.fifo" >/dev/null 2>&1 &
	WATCH_PID=$!
	( "$@" >"$WORK/$name.fifo" 2>"$WORK/$name.err" </dev/null
	  echo "$?" >"$VM_STATUS_FILE" ) &
	VM_PID=$!
}

# wait_vm_exit NAME: wait up to 10 s for the VM started last to end; prints its status.
wait_vm_exit() {
	local i=0
	while kill -0 "$VM_PID" 2>/dev/null && [ "$i" -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
	if kill -0 "$VM_PID" 2>/dev/null; then echo timeout; return; fi
	wait "$VM_PID" 2>/dev/null
	VM_PID=
	wait "$WATCH_PID" 2>/dev/null
	WATCH_PID=
	for _ in $(seq 50); do [ -s "$VM_STATUS_FILE" ] && break; sleep 0.1; done
	cat "$VM_STATUS_FILE" 2>/dev/null || echo unknown
}

step_boot() {
	header "boot the test guest: $CPUS vCPUs, $MEM, memory dirtier with verify every 500 ms, a disk"
	local f
	for f in "$VMSNAP" "$GUEST" "$HBWATCH"; do
		[ -x "$f" ] || [ -f "$f" ] || { fail "$f is missing (build first)"; return 1; }
	done
	shown "vmsnap run --kernel build/tests/guest/guest.elf --cpus $CPUS --mem $MEM \\"
	shown "    --cmdline '$GUEST_CMDLINE' --api \$SOCK \\"
	shown "    --disk disk.raw,overlay=disk.ovl | hbwatch -l console.log -j -s hbwatch.json"
	truncate -s 64M "$WORK/disk.raw"
	start_vm boot "$VMSNAP" run --kernel "$GUEST" --cpus "$CPUS" --mem "$MEM" \
		--cmdline "$GUEST_CMDLINE" --api "$API" --disk "$WORK/disk.raw,overlay=$WORK/disk.ovl"
	if ! wait_for READY 1 20; then
		cat "$WORK/boot.err"
		fail "the guest did not print READY within 20 s"
		return 1
	fi
	lines_since 0 '^(BOOT|ACPI|GENID|DISK setup|READY)' | guest
	ok "guest is up: all $CPUS vCPUs in ring 3, its disk found through ACPI"
	local off
	off=$(con_size)
	hb_window
	wait_for "VERIFY OK" 2 10 "$off" || { fail "no VERIFY OK after boot"; return 1; }
	sleep 0.1
	wait_for "DISK OK" 2 10 "$off" || { fail "no DISK OK after boot"; return 1; }
	lines_since "$off" '^(STATUS|VERIFY|DISK)' | tail -4 | guest
	hb_summary || { fail "no heartbeat summary from hbwatch"; return 1; }
	say "$(hb_report)"
	[ "$(hb_field heartbeats)" -gt 0 ] || { fail "no heartbeats"; return 1; }
	ok "heartbeats flowing, memory and disk verified"
}

step_pause() {
	header "pause through the control socket (for $PAUSE_S s)"
	hb_window
	T_PAUSE=$(date +%s.%N)
	ctl_shown pause || return 1
	ctl_shown status || return 1
	ctl status | grep -q 'state: paused' || { fail "status does not say paused"; return 1; }
	sleep 0.2 # bytes already in the pipe drain
	local off n
	off=$(con_size)
	sleep "$(calc "$PAUSE_S - 0.2")"
	n=$(heartbeats_since "$off")
	say "heartbeats in the last $(printf '%.1f' "$(calc "$PAUSE_S - 0.2")") s: $n"
	[ "$n" -eq 0 ] || { fail "$n heartbeats arrived while paused"; return 1; }
	ok "paused: no heartbeats"
}

step_resume() {
	header "resume"
	local off n gap held
	off=$(con_size)
	ctl_shown resume || return 1
	held=$(calc "($(date +%s.%N) - $T_PAUSE) * 1000")
	wait_for "VERIFY OK" 2 10 "$off" || { fail "no VERIFY OK after resume"; return 1; }
	lines_since "$off" '^(STATUS|VERIFY)' | guest
	n=$(heartbeats_since "$off")
	say "heartbeats since resume: $n"
	[ "$n" -gt 100 ] || { fail "only $n heartbeats after resume"; return 1; }
	hb_summary || { fail "no heartbeat summary from hbwatch"; return 1; }
	gap=$(hb_field max_gap_ms)
	say "hbwatch: largest heartbeat gap since just before pause: $(printf '%.0f' "$gap") ms" \
		"(pause to resume, seen by this script: $(printf '%.0f' "$held") ms)"
	python3 -c "import sys; sys.exit(0 if float('$gap') >= 1000 * ($PAUSE_S - 0.2) else 1)" ||
		{ fail "the pause does not show as a heartbeat gap ($gap ms)"; return 1; }
	ok "running again, memory still verifies"
}

# quit_vm WHAT: quit the VM serving $API; it must exit 0 with no verify failure on its console.
quit_vm() {
	ctl_shown quit || return 1
	local st
	st=$(wait_vm_exit)
	say "$1 exit status: $st"
	[ "$st" = 0 ] || { cat "$WORK"/*.err; fail "$1 exited with status $st"; return 1; }
	if grep -aqE '^(VERIFY FAIL|PANIC)' "$CON"; then
		grep -aE '^(VERIFY FAIL|PANIC)' "$CON" | head | guest
		fail "the console shows a verify failure or a panic"
		return 1
	fi
	ok "exited 0; $(grep -ac '^VERIFY OK' "$CON") VERIFY OK, no VERIFY FAIL, no PANIC"
}

step_save() {
	header "save the running VM to an image (its disk frozen with it)"
	IMAGE=$WORK/demo.vmsnap
	hb_window
	shown "vmsnap save --api \$SOCK demo.vmsnap"
	"$VMSNAP" save --api "$API" "$IMAGE" 2>&1 | tail -3 | sed 's/^/   /' ||
		{ fail "vmsnap save failed"; return 1; }
	[ -s "$IMAGE" ] || { fail "no image written"; return 1; }
	FROZEN=$(ls "$IMAGE".disk0-* 2>/dev/null | head -1)
	[ -n "$FROZEN" ] || { fail "the save froze no disk layer"; return 1; }
	say "disk frozen as $(basename "$FROZEN"); the VM went on writing a new disk.ovl"
	hb_summary || { fail "no heartbeat summary from hbwatch"; return 1; }
	say "guest-observed pause (largest heartbeat gap): $(printf '%.1f' "$(hb_field max_gap_ms)") ms"
	shown "vmsnap verify demo.vmsnap"
	"$VMSNAP" verify "$IMAGE" | sed 's/^/   /' || { fail "the image does not verify"; return 1; }
	say "image: $(du -h --apparent-size "$IMAGE" | cut -f1) apparent, $(du -h "$IMAGE" | cut -f1) on disk (zero pages are holes)"
	header "quit the original VM (the image keeps it)"
	quit_vm "vmsnap run"
}

step_restore() {
	header "restore the image in a new process (memory mapped copy-on-write)"
	API=$WORK/restored.sock
	shown "vmsnap restore demo.vmsnap --memory-mode mmap --api \$SOCK2 --disk-overlay restored.ovl"
	start_vm restored "$VMSNAP" restore "$IMAGE" --memory-mode mmap --api "$API" \
		--disk-overlay "$WORK/restored.ovl"
	wait_for "VERIFY OK" 1 20 || { cat "$WORK/restored.err"; fail "no VERIFY OK after restore"; return 1; }
	wait_for "DISK OK" 1 20 || { fail "no DISK OK after restore"; return 1; }
	lines_since 0 '^GENID' | guest
	sleep 0.5
	local c n
	for c in $(seq 0 $((CPUS - 1))); do
		n=$(grep -aE '^[a-p]+$' "$CON" | tr -cd "$(printf "\\$(printf %o $((97 + c)))")" | wc -c)
		say "vCPU $c heartbeats since restore: $n"
		[ "$n" -gt 0 ] || { fail "no heartbeats from vCPU $c after restore"; return 1; }
	done
	lines_since 0 '^(STATUS|VERIFY)' | tail -3 | guest
	ok "the guest continued where it was saved (a new generation ID); memory and disk verify"
}

step_migrate() {
	header "live-migrate the restored VM to a receiver on 127.0.0.1"
	local src_pid=$VM_PID src_watch=$WATCH_PID src_status=$VM_STATUS_FILE src_api=$API src_con=$CON
	API=$WORK/dest.sock
	shown "vmsnap receive --listen 127.0.0.1:0 --api \$SOCK3 --disk $(basename "$FROZEN"),overlay=restored.ovl &"
	start_vm dest "$VMSNAP" receive --listen 127.0.0.1:0 --port-file "$WORK/port" --api "$API" \
		--disk "$FROZEN,overlay=$WORK/restored.ovl"
	local i=0
	while [ ! -s "$WORK/port" ] && [ "$i" -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
	[ -s "$WORK/port" ] || { cat "$WORK/dest.err"; fail "the receiver did not start"; return 1; }
	shown "vmsnap migrate --api \$SOCK2 --to 127.0.0.1:$(cat "$WORK/port")"
	"$VMSNAP" migrate --api "$src_api" --to "127.0.0.1:$(cat "$WORK/port")" -q --json \
		>"$WORK/migrate.json" 2>"$WORK/migrate.err" || { cat "$WORK/migrate.err"; fail "vmsnap migrate failed"; return 1; }
	python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print("   " + ", ".join(f"{k}={d[k]}" for k in ("elapsed_ms", "round", "downtime_ms", "downtime_target_ms", "bytes_sent", "transport") if k in d))' "$WORK/migrate.json"
	wait_for "VERIFY OK" 1 20 || { cat "$WORK/dest.err"; fail "no VERIFY OK at the destination"; return 1; }
	wait_for "DISK OK" 1 20 || { fail "no DISK OK at the destination"; return 1; }
	ok "the guest runs at the destination; memory and disk verify"
	# The source ends by itself once the destination confirmed.
	i=0
	while kill -0 "$src_pid" 2>/dev/null && [ "$i" -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
	wait "$src_watch" 2>/dev/null
	local st
	st=$(cat "$src_status" 2>/dev/null || echo unknown)
	say "source vmsnap exit status: $st"
	[ "$st" = 0 ] || { cat "$WORK/restored.err"; fail "the source exited with status $st"; return 1; }
	grep -aqE '^(VERIFY FAIL|PANIC)' "$src_con" && { fail "the source's console shows a failure"; return 1; }
	ok "source exited 0 after the handover"
}

step_quit() {
	header "quit the migrated VM through its control socket"
	quit_vm "vmsnap receive"
}

step_clone() {
	header "clone the saved image 4 times (copy-on-write memory, own disk overlays and IDs)"
	export VMSNAP_RUN_DIR=$WORK/run
	shown "vmsnap clone demo.vmsnap --count 4 --dir clones"
	"$VMSNAP" clone "$IMAGE" --count 4 --dir "$WORK/clones" 2>&1 | sed 's/^/   /'
	[ "${PIPESTATUS[0]}" = 0 ] || { fail "vmsnap clone failed"; return 1; }
	shown "vmsnap ps"
	"$VMSNAP" ps | sed 's/^/   /'
	local i c
	for i in 0 1 2 3; do
		c=$WORK/clones/clone$i.console
		"$HBWATCH" -w "$c" -F "DISK OK" -n 2 -t 20 -f PANIC -f 'VERIFY FAIL' -f 'DISK FAIL' >/dev/null &&
			"$HBWATCH" -w "$c" -F "VERIFY OK" -t 20 -f PANIC -f 'VERIFY FAIL' >/dev/null ||
			{ fail "clone$i does not verify"; return 1; }
		say "clone$i: $(grep -a '^GENID' "$c" | tail -1); memory and disk verify"
	done
	[ "$(grep -ah '^GENID.*changed' "$WORK"/clones/*.console | sort -u | wc -l)" = 4 ] ||
		{ fail "the clones do not have 4 different generation IDs"; return 1; }
	for i in 0 1 2 3; do "$VMSNAP" ctl "$WORK/clones/clone$i.sock" quit >/dev/null; done
	for i in $(seq 50); do [ "$("$VMSNAP" ps --json | grep -o '"pid"' | wc -l)" = 0 ] && break; sleep 0.1; done
	ok "4 clones ran with their own generation IDs and disks, then quit"
}

STEPS=(step_preflight)
[ "$SETUP" -eq 1 ] && STEPS+=(step_deps step_build)
STEPS+=(step_boot step_pause step_resume step_save step_restore step_migrate step_quit step_clone)

for s in "${STEPS[@]}"; do
	"$s" || break
done

elapsed=$(printf '%.1f' "$(calc "$(date +%s.%N) - $T_START")")
echo
if [ -z "$FAILED" ]; then
	printf '%sdemo: PASS%s: %d steps in %s s: booted %d vCPUs with a disk, paused, resumed, saved, restored, migrated, quit with status 0, cloned 4 times\n' \
		"$G" "$N" "$STEP_NO" "$elapsed" "$CPUS"
	exit 0
fi
printf '%sdemo: FAIL%s at step %d: %s (after %s s; console log and vmsnap stderr in %s)\n' \
	"$R" "$N" "$STEP_NO" "$FAILED" "$elapsed" "$WORK"
exit 1
