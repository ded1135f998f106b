#!/usr/bin/env python3
"""Snapshot benchmark: vmsnap save/restore next to QEMU 7.2 migrate-to-file, and the machine's
bounds, in one run on the same test guest (issue 3, "Performance"). Run through bench/snapshot.sh,
which builds what it needs; results go to docs/BENCHMARKS.md by hand.

For every guest size (256 MiB, 1 GiB, 4 GiB) and touched fraction (0 %, 25 %, 100 % of RAM):
  - boot the test guest (2 vCPUs) under each VMM with its console piped to hbwatch; 0 % is
    workload=idle, otherwise workload=dirty wss=<fraction of RAM> rate=<--rate>; wait until the
    dirtier has written its whole working set once (a periodic VERIFY OK with unwritten=0); it
    keeps dirtying after that, by default at full speed (--rate 0): rate-limited dirtying halts
    the vCPUs between ticks, which is pathologically slow here for working sets near RAM size
    (PVM shadow paging), and the save pauses the guest anyway;
  - save: vmsnap `save --json` (its default: pause, write, resume, fsync, rename); QEMU: QMP
    `stop`, `migrate` to `exec:cat > FILE`, `cont` once migration has completed, then fdatasync
    FILE (the whole save is the pause, as with vmsnap; max-bandwidth raised from QEMU's 128 MiB/s
    default). Pause = largest heartbeat gap hbwatch saw in a window around the save;
    durable = wall time from the save request to a durable file;
  - image size: allocated blocks (du) and apparent size;
  - restore to the first heartbeat from launching the VMM (bench/snapbench_hb), cache cold
    (the image's pages evicted with POSIX_FADV_DONTNEED, or all caches dropped with
    --drop-caches): vmsnap --memory-mode mmap (median of 3), eager, QEMU -incoming "exec:cat FILE";
    and vmsnap mmap warm (right after eager read the whole file). The first restore of each kind
    runs until the guest's periodic verify passes (dirty guests), as a correctness check.
Plus the machine's bounds in the same run: dd 1 GiB conv=fdatasync to the image directory, a cold
sequential read of it, memcpy (bench/snapbench_memcpy); and the target check of a 512 MiB guest.
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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import wait_quiet  # noqa: E402
import time

MIB = 1 << 20


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def parse_size(s):
    m = re.fullmatch(r"(\d+)([MG])", s.strip().upper().rstrip("IB"))
    if not m:
        raise argparse.ArgumentTypeError(f"bad size '{s}' (e.g. 256M, 1G)")
    return int(m.group(1)) * (1024 if m.group(2) == "G" else 1)


def size_name(mib):
    return f"{mib // 1024} GiB" if mib % 1024 == 0 else f"{mib} MiB"


def kv(line):
    return {k: float(v) for k, v in re.findall(r"(\w+)=(-?[0-9.]+)", line)}


class Env:
    def __init__(self, a):
        self.a = a
        self.build = os.path.realpath(a.build)
        self.vmsnap = os.path.join(self.build, "vmsnap")
        self.guest = os.path.join(self.build, "tests/guest/guest.elf")
        self.hbwatch = os.path.join(self.build, "tests/hbwatch")
        self.hb = os.path.join(self.build, "bench/snapbench_hb")
        self.memcpy = os.path.join(self.build, "bench/snapbench_memcpy")
        self.qemu = a.qemu
        self.dir = a.dir
        self.errlog = open(os.path.join(self.dir, "stderr.log"), "a")
        self.rawlog = open(os.path.join(self.dir, "raw.txt"), "a")

    def raw(self, what, obj):
        self.rawlog.write(f"{what} {json.dumps(obj)}\n")
        self.rawlog.flush()

    def evict(self, path):
        """Make reading @path cold; returns the bytes still cached (fincore), or None."""
        if self.a.drop_caches:
            os.sync()
            with open("/proc/sys/vm/drop_caches", "w") as f:
                f.write("3\n")
        else:
            fd = os.open(path, os.O_RDONLY)
            os.fdatasync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.close(fd)
        return self.cached(path)

    def cached(self, path):
        try:
            out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", path],
                                 capture_output=True, text=True, timeout=10).stdout.strip()
            return int(out)
        except (OSError, ValueError, subprocess.SubprocessError):
            return None


# ---- the machine's bounds ---------------------------------------------------------------------

def machine_bounds(env):
    path = os.path.join(env.dir, "dd.bin")
    t = time.monotonic()
    subprocess.run(["dd", "if=/dev/zero", f"of={path}", "bs=1M", "count=1024", "conv=fdatasync",
                    "status=none"], check=True)
    write_s = time.monotonic() - t
    env.evict(path)
    t = time.monotonic()
    subprocess.run(["dd", f"if={path}", "of=/dev/null", "bs=1M", "status=none"], check=True)
    read_s = time.monotonic() - t
    os.unlink(path)
    out = subprocess.run([env.memcpy, "512", "5"], capture_output=True, text=True,
                         check=True).stdout
    m = kv(out)
    b = {"disk_write_mbps": 1024 * MIB / write_s / 1e6, "disk_read_cold_mbps": 1024 * MIB / read_s / 1e6,
         "memcpy_gbps": m["memcpy_best_gbps"], "memcpy_median_gbps": m["memcpy_median_gbps"]}
    env.raw("bounds", b)
    return b


# ---- a running guest under either VMM, its console watched by hbwatch -------------------------

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
        self.events = []
        self._read()  # greeting
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
                self.events.append(r)
                continue
            if "error" in r:
                raise RuntimeError(f"QMP {name}: {r['error'].get('desc')}")
            return r.get("return")

    def wait_event(self, pred, timeout):
        deadline = time.monotonic() + timeout
        while True:
            for i, e in enumerate(self.events):
                if pred(e):
                    return self.events.pop(i)
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError("QMP: timeout waiting for an event")
            self.s.settimeout(left)
            try:
                r = self._read()
            finally:
                self.s.settimeout(None)
            if "event" in r:
                self.events.append(r)


class Guest:
    def __init__(self, env, vmm, mib, cmdline, tag):
        self.env, self.vmm, self.mib, self.cmdline = env, vmm, mib, cmdline
        self.sock = os.path.join(env.dir, f"{tag}.sock")
        self.log = os.path.join(env.dir, f"{tag}.console")
        self.sum = os.path.join(env.dir, f"{tag}.hb.json")
        for p in (self.sock, self.sum):
            if os.path.exists(p):
                os.unlink(p)
        if vmm == "vmsnap":
            cmd = [env.vmsnap, "run", "--kernel", env.guest, "--mem", f"{mib}M", "--cpus",
                   str(env.a.cpus), "--cmdline", cmdline, "--api", self.sock, "--console", "stdio"]
        else:
            cmd = qemu_cmd(env, mib, cmdline) + ["-qmp", f"unix:{self.sock},server=on,wait=off"]
        self.p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                  stderr=env.errlog, start_new_session=True)
        self.w = subprocess.Popen([env.hbwatch, "-l", self.log, "-j", "-s", self.sum],
                                  stdin=self.p.stdout, stdout=subprocess.DEVNULL,
                                  stderr=env.errlog)
        self.p.stdout.close()
        self.pos = 0
        self.buf = ""
        self.queue = []

    def lines(self):
        """New complete text lines of the console (heartbeat tokens dropped)."""
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
            if self.p.poll() is not None:
                raise RuntimeError(f"{self.vmm} exited ({self.p.returncode}) waiting for {what}")
            time.sleep(0.02)
        raise RuntimeError(f"{self.vmm}: timeout waiting for {what}")

    def wait_ready(self, dirty, timeout):
        boot = self.wait(lambda l: l if l.startswith("BOOT ") else None, timeout, "BOOT")
        pages = int(kv(boot).get("pages", 0))
        self.wait(lambda l: l.startswith("READY"), timeout, "READY")
        if not dirty:
            self.wait(lambda l: l.startswith("STATUS"), timeout, "STATUS")
            return 0
        wss = pages * 4096 / MIB

        def filled(line):  # a verify pass over every CPU's slice found no page unwritten
            if line.startswith("VERIFY OK") and " unwritten=" in line:
                s = kv(line)
                return s.get("unwritten", 1) == 0 and s.get("pages", 0) == pages
            return False
        self.wait(filled, timeout, f"the dirtier to write {wss:.0f} MiB")
        return wss

    def window_start(self):
        self.w.send_signal(signal.SIGUSR2)

    def summary(self):
        if os.path.exists(self.sum):
            os.unlink(self.sum)
        self.w.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 5
        while not os.path.exists(self.sum):
            if time.monotonic() > deadline:
                raise RuntimeError("hbwatch wrote no summary")
            time.sleep(0.01)
        with open(self.sum) as f:
            return json.load(f)

    def window_end(self, timeout=20):
        """The window's summary once the guest is seen running again (a heartbeat in the last
        20 ms), so that the largest gap covers the whole pause."""
        time.sleep(0.2)
        deadline = time.monotonic() + timeout
        while True:
            s = self.summary()
            if s["since_last_hb_ms"] < 20 or time.monotonic() > deadline:
                s["alive"] = s["since_last_hb_ms"] < 20
                return s
            time.sleep(0.05)

    def kill(self):
        try:
            os.killpg(self.p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.p.wait()
        try:
            self.w.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.w.kill()
            self.w.wait()


def qemu_cmd(env, mib, cmdline):
    return [env.qemu, "-M", "microvm", "-enable-kvm", "-cpu", "host", "-m", f"{mib}M", "-smp",
            str(env.a.cpus), "-display", "none", "-nodefaults", "-no-user-config", "-serial",
            "stdio", "-no-reboot", "-kernel", env.guest, "-append", cmdline,
            # do not send the run state: the destination then starts the guest as soon as the
            # image is in (autostart), although the source was stopped before the migration
            "-global", "migration.store-global-state=off"]


def guest_cmdline(env, mib, frac):
    if frac == 0:
        return f"cpus={env.a.cpus} workload=idle status=250ms"
    return (f"cpus={env.a.cpus} workload=dirty wss={mib * frac // 100} rate={env.a.rate} "
            f"verify=1s status=250ms")


# ---- save --------------------------------------------------------------------------------------

def image_size(path):
    st = os.stat(path)
    return {"du_bytes": st.st_blocks * 512, "apparent_bytes": st.st_size}


def save_vmsnap(env, g, img):
    g.window_start()
    time.sleep(0.3)
    t0 = time.monotonic()
    r = subprocess.run([env.vmsnap, "save", "--api", g.sock, img, "--json"], capture_output=True,
                       text=True)
    wall = time.monotonic() - t0
    hb = g.window_end()
    if r.returncode != 0:
        raise RuntimeError(f"vmsnap save failed: {r.stderr.strip()}")
    rep = json.loads(r.stdout.strip().splitlines()[-1])
    out = {"pause_guest_ms": hb["max_gap_ms"], "pause_reported_ms": rep.get("pause_ms"),
           "durable_ms": wall * 1e3, "reported_total_ms": rep.get("total_ms"),
           "alive_after": hb["alive"], "report": rep}
    out.update(image_size(img))
    return out


def save_qemu(env, g, img):
    q = QMP(g.sock)
    q.cmd("migrate-set-capabilities", {"capabilities": [{"capability": "events", "state": True}]})
    q.cmd("migrate-set-parameters", {"max-bandwidth": env.a.qemu_bandwidth})
    done = img + ".done"
    g.window_start()
    time.sleep(0.3)
    t0 = time.monotonic()
    q.cmd("stop")
    q.cmd("migrate", {"uri": f"exec:cat > '{img}' && : > '{done}'"})
    ev = q.wait_event(lambda e: e["event"] == "MIGRATION" and e["data"]["status"] in
                      ("completed", "failed", "cancelled"), 600)
    if ev["data"]["status"] != "completed":
        raise RuntimeError(f"QEMU migration {ev['data']['status']}")
    info = q.cmd("query-migrate")
    while True:  # the "completed" event comes before QEMU leaves finish-migrate
        try:
            q.cmd("cont")
            break
        except RuntimeError as e:
            if "not finalized" not in str(e) or time.monotonic() - t0 > 600:
                raise
            time.sleep(0.0005)
    t_cont = time.monotonic()
    while not os.path.exists(done):  # cat has written everything
        time.sleep(0.0005)
    fd = os.open(img, os.O_RDONLY)
    os.fdatasync(fd)
    os.close(fd)
    wall = time.monotonic() - t0
    hb = g.window_end()
    os.unlink(done)
    q.s.close()
    out = {"pause_guest_ms": hb["max_gap_ms"], "pause_reported_ms": (t_cont - t0) * 1e3,
           "durable_ms": wall * 1e3, "alive_after": hb["alive"],
           "report": {"total-time": info.get("total-time"), "downtime": info.get("downtime"),
                      "ram": info.get("ram")}}
    out.update(image_size(img))
    return out


# ---- restore -----------------------------------------------------------------------------------

def restore_once(env, vmm, cmd, img, dirty, check, tag, cold=True):
    resident = env.evict(img) if cold else env.cached(img)
    hbargs = [env.hb, "-t", "120", "-l", os.path.join(env.dir, f"{tag}.console"),
              "-f", "PANIC", "-f", "VERIFY FAIL"]
    if check and dirty:
        hbargs += ["-u", "VERIFY OK"]
    else:
        hbargs += ["-a", "300"]
    r = subprocess.run(hbargs + ["--"] + cmd, capture_output=True, text=True)
    env.errlog.write(r.stderr)
    m = kv(r.stdout)
    t = re.search(r"restored .* in ([0-9.]+) ms \(open\+checks ([0-9.]+), create ([0-9.]+), "
                  r"memory ([0-9.]+) \w+, state ([0-9.]+)\)", r.stderr)
    res = {"vmm": vmm, "first_hb_ms": m.get("first_hb_ms", -1), "rc": r.returncode,
           "vmsnap_breakdown_ms": dict(zip(("total", "open", "create", "memory", "state"),
                                           map(float, t.groups()))) if t else None,
           "verified": bool(m.get("until_seen")) if (check and dirty) else None,
           "max_gap_after_ms": m.get("max_gap_after_ms"), "cached_bytes_before": resident,
           "cold": cold, "line": r.stdout.strip()}
    if r.returncode != 0 or res["first_hb_ms"] < 0:
        log(f"  restore {tag} failed (rc {r.returncode}): {r.stdout.strip()} {r.stderr.strip()[-300:]}")
        res["first_hb_ms"] = None
    return res


def restore_vmsnap(env, img, dirty, tag):
    out = {}

    def cmd(mode):
        return [env.vmsnap, "restore", img, "--memory-mode", mode, "--console", "stdio", "-v"]
    runs = [restore_once(env, "vmsnap", cmd("mmap"), img, dirty, True, f"{tag}-mmap0")]
    for i in range(1, env.a.mmap_runs):
        runs.append(restore_once(env, "vmsnap", cmd("mmap"), img, dirty, False, f"{tag}-mmap{i}"))
    ok = [r["first_hb_ms"] for r in runs if r["first_hb_ms"] is not None]
    out["mmap_cold_ms"] = statistics.median(ok) if len(ok) == len(runs) else None
    out["mmap_cold_runs"] = runs
    out["mmap_verified"] = runs[0]["verified"]
    e = restore_once(env, "vmsnap", cmd("eager"), img, dirty, True, f"{tag}-eager")
    out["eager_cold_ms"], out["eager_verified"], out["eager_run"] = e["first_hb_ms"], e["verified"], e
    w = restore_once(env, "vmsnap", cmd("mmap"), img, dirty, False, f"{tag}-mmapwarm", cold=False)
    out["mmap_warm_ms"], out["mmap_warm_run"] = w["first_hb_ms"], w
    return out


def restore_qemu(env, img, mib, cmdline, dirty, tag):
    cmd = qemu_cmd(env, mib, cmdline) + ["-incoming", f"exec:cat '{img}'"]
    r = restore_once(env, "qemu", cmd, img, dirty, True, f"{tag}-incoming")
    return {"incoming_cold_ms": r["first_hb_ms"], "verified": r["verified"], "run": r}


# ---- one configuration -------------------------------------------------------------------------

def run_config(env, mib, frac):
    dirty = frac > 0
    cmdline = guest_cmdline(env, mib, frac)
    res = {"mib": mib, "frac": frac, "cmdline": cmdline}
    timeout = 60 + mib / 64
    for vmm in env.a.vmms:
        tag = f"{vmm}-{mib}-{frac}"
        img = os.path.join(env.dir, f"{tag}.img")
        r = {}
        g = Guest(env, vmm, mib, cmdline, tag)
        try:
            t = time.monotonic()
            r["wss_mib"] = g.wait_ready(dirty, timeout)
            r["fill_s"] = time.monotonic() - t
            r["save"] = (save_vmsnap if vmm == "vmsnap" else save_qemu)(env, g, img)
        except (RuntimeError, OSError, ValueError) as e:
            log(f"  {tag}: {e}")
            r["error"] = str(e)
        finally:
            g.kill()
        if "save" in r:
            try:
                if vmm == "vmsnap":
                    r["restore"] = restore_vmsnap(env, img, dirty, tag)
                else:
                    r["restore"] = restore_qemu(env, img, mib, cmdline, dirty, tag)
            except (RuntimeError, OSError) as e:
                log(f"  {tag} restore: {e}")
                r["error"] = str(e)
        if os.path.exists(img) and not env.a.keep:
            os.unlink(img)
        res[vmm] = r
        env.raw(tag, r)
        log(f"  {tag}: " + summary_line(r))
    return res


def summary_line(r):
    s, rs = r.get("save", {}), r.get("restore", {})
    return (f"pause {fmt(s.get('pause_guest_ms'))} ms, durable {fmt(s.get('durable_ms'))} ms, "
            f"image {fmt(s.get('du_bytes'), MIB)} MiB, restore "
            + ", ".join(f"{k} {fmt(v)}" for k, v in rs.items() if k.endswith("_ms")))


def fmt(v, div=1, nd=None):
    if v is None:
        return "-"
    v = v / div
    if nd is None:
        nd = 0 if v >= 100 else 1 if v >= 10 else 2 if v >= 1 else 3
    return f"{v:.{nd}f}"


# ---- the 512 MiB restore target ----------------------------------------------------------------

def target_512(env):
    mib, frac = 512, 25
    cmdline = guest_cmdline(env, mib, frac)
    tag = "target-512"
    img = os.path.join(env.dir, f"{tag}.img")
    g = Guest(env, "vmsnap", mib, cmdline, tag)
    try:
        g.wait_ready(True, 60)
        save_vmsnap(env, g, img)
    finally:
        g.kill()

    def cmd():
        return [env.vmsnap, "restore", img, "--memory-mode", "mmap", "--console", "stdio", "-v"]
    # Each run on a quiet machine (the 4 GiB guests before may still be being torn down).
    runs, warm, n = [], [], env.a.target_runs
    for i in range(n):
        wait_quiet(env.a)
        runs.append(restore_once(env, "vmsnap", cmd(), img, True, i == 0, f"{tag}-{i}"))
    # Warm: the image in the page cache, as when it was just saved or is restored often.
    for i in range(n):
        wait_quiet(env.a)
        warm.append(restore_once(env, "vmsnap", cmd(), img, True, False, f"{tag}-warm-{i}",
                                 cold=False))
    if not env.a.keep:
        os.unlink(img)
    ok = [r["first_hb_ms"] for r in runs if r["first_hb_ms"] is not None]
    wok = [r["first_hb_ms"] for r in warm if r["first_hb_ms"] is not None]
    bd = [r["vmsnap_breakdown_ms"] for r in runs if r["vmsnap_breakdown_ms"]]
    wbd = [r["vmsnap_breakdown_ms"] for r in warm if r["vmsnap_breakdown_ms"]]
    out = {"runs_ms": ok, "median_ms": statistics.median(ok) if len(ok) == n else None,
           "warm_runs_ms": wok, "warm_median_ms": statistics.median(wok) if len(wok) == n else None,
           "verified": runs[0]["verified"],
           "breakdown_median_ms": {k: statistics.median(b[k] for b in bd) for k in bd[0]} if bd else None,
           "warm_breakdown_median_ms":
               {k: statistics.median(b[k] for b in wbd) for k in wbd[0]} if wbd else None}
    env.raw(tag, out)
    return out


# ---- report ------------------------------------------------------------------------------------

def report(env, bounds, results, t512, md):
    a = env.a
    out = []
    p = out.append
    p(f"Machine bounds (same run): sequential write 1 GiB with fdatasync "
      f"{bounds['disk_write_mbps']:.0f} MB/s; cold sequential read {bounds['disk_read_cold_mbps']:.0f} MB/s; "
      f"memcpy {bounds['memcpy_gbps']:.1f} GB/s (best of 5, 512 MiB; median {bounds['memcpy_median_gbps']:.1f}).")
    p(f"Load average (1 min) at start {env.load[0]:.1f}, at end {env.load[1]:.1f}, on "
      f"{os.cpu_count()} CPUs; guest: {a.cpus} vCPUs, dirtier rate "
      f"{a.rate or 'full speed'}{' MiB/s' if a.rate else ''}.")
    p("")
    hdr = ["RAM", "touched", "VMM", "pause guest ms", "pause reported ms", "durable ms",
           "image du MiB", "image apparent MiB", "restore mmap cold ms", "restore eager cold ms",
           "restore mmap warm ms", "disk bound +10% ms"]
    rows = []
    for r in results:
        bound = r["mib"] * r["frac"] / 100 * MIB / (bounds["disk_write_mbps"] * 1e6) * 1.1e3
        for vmm in a.vmms:
            x = r.get(vmm, {})
            s, rs = x.get("save", {}), x.get("restore", {})
            if vmm == "vmsnap":
                rest = [rs.get("mmap_cold_ms"), rs.get("eager_cold_ms"), rs.get("mmap_warm_ms")]
            else:
                rest = [None, rs.get("incoming_cold_ms"), None]
            rows.append([size_name(r["mib"]), f"{r['frac']} %", vmm if "error" not in x else vmm + " (error)",
                         fmt(s.get("pause_guest_ms")), fmt(s.get("pause_reported_ms")),
                         fmt(s.get("durable_ms")), fmt(s.get("du_bytes"), MIB, 1),
                         fmt(s.get("apparent_bytes"), MIB, 1)] + [fmt(v) for v in rest] +
                        [fmt(bound) if vmm == "vmsnap" and r["frac"] else ""])
    if md:
        p("| " + " | ".join(hdr) + " |")
        p("|" + "|".join("---" if i < 3 else "--:" for i in range(len(hdr))) + "|")
        for row in rows:
            p("| " + " | ".join(row) + " |")
    else:
        short = ["RAM", "touch", "VMM", "pause(g)", "pause(r)", "durable", "du MiB", "app MiB",
                 "mmap", "eager/in", "mmapwarm", "disk+10%"]
        w = [max(len(short[i]), *(len(row[i]) for row in rows)) for i in range(len(short))]
        p("  ".join(short[i].rjust(w[i]) if i >= 3 else short[i].ljust(w[i]) for i in range(len(short))))
        for row in rows:
            p("  ".join(row[i].rjust(w[i]) if i >= 3 else row[i].ljust(w[i]) for i in range(len(row))))
    p("")
    p("pause(g): largest heartbeat gap the guest showed around the save; pause(r): vmsnap's pause_ms, "
      "for QEMU the host-timed stop->cont; durable: save request to a durable file (vmsnap: `save` "
      "wall time; QEMU: stop, migrate to exec:cat, cont, fdatasync); restore: launch to first "
      "heartbeat, 'eager/in' = vmsnap eager or QEMU -incoming; cold = image evicted from the page "
      f"cache ({'drop_caches' if a.drop_caches else 'POSIX_FADV_DONTNEED on the image'}); "
      f"mmap cold = median of {a.mmap_runs}.")
    if t512:
        p(f"512 MiB guest (25 % touched), vmsnap mmap restore cold, {len(t512['runs_ms'])} runs: "
          + ", ".join(fmt(v) for v in t512["runs_ms"]) + f" ms (median {fmt(t512['median_ms'])})"
          + ("; vmsnap's own account (-v), median: " + ", ".join(
              f"{k} {fmt(v)}" for k, v in t512["breakdown_median_ms"].items()) + " ms"
             if t512.get("breakdown_median_ms") else "") + ".")
        if t512.get("warm_runs_ms"):
            p(f"The same, image in the page cache, {len(t512['warm_runs_ms'])} runs: "
              + ", ".join(fmt(v) for v in t512["warm_runs_ms"])
              + f" ms (median {fmt(t512['warm_median_ms'])})"
              + ("; vmsnap's own account, median: " + ", ".join(
                  f"{k} {fmt(v)}" for k, v in t512["warm_breakdown_median_ms"].items()) + " ms"
                 if t512.get("warm_breakdown_median_ms") else "") + ".")
    p("")
    p("Targets (issue 3):")
    for line in targets(env, bounds, results, t512):
        p("  " + line)
    return "\n".join(out)


def targets(env, bounds, results, t512):
    a, out = env.a, []
    by = {(r["mib"], r["frac"]): r for r in results}

    def get(mib, frac, vmm, *path):
        x = by.get((mib, frac), {}).get(vmm, {})
        for k in path:
            x = x.get(k) if isinstance(x, dict) else None
        return x
    # mmap restore under 5 ms for 512 MiB, flat as RAM grows
    if t512 and t512.get("warm_median_ms") is not None:
        w = t512["warm_median_ms"]
        out.append(f"mmap restore < 5 ms for 512 MiB, image in the page cache: "
                   f"{'MET' if w < 5 else 'NOT MET'} (median {fmt(w)} ms)")
    if t512 and t512["median_ms"] is not None:
        out.append(f"mmap restore < 5 ms for 512 MiB, image evicted from the page cache: "
                   f"{'MET' if t512['median_ms'] < 5 else 'NOT MET'} "
                   f"(median {fmt(t512['median_ms'])} ms)")
    mm = [(mib, get(mib, f, "vmsnap", "restore", "mmap_cold_ms")) for mib in a.sizes for f in a.fracs]
    mm = [(m, v) for m, v in mm if v is not None]
    if len({m for m, _ in mm}) > 1:
        small = statistics.median(v for m, v in mm if m == min(x for x, _ in mm))
        big = statistics.median(v for m, v in mm if m == max(x for x, _ in mm))
        flat = big <= small * 1.5 + 1
        out.append(f"mmap restore flat as RAM grows: {'MET' if flat else 'NOT MET'} (median "
                   f"{fmt(small)} ms at {size_name(min(m for m, _ in mm))}, {fmt(big)} ms at "
                   f"{size_name(max(m for m, _ in mm))})")
    # save pause for 4 GiB / 25 %
    mib = 4096 if 4096 in a.sizes else max(a.sizes)
    frac = 25 if 25 in a.fracs else max(a.fracs)
    pg = get(mib, frac, "vmsnap", "save", "pause_guest_ms")
    bound = mib * frac / 100 * MIB / (bounds["disk_write_mbps"] * 1e6) * 1.1e3
    if pg is not None:
        out.append(f"save pause < disk time +10 % for {size_name(mib)}/{frac} %: "
                   f"{'MET' if pg < bound else 'NOT MET'} (pause {fmt(pg)} ms guest-observed, "
                   f"{fmt(get(mib, frac, 'vmsnap', 'save', 'pause_reported_ms'))} ms reported; "
                   f"bound {fmt(bound)} ms)")
    if "qemu" in a.vmms and "vmsnap" in a.vmms:
        worse_img, worse = [], []
        for r in results:
            v, q = r.get("vmsnap", {}), r.get("qemu", {})
            name = f"{size_name(r['mib'])}/{r['frac']} %"
            vs, qs = v.get("save", {}), q.get("save", {})
            if vs.get("du_bytes") is None or qs.get("du_bytes") is None:
                worse.append(f"{name}: not measured")
                continue
            if vs["du_bytes"] > qs["du_bytes"]:
                worse_img.append(f"{name} ({fmt(vs['du_bytes'], MIB, 1)} vs {fmt(qs['du_bytes'], MIB, 1)} MiB)")
            pairs = [("pause", vs.get("pause_guest_ms"), qs.get("pause_guest_ms")),
                     ("durable", vs.get("durable_ms"), qs.get("durable_ms")),
                     ("restore mmap", v.get("restore", {}).get("mmap_cold_ms"),
                      q.get("restore", {}).get("incoming_cold_ms")),
                     ("restore eager", v.get("restore", {}).get("eager_cold_ms"),
                      q.get("restore", {}).get("incoming_cold_ms"))]
            for what, x, y in pairs:
                if x is None or y is None:
                    worse.append(f"{name} {what}: not measured")
                elif x >= y:
                    worse.append(f"{name} {what} {fmt(x)} vs QEMU {fmt(y)} ms")
        out.append("images no larger than QEMU's (allocated blocks; vmsnap's apparent size is the "
                   "RAM size, zero pages being holes): " + ("MET" if not worse_img
                   else "NOT MET at " + ", ".join(worse_img)))
        out.append("every figure better than QEMU's: " + ("MET" if not worse else
                   "NOT MET: " + "; ".join(worse)))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="256 MiB only")
    ap.add_argument("--sizes", type=lambda s: [parse_size(x) for x in s.split(",")],
                    default=[256, 1024, 4096], help="guest sizes, e.g. 256M,1G,4G (default)")
    ap.add_argument("--fractions", dest="fracs", type=lambda s: [int(x) for x in s.split(",")],
                    default=[0, 25, 100], help="touched %% of RAM (default 0,25,100)")
    ap.add_argument("--cpus", type=int, default=2, help="guest vCPUs (default 2)")
    ap.add_argument("--rate", type=int, default=0,
                    help="dirtier rate MiB/s, all vCPUs together (default 0: full speed)")
    ap.add_argument("--vmms", type=lambda s: s.split(","), default=["vmsnap", "qemu"],
                    help="vmsnap,qemu (default both)")
    ap.add_argument("--mmap-runs", type=int, default=3, help="cold mmap restores per image")
    ap.add_argument("--no-target", action="store_true", help="skip the 512 MiB restore target")
    ap.add_argument("--target-runs", type=int, default=7,
                    help="restores of the 512 MiB target, cold and warm each (default 7)")
    ap.add_argument("--quiet-idle", type=float, default=1.8,
                    help="before each 512 MiB target restore, wait for this many idle cores")
    ap.add_argument("--quiet-wait", type=float, default=8,
                    help="... for at most this many seconds")
    ap.add_argument("--drop-caches", action="store_true",
                    help="cold cache by dropping all caches (default: evict only the image)")
    ap.add_argument("--qemu-bandwidth", type=int, default=64 << 30,
                    help="QEMU max-bandwidth in bytes/s (default 64 GiB/s: no cap)")
    ap.add_argument("--build", default=os.environ.get("BUILD", "build"))
    ap.add_argument("--qemu", default=os.environ.get("QEMU", "qemu-system-x86_64"))
    ap.add_argument("--dir", help="image directory (default a new one under /var/tmp)")
    ap.add_argument("--keep", action="store_true", help="keep images and logs")
    ap.add_argument("--markdown", metavar="FILE", help="also write the table as markdown")
    a = ap.parse_args()
    if a.quick:
        a.sizes = [256]
    if not a.dir:
        a.dir = tempfile.mkdtemp(prefix="vmsnap-bench-snap.", dir="/var/tmp")
    os.makedirs(a.dir, exist_ok=True)
    fs = subprocess.run(["stat", "-f", "-c", "%T", a.dir], capture_output=True, text=True).stdout.strip()
    if fs in ("tmpfs", "ramfs"):
        sys.exit(f"snapshot bench: {a.dir} is on {fs}; images must go to a real disk (--dir)")
    env = Env(a)
    t_start = time.monotonic()
    load0 = os.getloadavg()[0]
    if load0 > (os.cpu_count() or 1) * 0.75:
        log(f"snapshot bench: WARNING: load average {load0:.1f} on {os.cpu_count()} CPUs: "
            "something else is running, the figures will be noisy")
    log(f"snapshot bench: images and logs in {a.dir} ({fs}); sizes {a.sizes} MiB, touched {a.fracs} %")
    bounds = machine_bounds(env)
    log(f"  bounds: {bounds}")
    results = []
    for mib in a.sizes:
        for frac in a.fracs:
            log(f"{size_name(mib)}, {frac} % touched")
            results.append(run_config(env, mib, frac))
    t512 = None
    if not a.no_target and "vmsnap" in a.vmms:
        log("512 MiB mmap restore target")
        try:
            t512 = target_512(env)
        except (RuntimeError, OSError) as e:
            log(f"  target-512: {e}")
    env.load = (load0, os.getloadavg()[0])
    text = report(env, bounds, results, t512, False)
    print(text)
    if a.markdown:
        with open(a.markdown, "w") as f:
            f.write(report(env, bounds, results, t512, True) + "\n")
    print(f"\n(total {time.monotonic() - t_start:.0f} s; raw figures and console logs in {a.dir}"
          f"{'' if a.keep else ', images removed'})")

if __name__ == "__main__":
    main()
