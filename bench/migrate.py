#!/usr/bin/env python3
"""Live-migration benchmark: vmsnap next to QEMU 7.2 on the same test guest ELF and workload,
over loopback, in one run with the loopback bound (issue 4, "Performance"). Run it through
bench/migrate.sh, which builds what it needs; results go to docs/BENCHMARKS.md by hand.

For every guest size (256 MiB, 1 GiB, 4 GiB; --quick: 256 MiB) and workload (idle; filled:
7/8 of RAM written once by the dirtier (passes=1, hz=100), then idle, which isolates the first
pass's throughput; the dirtier at --rates fractions of the loopback bound measured first,
default 1/2 and 1/8), and each VMM:
  - boot the test guest (--cpus 4) with its console on a pipe that the destination's console
    joins later, read by one hbwatch; dirty workloads: wss = min(RAM/2, 512 MiB), wait until the
    whole working set was written once (a VERIFY OK with unwritten=0), and note the dirty rate
    the guest reaches (STATUS rate_mibps, median of the last ones before the migration);
  - start the destination: `vmsnap receive --listen 127.0.0.1:0`, or QEMU with
    `-incoming tcp:127.0.0.1:PORT` (same command line otherwise);
  - start a new hbwatch window (SIGUSR2), migrate: `vmsnap migrate --downtime-ms T --max-time
    M --json`; QEMU through QMP on a unix socket: capabilities events + auto-converge (vmsnap
    always auto-converges), migrate-set-parameters max-bandwidth 64 GiB/s (QEMU's default is
    128 MiB/s) and downtime-limit T, `migrate tcp:127.0.0.1:PORT`, query-migrate polled every
    20 ms (first pass = until dirty-sync-count first moves past its setup value); if QEMU has
    not completed after M seconds the downtime-limit is raised to 60 s so it stops and copies
    (vmsnap's --max-time does the same), marked "forced";
  - guest-observed pause = the largest heartbeat gap in that window, read once the guest's
    heartbeats arrive again; then (dirty) wait for a VERIFY OK from the destination.
Reported per run: total time, downtime as the VMM reports it, guest-observed pause, bytes on
the wire, rounds (vmsnap rounds; QEMU dirty-sync-count), first pass (duration, wire MB/s),
throttle. The loopback bound: a plain TCP transfer of 1 GiB over 127.0.0.1 (Python sender and
receiver, 1 MiB send/recv_into calls), best of 3, measured first in the same run.
"""
import argparse
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

MIB = 1 << 20
FILL = "filled"  # the workload: RAM written once, then idle (see run_case)


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def kv(line):
    return {k: float(v) for k, v in re.findall(r"(\w+)=(-?[0-9.]+)", line)}


def size_name(mib):
    return f"{mib // 1024} GiB" if mib % 1024 == 0 else f"{mib} MiB"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


# ---- the loopback bound --------------------------------------------------------------------------

def loopback_once(nbytes):
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(1)
    port = ls.getsockname()[1]
    got = [0]

    def rx():
        c, _ = ls.accept()
        buf = bytearray(MIB)
        mv = memoryview(buf)
        while True:
            n = c.recv_into(mv)
            if not n:
                break
            got[0] += n
        c.close()
    t = threading.Thread(target=rx)
    t.start()
    s = socket.create_connection(("127.0.0.1", port))
    data = memoryview(os.urandom(MIB))
    t0 = time.monotonic()
    sent = 0
    while sent < nbytes:
        s.sendall(data)
        sent += len(data)
    s.close()
    t.join()
    dt = time.monotonic() - t0
    ls.close()
    return got[0] / dt / 1e6


def loopback_bound():
    runs = [loopback_once(1 << 30) for _ in range(3)]
    return max(runs), runs


