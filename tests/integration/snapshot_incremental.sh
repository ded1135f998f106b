#!/usr/bin/env bash
# Incremental snapshots (docs/SNAPSHOT.md): a 4-vCPU test guest running the dirtier with
# verify is saved as a base with --track, then as children holding only the pages written
# since (one of them live). The chain base -> child1 -> child2 -> child3 restores (mmap and
# eager) to a guest that verifies; children are much smaller than the base; `vmsnap merge`
# flattens the chain into one image that verifies and restores; the chain can move as a
# directory; a replaced, corrupt or missing parent is refused with one clear line naming it.
. "$(dirname "$0")/lib.bash"
. "$(dirname "$0")/snapshot_lib.bash"
require_kvm

CPUS=4
field() { json_field "$WORK/save.json" "$1"; }
mkdir -p "$WORK/chain"

vm_boot src $CPUS 256M "workload=dirty wss=128 rate=8 verify=300ms"
check "source READY" wait_line READY 30
check "source verified once" wait_line "VERIFY OK" 30
sleep 17 # the dirtier's first pass touches all 128 MiB of its working set (8 MiB/s)

out=$("$VMSNAP" save --api "$API" "$WORK/early.img" --incremental 2>&1); st=$?
check "--incremental before any --track refused ($out)" \
	[ $st = 1 ] && grep -q "save it with --track first" <<<"$out" && [ ! -e "$WORK/early.img" ]

check "base: save --track" save_image "$WORK/chain/base.img" --track
check "base: tracking reported" grep -q '"tracking":true' "$WORK/save.json"
base_bytes=$(field bytes_written)
echo "base: $base_bytes bytes written, pause $(field pause_ms) ms"
for i in 1 2 3; do
	extra=(); [ $i = 3 ] && extra=(--live)
	parent=(); [ $i = 2 ] && parent=(--parent "$WORK/chain/child1.img")
	check "child$i: save --incremental ${extra[*]} ${parent[*]}" \
		save_image "$WORK/chain/child$i.img" --incremental "${extra[@]}" "${parent[@]}"
	cat "$WORK/save.err" >&2
	b=$(field bytes_written)
	echo "child$i: $b bytes written (base $base_bytes), $(field pages_data) pages stored," \
		"$(field pages_parent) left to parent '$(field parent)', pause $(field pause_ms) ms"
	check "child$i is much smaller than the base ($b < $base_bytes / 4)" [ "$b" -lt $((base_bytes / 4)) ]
	check "child$i records its parent by name" [ "$(field parent)" = "$([ $i = 1 ] && echo base || echo child$((i - 1))).img" ]
done
for i in 1 2 3; do check "child$i verifies" "$VMSNAP" verify "$WORK/chain/child$i.img"; done
check "inspect shows child3 as incremental" bash -c "'$VMSNAP' inspect '$WORK/chain/child3.img' | grep -q 'format: *1.0 (incremental)'"
out=$("$VMSNAP" save --api "$API" "$WORK/bad.img" --incremental --parent "$WORK/chain/base.img" 2>&1); st=$?
check "--incremental against a parent that is not the tracked base refused ($out)" \
	[ $st = 1 ] && grep -q "is not the image this VM's changes are tracked against" <<<"$out"
check "source keeps running" bash -c "'$VMSNAP' ctl '$API' status | grep -q 'state: running'"
check "save-untrack answers" bash -c "'$VMSNAP' ctl '$API' save-untrack | grep -q 'was_tracking: true'"
out=$("$VMSNAP" save --api "$API" "$WORK/bad.img" --incremental 2>&1)
check "after save-untrack, --incremental is refused" grep -q "track" <<<"$out"
check "no VERIFY FAIL or PANIC on the source" no_failures
ctl quit >/dev/null; vm_wait_exit 20

for mode in mmap eager; do
	vm_restore "chain-$mode" "$WORK/chain/child3.img" --memory-mode $mode -v
	check "$mode: chain of 4 restores, verify passes" wait_line "VERIFY OK" 30
	sleep 0.5
	check "$mode: every vCPU's heartbeats continue" every_cpu_beats $CPUS 0
	check "$mode: no VERIFY FAIL or PANIC" no_failures
	grep -h "restored" "$VM_ERR"
	if [ $mode = mmap ]; then
		out=$("$VMSNAP" save --api "$API" "$WORK/x.img" --incremental 2>&1)
		check "a restored VM has no tracked base: --incremental refused" grep -q "track" <<<"$out"
	fi
	ctl quit >/dev/null; vm_wait_exit 20
	check "$mode: quits cleanly ($VM_STATUS)" [ "$VM_STATUS" = 0 ]
done

check "merge child3 -> merged.img" bash -c "'$VMSNAP' merge --json '$WORK/chain/child3.img' '$WORK/merged.img' >'$WORK/merge.json'"
cat "$WORK/merge.json"
check "merge reports a chain of 4" grep -q '"chain":4' "$WORK/merge.json"
check "merged image verifies" "$VMSNAP" verify "$WORK/merged.img"
check "merged image is a full image" bash -c "'$VMSNAP' inspect '$WORK/merged.img' | grep -E '^format:|from parent' | grep -v incremental | grep -q ' 0 from parent'"
check "merge --compress" "$VMSNAP" merge --compress "$WORK/chain/child3.img" "$WORK/merged-lz4.img"
check "compressed merge verifies" "$VMSNAP" verify "$WORK/merged-lz4.img"
vm_restore merged "$WORK/merged.img"
check "merged: verify after restore is OK" wait_line "VERIFY OK" 30
sleep 0.5
check "merged: every vCPU's heartbeats continue" every_cpu_beats $CPUS 0
check "merged: no VERIFY FAIL or PANIC" no_failures
ctl quit >/dev/null; vm_wait_exit 20

# The chain moves as a directory (parents are recorded by name).
cp -r "$WORK/chain" "$WORK/moved"
vm_restore moved "$WORK/moved/child2.img" --memory-mode eager
check "moved chain (child2) restores and verifies" wait_line "VERIFY OK" 30
ctl quit >/dev/null; vm_wait_exit 20

# refused DIR CHILD PATTERN WHAT: restoring CHILD fails with one line matching PATTERN.
refused() {
	local out st
	out=$("$VMSNAP" restore "$2" 2>&1 </dev/null >/dev/null); st=$?
	check "$4 refused (exit $st): $out" [ "$st" = 1 ] && grep -q "$3" <<<"$out"
	check "$4: the message is one line" [ "$(wc -l <<<"$out")" = 1 ]
}
cp "$WORK/chain/base.img" "$WORK/moved/child1.img" # another valid image in child1's place
refused moved "$WORK/moved/child2.img" "child1.img is not the image it was saved against" \
	"a replaced parent"
rm "$WORK/moved/child1.img"
refused moved "$WORK/moved/child2.img" "its parent image .*child1.img cannot be opened" \
	"a missing parent"
out=$("$VMSNAP" merge "$WORK/moved/child2.img" "$WORK/m2.img" 2>&1); st=$?
check "merge of a broken chain refused ($out)" [ "$st" = 1 ] && [ ! -e "$WORK/m2.img" ]
finish
