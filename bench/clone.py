#!/usr/bin/env python3
"""Clone benchmark: `vmsnap clone` next to the fastest ways QEMU 7.2 has to start many copies of
one saved guest, and the machine's own floor, in one run on the same test guest. Run through
bench/clone.sh, which builds what it needs; results go to docs/BENCHMARKS.md by hand.

For every guest size (--sizes, MiB) and guest timer rate (--hz, the test guest's `hz=`: every
running test guest takes host CPU for each timer tick, whose ring-0 handler KVM emulates here,
so N idle clones load the 2 cores in proportion to N x hz):
  - templates: the test guest (1 vCPU, idle workload) is booted and saved once per VMM:
    vmsnap `run --api S` + `save --api S tpl.img`; QEMU with its RAM in a file
    (`-object memory-backend-file,share=on,mem-path=/dev/shm/...`), stopped and migrated over
    QMP with the `x-ignore-shared` capability to a device-state file (RAM stays in the shared
    file); then a second QEMU loads that like a clone but paused (-S) and migrates everything
    to a complete file (QEMU 7.2 will not migrate a guest twice).
  - start N clones (--counts; QEMU: --qemu-counts), a fresh directory each time, and time from
    just before launching to the first heartbeat byte in each clone's console file
    (bench/clonebench_hb, inotify: no polling CPU taken from the clones):
      vmsnap:         `vmsnap clone tpl.img --count N --dir DIR --json` (one command; it
                      returns once every clone's vCPUs run: "returned" column);
      qemu-template:  N x `qemu-system-x86_64 ... -object memory-backend-file,share=off,
                      mem-path=<template RAM file> -incoming defer`, then over QMP per clone
                      (threads, in parallel) x-ignore-shared + `migrate-incoming exec:cat
                      <device state>`: every clone maps the template's RAM copy-on-write (the
                      templating Kata Containers uses);
      qemu-incoming:  N x `qemu-system-x86_64 ... -incoming "exec:cat <complete file>"`:
                      every clone reads the whole saved guest into its own memory.
    QEMU processes are launched back to back from Python (Popen), after t0.
  - once all run: wait --settle s, then over 0.5 s the CPU the clones use (utime+stime from
    /proc/PID/stat, guest time included), and their memory: `vmsnap ps --json`
    (private_bytes = Private_Clean + Private_Dirty and pss_bytes of /proc/PID/smaps_rollup);
    for QEMU the same two sums read from smaps_rollup. Kernel memory (page tables, KVM's
    shadow pages) is in neither. With N = 1, pages of the VMM's binary and libraries that no
    other process maps count as private too.
    Then every clone is stopped (SIGTERM; QEMU SIGKILL) and waited for.
  - after writing 10 % of RAM (--dirty-count clones): templates booted with `workload=dirty
    wss=<RAM/10> rate=<2 x wss per s>` and saved once the dirtier has written wss once; each
    clone's console is read until a STATUS line shows it dirtied at least wss MiB since its
    first STATUS line (so every page of its working set was written after it started), then
    memory as above.
  - the machine's floor: `bench/boottime -k` (create an empty KVM VM: /dev/kvm, irqchip, PIT, a
    RAM slot of the guest's size, 1 vCPU) repeated; floor(N) = ceil(N / cores) x its median:
    what creating the N VMs alone costs on this machine with perfect parallelism, before any
    state is loaded or any guest code runs.
Figures: median over --reps repetitions for N <= 10 (1 for larger N); "first hb" columns are the
median and the largest (= all N running) over the clones of a run. Each run waits first until
the machine is quiet (--quiet-idle cores idle over 0.5 s, at most --quiet-wait s): other
sessions' work on the shared machine comes and goes.
"""
import argparse
import json
import math
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import idle_cores, wait_quiet  # noqa: E402

MIB = 1 << 20
LIVE = set()  # pids of VMMs this run started and has not stopped yet: killed on any exit
ENV_QEMU = "qemu-system-x86_64"


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def kv(line):
    return {k: float(v) for k, v in re.findall(r"(\w+)=(-?[0-9.]+)", line)}


def mem_available():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def smaps(pid):
    """(private bytes, pss bytes) of @pid, as vmsnap ps computes them."""
    priv = pss = 0
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            p = line.split()
            if p[0] in ("Private_Clean:", "Private_Dirty:"):
                priv += int(p[1]) * 1024
            elif p[0] == "Pss:":
                pss = int(p[1]) * 1024
    return priv, pss