# ---- QMP ------------------------------------------------------------------------------------------

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
                    raise
                time.sleep(0.02)
        self.f = self.s.makefile("rwb", buffering=0)
        self._read()
        self.cmd("qmp_capabilities")

    def _read(self):
        line = self.f.readline()
        if not line:
            raise RuntimeError("QMP: QEMU closed the connection")
        return json.loads(line)

    def cmd(self, name, args=None):
        msg = {"execute": name}
        if args:
            msg["arguments"] = args
        self.f.write((json.dumps(msg) + "\n").encode())
        while True:
            r = self._read()
            if "event" in r:
                continue
            if "error" in r:
                raise RuntimeError(f"QMP {name}: {r['error'].get('desc')}")
            return r.get("return")

    def close(self):
        self.s.close()


# ---- one migration ---------------------------------------------------------------------------------

class Run:
    """A source guest, its destination, one hbwatch on their merged consoles."""

    def __init__(self, env, vmm, mib, cmdline, tag):
        self.env, self.vmm, self.mib, self.cmdline, self.tag = env, vmm, mib, cmdline, tag
        d = env.dir
        self.src_sock = os.path.join(d, f"{tag}-src.sock")
        self.dst_sock = os.path.join(d, f"{tag}-dst.sock")
        self.log = os.path.join(d, f"{tag}.console")
        self.sum = os.path.join(d, f"{tag}.hb.json")
        for p in (self.src_sock, self.dst_sock, self.sum, self.log):
            if os.path.exists(p):
                os.unlink(p)
        self.procs = []
        r, self.w = os.pipe()
        self.watch = subprocess.Popen([env.hbwatch, "-l", self.log, "-j", "-s", self.sum],
                                      stdin=r, stdout=subprocess.DEVNULL, stderr=env.errlog)
        os.close(r)
        self.pos, self.buf, self.queue = 0, "", []
        self.src = self.spawn(self.vmm_cmd(self.src_sock))

    def vmm_cmd(self, sock, incoming=None):
        e = self.env
        if self.vmm == "vmsnap":
            return [e.vmsnap, "run", "--kernel", e.guest, "--mem", f"{self.mib}M", "--cpus",
                    str(e.a.cpus), "--cmdline", self.cmdline, "--api", sock, "--console", "stdio"]
        cmd = [e.qemu, "-M", "microvm", "-enable-kvm", "-cpu", "host", "-m", f"{self.mib}M",
               "-smp", str(e.a.cpus), "-display", "none", "-nodefaults", "-no-user-config",
               "-serial", "stdio", "-no-reboot", "-kernel", e.guest, "-append", self.cmdline,
               "-qmp", f"unix:{sock},server=on,wait=off"]
        if incoming:
            cmd += ["-incoming", incoming]
        return cmd

    def spawn(self, cmd):
        p = subprocess.Popen(cmd, stdout=self.w, stdin=subprocess.DEVNULL, stderr=self.env.errlog,
                             start_new_session=True)
        self.procs.append(p)
        return p

    def lines(self):
        try:
            with open(self.log, "rb") as f:
                f.seek(self.pos)
                data = f.read()
        except FileNotFoundError:
            return []
        self.pos += len(data)
        self.buf += data.decode("latin-1")
        out = []
        while "\n" in self.buf:
            line, self.buf = self.buf.split("\n", 1)
            m = re.search(r"[A-Z][A-Z]+ .*", line)
            if m:
                out.append(m.group(0))
        return out

    def wait(self, pred, timeout, what):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.queue += self.lines()
            while self.queue:
                line = self.queue.pop(0)
                if "PANIC" in line or "VERIFY FAIL" in line:
                    raise RuntimeError(f"{self.vmm}: guest says: {line}")
                r = pred(line)
                if r:
                    return r
            time.sleep(0.02)
        raise RuntimeError(f"{self.vmm}: timeout waiting for {what}")

    def summary(self):
        if os.path.exists(self.sum):
            os.unlink(self.sum)
        self.watch.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 5
        while not os.path.exists(self.sum) or os.path.getsize(self.sum) == 0:
            if time.monotonic() > deadline:
                raise RuntimeError("hbwatch wrote no summary")
            time.sleep(0.01)
        time.sleep(0.01)
        with open(self.sum) as f:
            return json.load(f)

    def window_end(self, timeout=20):
        time.sleep(0.2)
        deadline = time.monotonic() + timeout
        while True:
            s = self.summary()
            if s["since_last_hb_ms"] < 20 or time.monotonic() > deadline:
                s["alive"] = s["since_last_hb_ms"] < 20
                return s
            time.sleep(0.05)

    def close(self):
        for p in self.procs:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()
        if self.w is not None:
            os.close(self.w)
            self.w = None
        try:
            self.watch.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.watch.kill()
            self.watch.wait()