def cpu_ticks(pids):
    t = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            t += int(fields[11]) + int(fields[12])  # utime, stime (guest time is in utime)
        except (OSError, IndexError, ValueError):
            pass
    return t


def wait_gone(pids, timeout=60):
    deadline = time.monotonic() + timeout
    left = set(pids)
    while left and time.monotonic() < deadline:
        left = {p for p in left if os.path.exists(f"/proc/{p}")
                and not open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[0] == "Z"}
        if left:
            time.sleep(0.02)
    return not left


class QMP:
    def __init__(self, path, timeout=30):
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.s.connect(path)
                break
            except OSError:
                self.s.close()
                if time.monotonic() > deadline:
                    raise RuntimeError(f"QMP: cannot connect to {path}")
                time.sleep(0.002)
        self.f = self.s.makefile("rwb", buffering=0)
        self._read()  # greeting
        self.cmd("qmp_capabilities")

    def _read(self):
        while True:
            line = self.f.readline()
            if not line:
                raise RuntimeError("QMP: QEMU closed the connection")
            r = json.loads(line)
            if "event" not in r:
                return r

    def cmd(self, name, args=None):
        msg = {"execute": name}
        if args:
            msg["arguments"] = args
        self.f.write((json.dumps(msg) + "\n").encode())
        r = self._read()
        if "error" in r:
            raise RuntimeError(f"QMP {name}: {r['error'].get('desc')}")
        return r.get("return")

    def close(self):
        self.s.close()


class Env:
    def __init__(self, a):
        self.a = a
        self.build = os.path.realpath(a.build)
        self.vmsnap = os.path.join(self.build, "vmsnap")
        self.guest = os.path.join(self.build, "tests/guest/guest.elf")
        self.hbw = os.path.join(self.build, "bench/clonebench_hb")
        self.boottime = os.path.join(self.build, "bench/boottime")
        self.dir = a.dir
        self.shm = tempfile.mkdtemp(prefix="vmsnap-bench-clone.", dir="/dev/shm")
        self.run_dir = os.path.join(self.dir, "run")
        os.makedirs(self.run_dir, exist_ok=True)
        os.environ["VMSNAP_RUN_DIR"] = self.run_dir  # a registry of our own for vmsnap ps
        self.errlog = open(os.path.join(self.dir, "stderr.log"), "a")
        self.rawlog = open(os.path.join(self.dir, "raw.txt"), "a")
        self.ncpu = os.cpu_count() or 1
        self.seq = 0

    def raw(self, what, obj):
        self.rawlog.write(f"{what} {json.dumps(obj)}\n")
        self.rawlog.flush()

    def fresh(self, tag):
        self.seq += 1
        d = os.path.join(self.dir, f"{self.seq:03d}-{tag}")
        os.makedirs(d)
        return d


# ---- templates ---------------------------------------------------------------------------------

def guest_cmdline(mib, hz, dirty):
    c = f"hz={hz} status=500ms"
    if dirty:
        wss = max(1, mib // 10)
        c += f" workload=dirty wss={wss} rate={2 * wss} verify=0"
    return c


def wait_console(path, pred, timeout, what, proc=None):
    """Read @path's text lines until pred(line) is true."""
    deadline = time.monotonic() + timeout
    pos, buf = 0, ""
    while time.monotonic() < deadline:
        try:
            with open(path, "rb") as f:
                f.seek(pos)
                data = f.read()
        except FileNotFoundError:
            data = b""
        pos += len(data)
        buf += data.decode("latin-1")
        while "\n" in buf:
            line, buf = buf.split("\n", 1)
            m = re.search(r"[A-Z][A-Z]+ .*", line)
            if not m:
                continue
            if m.group(0).startswith(("PANIC", "VERIFY FAIL")):
                raise RuntimeError(f"{path}: guest says: {m.group(0)}")
            if pred(m.group(0)):
                return m.group(0)
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: the VMM exited ({proc.returncode})")
        time.sleep(0.02)
    raise RuntimeError(f"timeout waiting for {what} in {path}")


def template_ready(path, dirty, mib, proc):
    wait_console(path, lambda l: l.startswith("READY"), 30, "READY", proc)
    wss = max(1, mib // 10)
    if dirty:  # the working set written once before the save
        wait_console(path, lambda l: l.startswith("STATUS") and kv(l)["dirtied_mib"] >= wss,
                     60, f"the dirtier to write {wss} MiB", proc)
    else:
        wait_console(path, lambda l: l.startswith("STATUS"), 30, "STATUS", proc)


def make_vmsnap_template(env, mib, hz, dirty):
    d = env.fresh(f"tpl-vmsnap-{mib}-{hz}{'-dirty' if dirty else ''}")
    sock, con, img = (os.path.join(d, n) for n in ("tpl.sock", "tpl.console", "tpl.img"))
    p = subprocess.Popen([env.vmsnap, "run", "--kernel", env.guest, "--mem", f"{mib}M", "--cpus",
                          "1", "--cmdline", guest_cmdline(mib, hz, dirty), "--api", sock,
                          "--console", con], stdin=subprocess.DEVNULL, stdout=env.errlog,
                         stderr=env.errlog, start_new_session=True)
    LIVE.add(p.pid)
    try:
        template_ready(con, dirty, mib, p)
        r = subprocess.run([env.vmsnap, "save", "--api", sock, img, "--json"],
                           capture_output=True, text=True)
        if r.returncode:
            raise RuntimeError(f"vmsnap save: {r.stderr.strip()}")
        env.raw("template-vmsnap", json.loads(r.stdout.strip().splitlines()[-1]))
        subprocess.run([env.vmsnap, "ctl", sock, "quit"], capture_output=True)
        p.wait(timeout=30)
        LIVE.discard(p.pid)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        LIVE.discard(p.pid)
    return {"img": img, "du": os.stat(img).st_blocks * 512}


def qemu_base(env, mib, cmdline, ram, share):
    """QEMU's command line; RAM in the file @ram (shared or copy-on-write), or with ram None in
    anonymous memory (memory-backend-ram: the same RAM block name, so either loads the other's
    migration stream)."""
    backend = (f"memory-backend-file,id=mem,size={mib}M,mem-path={ram},"
               f"share={'on' if share else 'off'}" if ram else
               f"memory-backend-ram,id=mem,size={mib}M")
    return [env.a.qemu, "-M", "microvm,x-option-roms=off,pit=off,pic=off,rtc=off,acpi=off,"
            "memory-backend=mem", "-enable-kvm", "-cpu", "host", "-m", f"{mib}M", "-smp", "1",
            "-object", backend,
            "-display", "none", "-nodefaults", "-no-user-config", "-no-reboot",
            "-kernel", env.guest, "-append", cmdline,
            # the destination starts the guest itself once the state is in (the source was
            # stopped before migrating)
            "-global", "migration.store-global-state=off"]


def qemu_migrate(q, path, ignore_shared):
    q.cmd("migrate-set-parameters", {"max-bandwidth": 64 << 30})
    q.cmd("migrate-set-capabilities",
          {"capabilities": [{"capability": "x-ignore-shared", "state": ignore_shared}]})
    q.cmd("migrate", {"uri": f"exec:cat > '{path}'"})
    deadline = time.monotonic() + 120
    while True:
        st = q.cmd("query-migrate").get("status")
        if st == "completed":
            return
        if st in ("failed", "cancelled") or time.monotonic() > deadline:
            raise RuntimeError(f"QEMU template migration to {path}: {st}")
        time.sleep(0.01)


def make_qemu_template(env, mib, hz, dirty):
    tag = f"{mib}-{hz}{'-dirty' if dirty else ''}"
    d = env.fresh(f"tpl-qemu-{tag}")
    ram = os.path.join(env.shm, f"tpl-{tag}.ram")
    sock, con = os.path.join(d, "qmp.sock"), os.path.join(d, "tpl.console")
    state, full = os.path.join(d, "tpl.state"), os.path.join(d, "tpl.full")
    cmdline = guest_cmdline(mib, hz, dirty)
    p = subprocess.Popen(qemu_base(env, mib, cmdline, ram, True) +
                         ["-serial", f"file:{con}", "-qmp", f"unix:{sock},server=on,wait=off"],
                         stdin=subprocess.DEVNULL, stdout=env.errlog, stderr=env.errlog,
                         start_new_session=True)
    LIVE.add(p.pid)
    try:
        template_ready(con, dirty, mib, p)
        q = QMP(sock)
        q.cmd("stop")
        qemu_migrate(q, state, True)
        q.cmd("quit")
        q.close()
        p.wait(timeout=30)
        LIVE.discard(p.pid)
        ram_du = os.stat(ram).st_blocks * 512  # before the loader below reads every page of it
        # QEMU 7.2 does not migrate a guest twice ("paused due to previous migration"): the
        # complete file comes from a second QEMU that loads the template like a clone, but with
        # -S (it stays paused), then migrates everything: the same guest state, byte for byte.
        sock2 = os.path.join(d, "qmp2.sock")
        p = subprocess.Popen(qemu_base(env, mib, cmdline, ram, False) +
                             ["-S", "-serial", "null", "-incoming", "defer",
                              "-qmp", f"unix:{sock2},server=on,wait=off"],
                             stdin=subprocess.DEVNULL, stdout=env.errlog, stderr=env.errlog,
                             start_new_session=True)
        LIVE.add(p.pid)
        q = QMP(sock2)
        q.cmd("migrate-set-capabilities",
              {"capabilities": [{"capability": "x-ignore-shared", "state": True}]})
        q.cmd("migrate-incoming", {"uri": f"exec:cat '{state}'"})
        deadline = time.monotonic() + 60
        while q.cmd("query-status").get("status") != "paused":
            if time.monotonic() > deadline:
                raise RuntimeError("QEMU: loading the template for the complete file timed out")
            time.sleep(0.01)
        qemu_migrate(q, full, False)
        q.cmd("quit")
        q.close()
        p.wait(timeout=30)
        LIVE.discard(p.pid)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        LIVE.discard(p.pid)
    return {"ram": ram, "state": state, "full": full, "cmdline": cmdline,
            "ram_du": ram_du, "state_bytes": os.path.getsize(state),
            "full_bytes": os.path.getsize(full)}


# ---- starting N clones -------------------------------------------------------------------------

class Watch:
    """bench/clonebench_hb on DIR: the CLOCK_MONOTONIC ns of each console's first heartbeat."""

    def __init__(self, env, d, prefix, n, timeout):
        self.n = n
        self.p = subprocess.Popen([env.hbw, d, prefix, ".console", str(n), str(timeout)],
                                  stdout=subprocess.PIPE, stderr=env.errlog, text=True)
        if self.p.stdout.readline().strip() != "ready":
            raise RuntimeError("clonebench_hb did not start")

    def result(self):
        hb = {}
        for line in self.p.stdout:
            w = line.split()
            if w[0] == "hb":
                hb[int(w[1])] = int(w[2])
        self.p.wait()
        return hb


def start_vmsnap(env, tpl, n, d):
    w = Watch(env, d, "clone", n, env.a.timeout)
    t0 = time.monotonic_ns()
    r = subprocess.run([env.vmsnap, "clone", tpl["img"], "--count", str(n), "--dir", d, "--json",
                        "--timeout", str(env.a.timeout)], capture_output=True, text=True)
    t_ret = time.monotonic_ns()
    if r.returncode:
        w.p.kill()
        raise RuntimeError(f"vmsnap clone --count {n}: {r.stderr.strip()[-500:]}")
    js = json.loads(r.stdout)
    LIVE.update(c["pid"] for c in js["clones"])
    hb = w.result()
    return {"t0": t0, "returned_ms": (t_ret - t0) / 1e6, "hb": hb,
            "pids": [c["pid"] for c in js["clones"]],
            "consoles": [c["console"] for c in js["clones"]],
            "ready_ms": [c["ready_us"] / 1e3 for c in js["clones"]]}


def start_qemu(env, tpl, mib, n, d, mode):
    w = Watch(env, d, "q", n, env.a.timeout)
    procs, errs = [], []
    base = qemu_base(env, mib, tpl["cmdline"], tpl["ram"] if mode == "template" else None, False)
    t0 = time.monotonic_ns()
    for i in range(n):
        extra = ["-serial", f"file:{d}/q{i}.console"]
        if mode == "template":
            extra += ["-incoming", "defer", "-qmp", f"unix:{d}/q{i}.qmp,server=on,wait=off"]
        else:
            extra += ["-incoming", f"exec:cat '{tpl['full']}'"]
        procs.append(subprocess.Popen(base + extra, stdin=subprocess.DEVNULL, stdout=env.errlog,
                                      stderr=env.errlog, start_new_session=True))
        LIVE.add(procs[-1].pid)
    if mode == "template":
        def incoming(i):
            try:
                q = QMP(f"{d}/q{i}.qmp")
                q.cmd("migrate-set-capabilities",
                      {"capabilities": [{"capability": "x-ignore-shared", "state": True}]})
                q.cmd("migrate-incoming", {"uri": f"exec:cat '{tpl['state']}'"})
                q.close()
            except RuntimeError as e:
                errs.append(f"clone {i}: {e}")
        ths = [threading.Thread(target=incoming, args=(i,)) for i in range(n)]
        for t in ths:
            t.start()
        for t in ths:
            t.join()
    hb = w.result()
    for p in procs:
        if p.poll() is not None:
            errs.append(f"QEMU pid {p.pid} exited ({p.returncode})")
    if errs:
        stop_qemu(procs)
        raise RuntimeError("; ".join(errs[:3]))
    return {"t0": t0, "returned_ms": None, "hb": hb, "procs": procs,
            "pids": [p.pid for p in procs],
            "consoles": [f"{d}/q{i}.console" for i in range(n)]}


def stop_vmsnap(pids):
    for p in pids:
        try:
            os.kill(p, signal.SIGTERM)
        except ProcessLookupError:
            pass
    if not wait_gone(pids):
        for p in pids:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        wait_gone(pids)
    LIVE.difference_update(pids)


def stop_qemu(procs):
    for p in procs:
        if p.poll() is None:
            p.kill()
    for p in procs:
        p.wait()
        LIVE.discard(p.pid)


def kill_leftovers():
    for pid in list(LIVE):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv0 = f.read().split(b"\0")[0]
            if os.path.basename(argv0) in (b"vmsnap", os.path.basename(ENV_QEMU).encode()):
                os.kill(pid, signal.SIGKILL)
        except (OSError, ProcessLookupError):
            pass
    LIVE.clear()


def wait_dirtied(consoles, wss, timeout):
    """Until every console shows a STATUS line with dirtied_mib >= its first STATUS's + wss."""
    deadline = time.monotonic() + timeout
    state = [{"pos": 0, "buf": "", "first": None, "done": False} for _ in consoles]
    while time.monotonic() < deadline:
        for c, s in zip(consoles, state):
            if s["done"]:
                continue
            with open(c, "rb") as f:
                f.seek(s["pos"])
                data = f.read()
            s["pos"] += len(data)
            s["buf"] += data.decode("latin-1")
            while "\n" in s["buf"]:
                line, s["buf"] = s["buf"].split("\n", 1)
                m = re.search(r"STATUS .*", line)
                if not m:
                    continue
                dm = kv(m.group(0)).get("dirtied_mib", 0)
                if s["first"] is None:
                    s["first"] = dm
                elif dm >= s["first"] + wss:
                    s["done"] = True
        if all(s["done"] for s in state):
            return True
        time.sleep(0.1)
    return False


def one_run(env, vmm, mode, tpl, mib, hz, n, dirty=False):
    tag = f"{vmm}{'-' + mode if mode else ''}-{mib}-{hz}-{n}{'-dirty' if dirty else ''}"
    d = env.fresh(tag)
    idle = wait_quiet(env.a) if env.a.quiet_idle > 0 else None
    if vmm == "vmsnap":
        r = start_vmsnap(env, tpl, n, d)
    else:
        r = start_qemu(env, tpl, mib, n, d, mode)
    try:
        hb = r["hb"]
        first = sorted((hb[i] - r["t0"]) / 1e6 for i in hb)
        res = {"vmm": vmm, "mode": mode, "mib": mib, "hz": hz, "n": n, "dirty": dirty,
               "idle_before": idle,
               "returned_ms": r["returned_ms"], "seen": len(hb),
               "hb_median_ms": statistics.median(first) if first else None,
               "hb_max_ms": first[-1] if len(first) == n else None,
               "ready_ms_max": max(r["ready_ms"]) if "ready_ms" in r else None}
        if dirty:
            res["dirtied"] = wait_dirtied(r["consoles"], max(1, mib // 10), 60)
        time.sleep(env.a.settle)
        c0, t0 = cpu_ticks(r["pids"]), time.monotonic()
        time.sleep(0.5)
        c1, t1 = cpu_ticks(r["pids"]), time.monotonic()
        res["cpu_per_clone_pct"] = 100 * (c1 - c0) / os.sysconf("SC_CLK_TCK") / (t1 - t0) / n
        if vmm == "vmsnap":
            ps = json.loads(subprocess.run([env.vmsnap, "ps", "--json"], capture_output=True,
                                           text=True, check=True).stdout)
            mine = [v for v in ps["vms"] if v["pid"] in set(r["pids"])]
            if len(mine) != n:
                raise RuntimeError(f"vmsnap ps lists {len(mine)} of the {n} clones")
            priv = [v["private_bytes"] for v in mine]
            pss = [v["pss_bytes"] for v in mine]
        else:
            m = [smaps(p) for p in r["pids"]]
            priv, pss = [x[0] for x in m], [x[1] for x in m]
        res["private_mib"] = statistics.median(priv) / MIB
        res["private_max_mib"] = max(priv) / MIB
        res["pss_mib"] = statistics.median(pss) / MIB
    finally:
        if vmm == "vmsnap":
            stop_vmsnap(r["pids"])
        else:
            stop_qemu(r["procs"])
    env.raw("run", res)
    if vmm == "vmsnap":
        left = json.loads(subprocess.run([env.vmsnap, "ps", "--json"], capture_output=True,
                                         text=True).stdout or '{"vms":[]}')["vms"]
        if left:
            log(f"  warning: vmsnap ps still lists {len(left)} VMs after stopping the clones")
    shutil.rmtree(d, ignore_errors=True)
    return res


# ---- the machine's floor -----------------------------------------------------------------------

def vm_create_ms(env, mib, runs=10):
    out = subprocess.run([env.boottime, "-k", str(runs), "-m", str(mib)], capture_output=True,
                         text=True, check=True).stdout
    ms = [kv(l)["ms"] for l in out.splitlines() if "ms=" in l]
    return statistics.median(ms)


# ---- report ------------------------------------------------------------------------------------

def f1(v, nd=1):
    return "-" if v is None else f"{v:.{nd}f}"


def med(rs, key):
    v = [r[key] for r in rs if r.get(key) is not None]
    if len(v) != len(rs) or not v:
        return None
    return statistics.median(v)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default="build")
    ap.add_argument("--qemu", default="qemu-system-x86_64")
    ap.add_argument("--sizes", default="256,1024", help="guest RAM in MiB (default 256,1024)")
    ap.add_argument("--hz", default="1000,100", help="guest timer rates (default 1000,100)")
    ap.add_argument("--counts", default="1,10,50,100", help="vmsnap clone counts")
    ap.add_argument("--qemu-counts", default="1,10,50", help="QEMU clone counts (template mode)")
    ap.add_argument("--qemu-incoming-counts", default="1,10",
                    help="QEMU -incoming-per-clone counts (at the first --hz only)")
    ap.add_argument("--dirty-count", type=int, default=10,
                    help="clones for the after-writing-10%% memory figures (0: skip)")
    ap.add_argument("--reps", type=int, default=3, help="repetitions for N <= 10 (default 3)")
    ap.add_argument("--settle", type=float, default=0.3,
                    help="seconds after the last first heartbeat before measuring (default 0.3)")
    ap.add_argument("--timeout", type=int, default=60)
    ap.add_argument("--vmms", default="vmsnap,qemu")
    ap.add_argument("--quiet-idle", type=float, default=1.8,
                    help="idle cores to wait for before each measurement (default 1.8; 0: off)")
    ap.add_argument("--quiet-wait", type=float, default=8,
                    help="longest wait for that, seconds (default 8)")
    ap.add_argument("--dir", help="work directory (default a new /var/tmp/vmsnap-bench-clone.*)")
    ap.add_argument("--markdown", help="also write the tables to this file")
    a = ap.parse_args()
    global ENV_QEMU
    ENV_QEMU = a.qemu
    if a.dir is None:
        a.dir = tempfile.mkdtemp(prefix="vmsnap-bench-clone.", dir="/var/tmp")
    os.makedirs(a.dir, exist_ok=True)
    env = Env(a)
    sizes = [int(x) for x in a.sizes.split(",")]
    hzs = [int(x) for x in a.hz.split(",")]
    counts = [int(x) for x in a.counts.split(",") if x]
    qcounts = [int(x) for x in a.qemu_counts.split(",") if x]
    qicounts = [int(x) for x in a.qemu_incoming_counts.split(",") if x]
    vmms = a.vmms.split(",")
    t_start = time.monotonic()
    load0 = os.getloadavg()[0]
    log(f"bench/clone: work dir {a.dir}, QEMU RAM files in {env.shm}; {env.ncpu} CPUs, "
        f"load average {load0:.1f}, MemAvailable {mem_available() / MIB / 1024:.1f} GiB")
    floor = {mib: vm_create_ms(env, mib) for mib in sizes}
    env.raw("floor", floor)
    log("  empty KVM VM creation, median ms: " + ", ".join(f"{m} MiB {floor[m]:.1f}"
                                                         for m in sizes))
    runs = []
    tpls = []

    def reps(n):
        return a.reps if n <= 10 else 1

    def show(r):
        log(f"  {r['vmm']}{'-' + r['mode'] if r['mode'] else ''} {r['mib']} MiB hz={r['hz']} "
            f"N={r['n']}{' dirty' if r['dirty'] else ''}: returned {f1(r['returned_ms'])} ms, "
            f"first hb median {f1(r['hb_median_ms'])} max {f1(r['hb_max_ms'])} ms "
            f"({r['seen']}/{r['n']}), private {r['private_mib']:.2f} MiB, pss "
            f"{r['pss_mib']:.2f} MiB, cpu {r['cpu_per_clone_pct']:.1f} %/clone")

    try:
        for mib in sizes:
            for hi, hz in enumerate(hzs):
                if "vmsnap" in vmms:
                    t = make_vmsnap_template(env, mib, hz, False)
                    tpls.append(("vmsnap", mib, hz, False, t))
                    for n in counts:
                        for _ in range(reps(n)):
                            r = one_run(env, "vmsnap", None, t, mib, hz, n)
                            runs.append(r)
                            show(r)
                if "qemu" in vmms:
                    t = make_qemu_template(env, mib, hz, False)
                    tpls.append(("qemu", mib, hz, False, t))
                    for mode, cs in (("template", qcounts),
                                     ("incoming", qicounts if hi == 0 else [])):
                        for n in cs:
                            for _ in range(reps(n)):
                                r = one_run(env, "qemu", mode, t, mib, hz, n)
                                runs.append(r)
                                show(r)
                    os.unlink(t["ram"])
            if a.dirty_count:
                hz = hzs[0]
                if "vmsnap" in vmms:
                    t = make_vmsnap_template(env, mib, hz, True)
                    tpls.append(("vmsnap", mib, hz, True, t))
                    r = one_run(env, "vmsnap", None, t, mib, hz, a.dirty_count, dirty=True)
                    runs.append(r)
                    show(r)
                if "qemu" in vmms:
                    t = make_qemu_template(env, mib, hz, True)
                    tpls.append(("qemu", mib, hz, True, t))
                    for mode in ("template", "incoming"):
                        r = one_run(env, "qemu", mode, t, mib, hz, a.dirty_count, dirty=True)
                        runs.append(r)
                        show(r)
                    os.unlink(t["ram"])
    finally:
        shutil.rmtree(env.shm, ignore_errors=True)
        for _, _, _, _, t in tpls:  # the saved guests (logs and raw figures stay)
            for k in ("img", "state", "full"):
                if k in t and os.path.exists(t[k]):
                    os.unlink(t[k])

    # ---- tables
    out = []
    name = {None: "vmsnap clone", "template": "QEMU template (share=off + x-ignore-shared)",
            "incoming": "QEMU -incoming per clone"}
    groups = {}
    for r in runs:
        groups.setdefault((r["mib"], r["hz"], r["dirty"], r["mode"], r["n"]), []).append(r)
    out.append("### Time to N clones running (ms from launch; median of the runs)")
    out.append("")
    out.append(f"Floor: creating an empty KVM VM (RAM slot of the guest's size, 1 vCPU) takes "
               + ", ".join(f"{floor[m]:.1f} ms at {m} MiB" for m in sizes)
               + f" (median of 10, this run); floor(N) = ceil(N / {env.ncpu} cores) x that.")
    out.append("")
    out.append("| RAM | hz | N | how | runs | command returned | first hb, median clone "
               f"| all N running (last first hb) | floor | CPU per running clone | CPU, all N "
               f"(of {100 * env.ncpu} %) |")
    out.append("|---|--:|--:|---|--:|--:|--:|--:|--:|--:|--:|")
    for (mib, hz, dirty, mode, n), rs in sorted(groups.items(),
                                                key=lambda kv_: (kv_[0][0], -kv_[0][1],
                                                                 kv_[0][2], kv_[0][4],
                                                                 str(kv_[0][3]))):
        if dirty:
            continue
        fl = math.ceil(n / env.ncpu) * floor[mib]
        out.append(f"| {mib} MiB | {hz} | {n} | {name[mode]} | {len(rs)} | "
                   f"{f1(med(rs, 'returned_ms'))} | {f1(med(rs, 'hb_median_ms'))} | "
                   f"**{f1(med(rs, 'hb_max_ms'))}** | {fl:.0f} | "
                   f"{f1(med(rs, 'cpu_per_clone_pct'))} % | "
                   f"{f1(n * med(rs, 'cpu_per_clone_pct'), 0)} % |")
    out.append("")
    out.append("### Host memory per clone (MiB; median clone of the median run)")
    out.append("")
    out.append("| RAM | hz | N | how | state | private (Private_Clean+Dirty) | % of RAM | PSS |")
    out.append("|---|--:|--:|---|---|--:|--:|--:|")
    for (mib, hz, dirty, mode, n), rs in sorted(groups.items(),
                                                key=lambda kv_: (kv_[0][0], kv_[0][2],
                                                                 -kv_[0][1], kv_[0][4],
                                                                 str(kv_[0][3]))):
        pm = med(rs, "private_mib")
        state = "idle"
        if dirty:
            state = f"wrote {mib // 10} MiB" + ("" if all(r.get("dirtied") for r in rs)
                                                else " (NOT all reached it)")
        out.append(f"| {mib} MiB | {hz} | {n} | {name[mode]} | {state} | {f1(pm, 2)} | "
                   f"{f1(100 * pm / mib if pm is not None else None, 2)} % | "
                   f"{f1(med(rs, 'pss_mib'), 2)} |")
    out.append("")
    out.append("Templates: " + "; ".join(
        (f"vmsnap {m} MiB hz={h}{' dirty' if dy else ''}: image {t['du'] / MIB:.1f} MiB allocated"
         if v == "vmsnap" else
         f"QEMU {m} MiB hz={h}{' dirty' if dy else ''}: RAM file {t['ram_du'] / MIB:.1f} MiB, "
         f"device state {t['state_bytes'] / 1024:.0f} KiB, complete file "
         f"{t['full_bytes'] / MIB:.1f} MiB")
        for v, m, h, dy, t in tpls))

    # ---- targets
    out.append("")
    out.append("### Targets")
    out.append("")

    def g(mib, hz, mode, n, key, dirty=False):
        rs = groups.get((mib, hz, dirty, mode, n))
        return med(rs, key) if rs else None
    for hz in hzs:
        v = g(256, hz, None, 100, "hb_max_ms")
        if v is not None:
            out.append(f"- 100 clones of a 256 MiB guest running in under 1 s (hz={hz}): "
                       f"{'MET' if v < 1000 else 'NOT MET'} ({v:.0f} ms to the last clone's "
                       f"first heartbeat)")
    for mib in sizes:
        for hz in hzs:
            v = g(mib, hz, None, max(counts), "private_mib") if counts else None
            if v is not None:
                out.append(f"- idle clone's private memory under 5 % of its RAM ({mib} MiB, "
                           f"hz={hz}, N={max(counts)}): {'MET' if v < 0.05 * mib else 'NOT MET'}"
                           f" ({v:.2f} MiB = {100 * v / mib:.2f} %)")
    for mib in sizes:
        for hz in hzs:
            for n in sorted(set(counts) & (set(qcounts) | set(qicounts))):
                v = g(mib, hz, None, n, "hb_max_ms")
                qs = [(m, g(mib, hz, m, n, "hb_max_ms")) for m in ("template", "incoming")]
                qs = [(m, q) for m, q in qs if q is not None]
                if v is None or not qs:
                    continue
                m, q = min(qs, key=lambda x: x[1])
                out.append(f"- clone start >= 10x faster than QEMU's best ({mib} MiB, hz={hz}, "
                           f"N={n}): {'MET' if q >= 10 * v else 'NOT MET'} "
                           f"({v:.1f} vs {q:.1f} ms, {name[m]}: {q / v:.1f}x)")
    out.append("")
    idles = [r["idle_before"] for r in runs if r.get("idle_before") is not None]
    if idles:
        out.append(f"Each run started once the machine had been {a.quiet_idle:g} cores idle over "
                   f"0.5 s (or after {a.quiet_wait:g} s of waiting): idle cores seen before the "
                   f"runs: median {statistics.median(idles):.2f}, lowest {min(idles):.2f}.")
    out.append(f"Load average {load0:.1f} at the start, {os.getloadavg()[0]:.1f} at the end; "
               f"whole run {time.monotonic() - t_start:.0f} s; raw figures: {a.dir}/raw.txt")
    text = "\n".join(out)
    print(text)
    if a.markdown:
        with open(a.markdown, "w") as f:
            f.write(text + "\n")


def on_signal(sig, frame):
    raise KeyboardInterrupt(f"signal {sig}")


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, on_signal)
    try:
        main()
    except (RuntimeError, subprocess.CalledProcessError) as e:
        log(f"bench/clone: {e}")
        sys.exit(1)
    except KeyboardInterrupt:
        log("bench/clone: interrupted")
        sys.exit(130)
    finally:
        kill_leftovers()