def prepare(run, dirty, timeout):
    """Wait for READY (and, dirty, the working set written once); returns the dirty rate seen."""
    boot = run.wait(lambda l: l if l.startswith("BOOT ") else None, timeout, "BOOT")
    pages = int(kv(boot).get("pages", 0))
    run.wait(lambda l: l.startswith("READY"), timeout, "READY")
    if not dirty:
        time.sleep(0.5)
        return 0.0
    run.wait(lambda l: l.startswith("VERIFY OK") and kv(l).get("unwritten", 1) == 0 and
             kv(l).get("pages", 0) == pages, timeout, "the working set written once")
    rates = []
    t_end = time.monotonic() + 1.6
    while time.monotonic() < t_end:
        for line in run.lines():
            if line.startswith("STATUS"):
                rates.append(kv(line).get("rate_mibps", 0))
        time.sleep(0.05)
    return statistics.median(rates) if rates else -1.0


def migrate_vmsnap(env, run):
    portf = os.path.join(env.dir, f"{run.tag}.port")
    if os.path.exists(portf):
        os.unlink(portf)
    run.dst = run.spawn([env.vmsnap, "receive", "--listen", "127.0.0.1:0", "--port-file", portf,
                         "--api", run.dst_sock, "--console", "stdio", "--timeout", "120"]
                        + env.a.receive_args.split())
    deadline = time.monotonic() + 20
    while not (os.path.exists(portf) and os.path.getsize(portf) > 0):
        if time.monotonic() > deadline or run.dst.poll() is not None:
            raise RuntimeError("vmsnap receive did not start listening")
        time.sleep(0.02)
    port = int(open(portf).read())
    run.watch.send_signal(signal.SIGUSR2)
    time.sleep(0.3)
    t0 = time.monotonic()
    p = subprocess.run([env.vmsnap, "migrate", "--api", run.src_sock, "--to", f"127.0.0.1:{port}",
                        "--downtime-ms", str(env.a.downtime_ms), "--max-time",
                        str(env.a.max_time), "--json", "-q"], capture_output=True, text=True)
    wall = (time.monotonic() - t0) * 1e3
    returned_unix = time.time()
    try:
        d = json.loads(p.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise RuntimeError(f"vmsnap migrate: {p.stderr.strip()}")
    if p.returncode != 0 or d.get("state") != "completed":
        raise RuntimeError(f"vmsnap migrate failed: {p.stderr.strip()}")
    env.raw(f"{run.tag} vmsnap-migrate", d)
    fp_ms = d.get("first_pass_ms", 0)
    return {"total_ms": d["total_ms"], "wall_ms": wall, "downtime_ms": d["downtime_ms"],
            "bytes": d["bytes_sent"], "rounds": d["round"] + 1, "first_pass_ms": fp_ms,
            "first_pass_wire_mbps": d.get("first_pass_bytes", 0) / fp_ms / 1e3 if fp_ms else 0,
            "first_pass_ram_mbps": d.get("first_pass_mbps", 0),
            "throttle_pct": d.get("throttle_pct", 0), "note": d.get("downtime_note", ""),
            "forced": "max-time" in d.get("downtime_note", ""), "returned_unix": returned_unix}


def migrate_qemu(env, run):
    port = free_port()
    run.dst = run.spawn(run.vmm_cmd(run.dst_sock, incoming=f"tcp:127.0.0.1:{port}"))
    qd = QMP(run.dst_sock)
    deadline = time.monotonic() + 20
    while qd.cmd("query-status").get("status") != "inmigrate":
        if time.monotonic() > deadline:
            raise RuntimeError("QEMU destination not waiting for a migration")
        time.sleep(0.02)
    q = QMP(run.src_sock)
    q.cmd("migrate-set-capabilities", {"capabilities": [
        {"capability": "events", "state": True},
        {"capability": "auto-converge", "state": True}]})
    q.cmd("migrate-set-parameters", {"max-bandwidth": 64 << 30,
                                     "downtime-limit": env.a.downtime_ms})
    run.watch.send_signal(signal.SIGUSR2)
    time.sleep(0.3)
    t0 = time.monotonic()
    q.cmd("migrate", {"uri": f"tcp:127.0.0.1:{port}"})
    sync0, fp_ms, fp_bytes, forced, throttle = None, 0.0, 0, False, 0
    while True:
        info = q.cmd("query-migrate")
        st = info.get("status")
        ram = info.get("ram", {})
        now = time.monotonic()
        throttle = max(throttle, info.get("cpu-throttle-percentage", 0))
        sync = ram.get("dirty-sync-count")
        if sync is not None:
            if sync0 is None:
                sync0 = sync
            elif sync > sync0 and not fp_ms:
                fp_ms, fp_bytes = (now - t0) * 1e3, ram.get("transferred", 0)
        if st in ("completed", "failed", "cancelled"):
            break
        if not forced and now - t0 > env.a.max_time:
            q.cmd("migrate-set-parameters", {"downtime-limit": 60000})
            forced = True
        if now - t0 > env.a.max_time + 120:
            raise RuntimeError("QEMU migration did not end")
        time.sleep(0.02)
    wall = (time.monotonic() - t0) * 1e3
    returned_unix = time.time()  # completion seen by the 20 ms poll
    if st != "completed":
        raise RuntimeError(f"QEMU migration {st}: {info.get('error-desc', '')}")
    env.raw(f"{run.tag} qemu-query-migrate", info)
    q.close()
    qd.close()
    ram = info.get("ram", {})
    if not fp_ms:  # completed before a second sync was seen: the first pass was everything
        fp_ms, fp_bytes = info.get("total-time", 0), ram.get("transferred", 0)
    total = info.get("total-time") or 0
    return {"total_ms": total if total > 0 else wall, "total_is_wall": total <= 0, "wall_ms": wall,
            "downtime_ms": info.get("downtime", -1), "bytes": ram.get("transferred", 0),
            "rounds": ram.get("dirty-sync-count", 0), "first_pass_ms": fp_ms,
            "first_pass_wire_mbps": fp_bytes / fp_ms / 1e3 if fp_ms else 0,
            "first_pass_ram_mbps": 0, "throttle_pct": throttle, "forced": forced,
            "note": "downtime-limit raised after max-time" if forced else "",
            "returned_unix": returned_unix}


def aggregate(reps):
    """Medians over the runs that worked; the guest pause also as min-max."""
    ok = [r for r in reps if "error" not in r]
    if not ok:
        return reps[-1]
    out = dict(ok[len(ok) // 2])
    for k, v in ok[0].items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out[k] = statistics.median(r[k] for r in ok)
    out["pause_min"] = min(r["pause_ms"] for r in ok)
    out["pause_max"] = max(r["pause_ms"] for r in ok)
    out["forced"] = any(r["forced"] for r in ok)
    out["total_is_wall"] = any(r.get("total_is_wall") for r in ok)
    out["verified"] = all(r["verified"] for r in ok)
    out["n"] = len(ok)
    out["failed_runs"] = len(reps) - len(ok)
    return out


def run_case(env, vmm, mib, rate):
    dirty = rate is not None
    wss = min(mib // 2, 512)
    if rate == FILL:
        # RAM 7/8 written once, then idle: the first pass moves that much incompressible data
        # with nothing else running, so it shows the transfer itself against the loopback.
        cmdline = (f"cpus={env.a.cpus} hz=100 workload=dirty wss={mib * 7 // 8} passes=1 "
                   f"verify=1s status=250ms")
    elif dirty:
        cmdline = f"cpus={env.a.cpus} workload=dirty wss={wss} rate={rate} verify=1s status=250ms"
    else:
        cmdline = f"cpus={env.a.cpus} workload=idle status=250ms"
    tag = f"{vmm}-{mib}-{rate if dirty else 'idle'}"
    run = Run(env, vmm, mib, cmdline, tag)
    try:
        seen = prepare(run, dirty, 60 + mib // 64)
        r = (migrate_vmsnap if vmm == "vmsnap" else migrate_qemu)(env, run)
        hb = run.window_end()
        r["pause_ms"] = hb["max_gap_ms"]
        if r.get("returned_unix") and hb.get("max_gap_start_unix"):
            # Where the largest gap began, relative to `vmsnap migrate` returning (which is
            # just after the destination confirmed): tells a cutover gap from one before it.
            r["gap_start_vs_return_ms"] = (hb["max_gap_start_unix"] - r["returned_unix"]) * 1e3
        r["alive"] = hb["alive"]
        r["dirty_seen_mibps"] = seen
        if dirty:
            run.queue = []
            run.wait(lambda l: l.startswith("VERIFY OK"), 15, "VERIFY OK on the destination")
        r["verified"] = True
        return r
    finally:
        run.close()


# ---- report ------------------------------------------------------------------------------------

def fmt(v, nd=0):
    if v is None:
        return "-"
    return f"{v:.{nd}f}"


def report(env, bound, rows):
    a = env.a
    out = []
    out.append(f"loopback bound (1 GiB over 127.0.0.1, best of 3): {bound[0]:.0f} MB/s "
               f"(runs: {', '.join(f'{x:.0f}' for x in bound[1])})")
    out.append(f"medians of {a.repeat} runs per row (guest pause: median (min-max)); "
               f"(wall): QEMU reported total-time 0, the bench's wall time from `migrate` to "
               f"completed instead")
    out.append(f"downtime target {a.downtime_ms} ms on both; --max-time {a.max_time} s; "
               f"{a.cpus} vCPUs; dirty wss = min(RAM/2, 512 MiB)")
    out.append("")
    out.append("| guest | workload (dirty rate asked / seen MiB/s) | VMM | total ms | downtime ms "
               "(reported) | guest pause ms | MiB sent | rounds | first pass ms / wire MB/s "
               "| throttle % | verify | largest gap began, ms from `migrate` returning |")
    out.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for (mib, rate, vmm), r in rows:
        wl = "idle" if rate is None else "filled 7/8, idle" if rate == FILL else \
            f"dirty {rate} / {r.get('dirty_seen_mibps', 0):.0f}" if "error" not in r \
            else f"dirty {rate}"
        if "error" in r:
            out.append(f"| {size_name(mib)} | {wl} | {vmm} | error: {r['error']} ||||||||| |")
            continue
        failed = f" ({r['failed_runs']} runs failed)" if r.get("failed_runs") else ""
        out.append(
            f"| {size_name(mib)} | {wl} | {vmm} | {fmt(r['total_ms'])}"
            f"{' (wall)' if r.get('total_is_wall') else ''} | "
            f"{fmt(r['downtime_ms'], 1)}{' (forced)' if r['forced'] else ''} | "
            f"{fmt(r['pause_ms'], 1)} ({fmt(r['pause_min'], 1)}-{fmt(r['pause_max'], 1)}) | "
            f"{r['bytes'] / MIB:.1f} | {fmt(r['rounds'], 1 if r['rounds'] % 1 else 0)} | "
            f"{fmt(r['first_pass_ms'])} / {fmt(r['first_pass_wire_mbps'])} | "
            f"{fmt(r['throttle_pct'])} | {'ok' if r['verified'] else 'FAIL'}{failed} | "
            f"{fmt(r.get('gap_start_vs_return_ms'))} |")
    return "\n".join(out)


def targets(env, bound, rows):
    res = dict(rows)
    lines = []

    def get(mib, rate, vmm):
        r = res.get((mib, rate, vmm))
        return r if r and "error" not in r else None
    v = get(1024, None, "vmsnap")
    if v:
        lines.append(f"- idle 1 GiB guest pause < 5 ms: {v['pause_ms']:.1f} ms -> "
                     f"{'met' if v['pause_ms'] < 5 else 'NOT met'}")
    half = env.rates[0]
    for mib in env.sizes:
        v, q = get(mib, half, "vmsnap"), get(mib, half, "qemu")
        if v:
            s = (f"- {size_name(mib)}, dirtier at half the link rate ({half} MiB/s asked): pause "
                 f"{v['pause_ms']:.1f} ms vs target {env.a.downtime_ms} ms -> "
                 f"{'met' if v['pause_ms'] <= env.a.downtime_ms else 'NOT met'}")
            if q:
                s += (f"; QEMU's pause {q['pause_ms']:.1f} ms, a third is {q['pause_ms'] / 3:.1f} "
                      f"-> {'met' if v['pause_ms'] < q['pause_ms'] / 3 else 'NOT met'}")
            lines.append(s)
    wins = tot = 0
    for (mib, rate, vmm), r in rows:
        if vmm != "vmsnap":
            continue
        v, q = get(mib, rate, "vmsnap"), get(mib, rate, "qemu")
        if v and q:
            tot += 1
            wins += v["total_ms"] < q["total_ms"]
    if tot:
        lines.append(f"- total time below QEMU's: {wins} of {tot} configurations")
    for which, pick in (("filled guests (7/8 of RAM written, then idle)", lambda r: r == FILL),
                        ("dirty guests", lambda r: r is not None and r != FILL)):
        fps = [(mib, rate, r["first_pass_wire_mbps"]) for (mib, rate, vmm), r in rows
               if vmm == "vmsnap" and pick(rate) and "error" not in r]
        qfp = [r["first_pass_wire_mbps"] for (mib, rate, vmm), r in rows
               if vmm == "qemu" and pick(rate) and "error" not in r]
        if fps:
            best = max(f[2] for f in fps)
            lines.append(f"- first pass >= 70 % of loopback ({0.7 * bound[0]:.0f} MB/s), {which}: "
                         f"vmsnap {', '.join(f'{f[2]:.0f}' for f in fps)} MB/s (best "
                         f"{100 * best / bound[0]:.0f} % of the bound; QEMU "
                         f"{', '.join(f'{q:.0f}' for q in qfp) or '-'}) -> "
                         f"{'met' if best >= 0.7 * bound[0] else 'NOT met'}")
    return "\n".join(lines)


class Env:
    def __init__(self, a):
        self.a = a
        self.build = os.path.realpath(a.build)
        self.vmsnap = os.path.join(self.build, "vmsnap")
        self.guest = os.path.join(self.build, "tests/guest/guest.elf")
        self.hbwatch = os.path.join(self.build, "tests/hbwatch")
        self.qemu = a.qemu
        self.dir = a.dir
        self.errlog = open(os.path.join(self.dir, "stderr.log"), "a")
        self.rawlog = open(os.path.join(self.dir, "raw.txt"), "a")

    def raw(self, what, obj):
        self.rawlog.write(f"{what} {json.dumps(obj)}\n")
        self.rawlog.flush()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", default="build")
    ap.add_argument("--qemu", default=os.environ.get("QEMU", "qemu-system-x86_64"))
    ap.add_argument("--quick", action="store_true", help="256 MiB only")
    ap.add_argument("--sizes", default="256,1024,4096", help="MiB, comma-separated")
    ap.add_argument("--rates", default="1/2,1/8",
                    help="dirty rates as fractions of the loopback bound, or MiB/s numbers")
    ap.add_argument("--no-filled", dest="filled", action="store_false",
                    help="leave out the filled workload (7/8 of RAM written once, then idle)")
    ap.add_argument("--receive-args", default="",
                    help="extra arguments for vmsnap receive, e.g. '--mem-backend anon'")
    ap.add_argument("--downtime-ms", type=int, default=50)
    ap.add_argument("--max-time", type=int, default=30)
    ap.add_argument("--cpus", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=None,
                    help="runs per configuration, medians reported (default 3; --quick 1)")
    ap.add_argument("--vmms", default="vmsnap,qemu")
    ap.add_argument("--dir", default=None, help="work dir (default: a new one under /tmp)")
    ap.add_argument("--markdown", default=None, help="also write the table to this file")
    a = ap.parse_args()
    a.dir = a.dir or tempfile.mkdtemp(prefix="vmsnap-bench-mig.")
    os.makedirs(a.dir, exist_ok=True)
    env = Env(a)
    a.repeat = a.repeat or (1 if a.quick else 3)
    env.sizes = [256] if a.quick else [int(x) for x in a.sizes.split(",")]
    vmms = a.vmms.split(",")
    t_start = time.monotonic()
    log(f"work dir {a.dir}; measuring the loopback bound")
    bound = loopback_bound()
    log(f"loopback bound {bound[0]:.0f} MB/s")
    env.rates = []
    for x in a.rates.split(","):
        if "/" in x:
            n, d = x.split("/")
            env.rates.append(int(bound[0] * 1e6 * int(n) / int(d) / MIB))
        else:
            env.rates.append(int(x))
    rows = []
    for mib in env.sizes:
        for rate in [None] + ([FILL] if a.filled else []) + env.rates:
            for vmm in vmms:
                t = time.monotonic()
                reps = []
                for _ in range(a.repeat):
                    try:
                        reps.append(run_case(env, vmm, mib, rate))
                    except Exception as e:  # one failed configuration does not end the run
                        reps.append({"error": str(e)[:200]})
                    env.raw("run", {"mib": mib, "rate": rate, "vmm": vmm, **reps[-1]})
                r = aggregate(reps)
                rows.append(((mib, rate, vmm), r))
                env.raw("result", {"mib": mib, "rate": rate, "vmm": vmm, **r})
                log(f"{size_name(mib)} {'idle' if rate is None else rate if rate == FILL else f'dirty {rate} MiB/s'} {vmm}: "
                    + (f"error {r['error']}" if "error" in r else
                       f"total {r['total_ms']:.0f} ms, downtime {r['downtime_ms']:.1f} ms, pause "
                       f"{r['pause_ms']:.1f} ms, {r['bytes'] / MIB:.0f} MiB, {r['rounds']} rounds, "
                       f"first pass {r['first_pass_wire_mbps']:.0f} MB/s, throttle "
                       f"{r['throttle_pct']}%") + f" ({time.monotonic() - t:.0f} s)")
    text = report(env, bound, rows) + "\n\nTargets:\n" + targets(env, bound, rows)
    text += f"\n\nrun took {time.monotonic() - t_start:.0f} s; raw figures: {a.dir}/raw.txt"
    print(text)
    if a.markdown:
        with open(a.markdown, "w") as f:
            f.write(text + "\n")
    return 1 if any("error" in r for _, r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
