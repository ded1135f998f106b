#!/usr/bin/env python3
"""virtio-blk benchmark: the test guest's disk=bench under vmsnap and under QEMU microvm
(virtio-blk-device on virtio-mmio, described in ACPI), on the same raw file, next to the host's
own speed on that file, in one run. Run through bench/blk.sh, which builds what it needs;
results go to docs/BENCHMARKS.md by hand.

Every repetition runs each case once, in a rotating order (so that drift of the shared machine
hits all alike), each on a fresh sparse raw file of --mib MiB (truncate) in --dir:
  - vmsnap: `vmsnap run --kernel guest.elf --disk FILE --cmdline "disk=bench ..."`;
  - qemu: `qemu-system-x86_64 -M microvm,acpi=on ... -global virtio-mmio.force-legacy=false
    -drive file=FILE,format=raw,if=none,id=d0 -device virtio-blk-device,drive=d0` (QEMU's
    defaults: cache=writeback, aio=threads, i.e. buffered I/O through the page cache);
  - host (buffered, the bound vmsnap is held to): `dd if=/dev/zero of=FILE bs=REQ
    conv=notrunc,fdatasync` (written through the page cache, then made durable, as the guest's
    writes + FLUSH are: vmsnap uses pwritev/preadv without O_DIRECT, FLUSH is fdatasync), `dd
    if=FILE of=/dev/null bs=REQ` right after (page cache warm, as the guest's read phase finds
    it: it reads what it just wrote), and `bench/blkbench_host rand` (one thread, one 4 KiB pread
    at a time at random offsets, warm) for the same time as the guest's random phase; also
    `blkbench_host read` (sequential preads into QD rotating REQ-sized buffers in a shared
    memfd mapping: the kind and footprint of memory a guest reads into under vmsnap, where
    dd's one buffer stays in the CPU cache), shown as its own row;
  - host-direct (the device under the page cache): the same with oflag=direct / iflag=direct
    and O_DIRECT random reads, the file's pages evicted (POSIX_FADV_DONTNEED) before reading.
The guest (1 vCPU, 256 MiB): sequential writes of the whole disk in REQ-sized requests, QD in
flight, then a flush (counted in the write rate), sequential reads of the same, random 4 KiB
reads for --rand-s; timed with its TSC (DISKBENCH line). All rates in MiB/s (2^20 bytes).
Figures: median (min-max) over --runs repetitions. A guest case needs two busy host threads
(the guest's vCPU polls its queue; the VMM's I/O thread copies), the host's dd one: on the
2-core machine the guest cases suffer first when other work takes a core. "VMM's host CPU":
CPU time of the VMM process (all threads) from its launch to the DISKBENCH line, per second:
2.0 means it had both cores throughout; the load average at the start and end is printed too.
Each case waits first until the machine is quiet (--quiet-idle cores idle over 0.5 s, at most
--quiet-wait s): other sessions' work on the shared machine comes and goes.
"""
import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import idle_cores, wait_quiet  # noqa: E402

MIB = 1 << 20


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def kv(line):
    return {k: float(v) for k, v in re.findall(r"(\w+)=(-?[0-9.]+)", line)}


class Env:
    def __init__(self, a):
        self.a = a
        self.build = os.path.realpath(a.build)
        self.vmsnap = os.path.join(self.build, "vmsnap")
        self.guest = os.path.join(self.build, "tests/guest/guest.elf")
        self.helper = os.path.join(self.build, "bench/blkbench_host")
        self.dir = a.dir
        self.file = os.path.join(self.dir, "disk.raw")
        self.errlog = open(os.path.join(self.dir, "stderr.log"), "a")
        self.rawlog = open(os.path.join(self.dir, "raw.txt"), "a")

    def raw(self, line):
        self.rawlog.write(line + "\n")
        self.rawlog.flush()

    def fresh_file(self):
        if os.path.exists(self.file):
            os.unlink(self.file)
        os.sync()  # no writeback of an earlier case left to compete with this one
        with open(self.file, "wb") as f:
            f.truncate(self.a.mib * MIB)


def dd(args):
    """Run dd; the seconds it reports for the copy."""
    r = subprocess.run(["dd"] + args, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"dd {' '.join(args)}: {r.stderr.strip()}")
    m = re.search(r"copied, ([0-9.e+-]+) s", r.stderr)
    if not m:
        raise RuntimeError(f"dd: cannot parse '{r.stderr.strip()}'")
    return float(m.group(1))


def evict(path):
    fd = os.open(path, os.O_RDONLY)
    os.fdatasync(fd)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)


def run_host(env, direct):
    a = env.a
    env.fresh_file()
    bs = f"{a.req_kib}K"
    count = str(a.mib * 1024 // a.req_kib)
    wflags = ["oflag=direct"] if direct else []
    ws = dd(["if=/dev/zero", f"of={env.file}", f"bs={bs}", f"count={count}",
             "conv=notrunc,fdatasync"] + wflags)
    if direct:
        evict(env.file)
    rs = dd([f"if={env.file}", "of=/dev/null", f"bs={bs}"]
            + (["iflag=direct"] if direct else []))
    if direct:
        evict(env.file)
    cmd = [env.helper, "rand", env.file, str(a.rand_s)] + (["direct"] if direct else [])
    r = subprocess.run(cmd, capture_output=True, text=True, check=True)
    out = {"seq_write_mibps": a.mib / ws, "seq_read_mibps": a.mib / rs,
           "rand4k_read_iops": kv(r.stdout)["rand4k_iops"]}
    if not direct:
        r = subprocess.run([env.helper, "read", env.file, str(a.req_kib), str(a.qd)],
                           capture_output=True, text=True, check=True)
        out["seq_read_rot_mibps"] = kv(r.stdout)["read_mibps"]
    return out


def guest_cmdline(a):
    return (f"disk=bench disk_qd={a.qd} disk_req={a.req_kib} disk_rand={int(a.rand_s * 1000)}ms "
            f"status=10s")


def qemu_cmd(env, disk):
    return [env.a.qemu, "-M", "microvm,acpi=on", "-enable-kvm", "-cpu", "host", "-m", "256M",
            "-display", "none", "-nodefaults", "-no-user-config", "-serial", "stdio",
            "-no-reboot", "-global", "virtio-mmio.force-legacy=false",
            "-kernel", env.guest, "-append", guest_cmdline(env.a),
            "-drive", f"id=d0,file={disk},format=raw,if=none",
            "-device", "virtio-blk-device,drive=d0"]


def run_guest(env, vmm, tag):
    env.fresh_file()
    if vmm == "vmsnap":
        cmd = [env.vmsnap, "run", "--kernel", env.guest, "--mem", "256M", "--cpus", "1",
               "--disk", env.file, "--cmdline", guest_cmdline(env.a), "--console", "stdio"]
    else:
        cmd = qemu_cmd(env, env.file)
    con = open(os.path.join(env.dir, f"{tag}.console"), "wb")
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
                         stderr=env.errlog, start_new_session=True)
    line, setup, cores = None, None, None
    t_launch = time.monotonic()
    deadline = t_launch + 120
    try:
        for raw in p.stdout:
            con.write(raw)
            s = raw.decode("latin-1")
            if s.startswith("DISK setup"):
                setup = s.strip()
            if s.startswith("DISKBENCH"):
                line = s.strip()
                # host CPU the VMM used (all its threads) per second since its launch
                with open(f"/proc/{p.pid}/stat") as f:
                    st = f.read().rsplit(")", 1)[1].split()
                cores = ((int(st[11]) + int(st[12])) / os.sysconf("SC_CLK_TCK")
                         / (time.monotonic() - t_launch))
                break
            if s.startswith(("PANIC", "WARN disk", "DISK ERR")):
                raise RuntimeError(f"{vmm}: guest says: {s.strip()}")
            if time.monotonic() > deadline:
                break
    finally:
        p.kill()
        p.wait()
        con.close()
    if not line:
        raise RuntimeError(f"{vmm}: no DISKBENCH line (exit {p.returncode}); see {con.name}")
    r = kv(line)
    if r.get("errors", 0) != 0:
        raise RuntimeError(f"{vmm}: guest saw I/O errors: {line}")
    env.raw(f"{vmm} {setup}")
    return {"seq_write_mibps": r["seq_write_mibps"], "seq_read_mibps": r["seq_read_mibps"],
            "rand4k_read_iops": r["rand4k_read_iops"], "line": line, "vmm_cores": cores}


METRICS = ("seq_write_mibps", "seq_read_mibps", "rand4k_read_iops")


def fmt(v):
    return f"{v:.0f}"


def cell(vals):
    if not vals:
        return "-"
    return f"{fmt(statistics.median(vals))} ({fmt(min(vals))}-{fmt(max(vals))})"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default="build")
    ap.add_argument("--qemu", default="qemu-system-x86_64")
    ap.add_argument("--mib", type=int, default=1024, help="disk size = bytes moved (default 1024)")
    ap.add_argument("--runs", type=int, default=5, help="repetitions (default 5)")
    ap.add_argument("--qd", type=int, default=16, help="guest requests in flight (default 16)")
    ap.add_argument("--req-kib", type=int, default=256,
                    help="sequential request size, guest and dd bs (default 256)")
    ap.add_argument("--rand-s", type=float, default=2.0, help="random phase seconds (default 2)")
    ap.add_argument("--cases", default="host,host-direct,vmsnap,qemu")
    ap.add_argument("--quiet-idle", type=float, default=1.8,
                    help="idle cores to wait for before each measurement (default 1.8; 0: off)")
    ap.add_argument("--quiet-wait", type=float, default=20,
                    help="longest wait for that, seconds (default 20)")
    ap.add_argument("--dir", help="work directory (default a new /var/tmp/vmsnap-bench-blk.*)")
    ap.add_argument("--markdown", help="also write the table to this file")
    a = ap.parse_args()
    if a.dir is None:
        a.dir = tempfile.mkdtemp(prefix="vmsnap-bench-blk.", dir="/var/tmp")
    os.makedirs(a.dir, exist_ok=True)
    env = Env(a)
    cases = a.cases.split(",")
    fstype = subprocess.run(["findmnt", "-n", "-o", "FSTYPE", "-T", a.dir], capture_output=True,
                            text=True).stdout.strip() or "?"
    t_start = time.monotonic()
    load0 = os.getloadavg()[0]
    log(f"bench/blk: {a.mib} MiB on {a.dir} ({fstype}), {a.runs} runs, qd={a.qd} "
        f"req={a.req_kib} KiB, random {a.rand_s} s; load average {os.getloadavg()[0]:.1f}")
    res = {c: {m: [] for m in METRICS} for c in cases}
    rot = []
    vcores = {}
    idles = []
    for i in range(a.runs):
        order = cases[i % len(cases):] + cases[:i % len(cases)]
        for c in order:
            if a.quiet_idle > 0:
                idles.append(wait_quiet(a))
            if c in ("host", "host-direct"):
                r = run_host(env, c == "host-direct")
            else:
                r = run_guest(env, c, f"{c}-{i}")
            for m in METRICS:
                res[c][m].append(r[m])
            if "seq_read_rot_mibps" in r:
                rot.append(r["seq_read_rot_mibps"])
            if r.get("vmm_cores") is not None:
                vcores.setdefault(c, []).append(r["vmm_cores"])
            extra = f" vmm_cores={r['vmm_cores']:.2f}" if r.get("vmm_cores") is not None else ""
            env.raw(f"run={i} case={c} " + " ".join(f"{m}={r[m]:.1f}" for m in METRICS) + extra)
            log(f"  run {i} {c:12s} " + " ".join(f"{m}={r[m]:.0f}" for m in METRICS) + extra)
    if os.path.exists(env.file):
        os.unlink(env.file)
    load_end = os.getloadavg()[0]

    names = {"vmsnap": "vmsnap (guest)", "qemu": "QEMU 7.2 microvm (guest)",
             "host": "host, buffered (the bound)", "host-direct": "host, O_DIRECT (device)"}
    out = []
    out.append(f"virtio-blk, {a.mib} MiB raw file on {fstype}, guest qd={a.qd}, sequential "
               f"requests {a.req_kib} KiB, random 4 KiB reads for {a.rand_s:g} s; "
               f"median (min-max) of {a.runs} runs")
    out.append("")
    out.append("| case | seq write MiB/s (incl. flush) | seq read MiB/s | rand 4 KiB read IOPS "
               "| VMM's host CPU, cores |")
    out.append("|---|--:|--:|--:|--:|")
    for c in cases:
        vc = vcores.get(c)
        vcs = (f"{statistics.median(vc):.2f} ({min(vc):.2f}-{max(vc):.2f})" if vc else "")
        out.append(f"| {names.get(c, c)} | " + " | ".join(cell(res[c][m]) for m in METRICS)
                   + f" | {vcs} |")
        if c == "host" and rot:
            out.append(f"| host, buffered, reads into {a.qd} rotating {a.req_kib} KiB buffers "
                       f"in a memfd | - | {cell(rot)} | - | |")
    med = {c: {m: statistics.median(res[c][m]) for m in METRICS} for c in cases}
    if "host" in med:
        out.append("")
        out.append("| ratio of medians | seq write | seq read | rand 4 KiB read |")
        out.append("|---|--:|--:|--:|")
        for c in ("vmsnap", "qemu"):
            if c in med:
                out.append(f"| {c} / host buffered | " + " | ".join(
                    f"{100 * med[c][m] / med['host'][m]:.0f} %" for m in METRICS) + " |")
        if "vmsnap" in med and "qemu" in med:
            out.append("| vmsnap / qemu | " + " | ".join(
                f"{med['vmsnap'][m] / med['qemu'][m]:.2f}x" for m in METRICS) + " |")
        out.append("")
        if "vmsnap" in med:
            ok = []
            for m, what in (("seq_write_mibps", "write"), ("seq_read_mibps", "read")):
                r = med["vmsnap"][m] / med["host"][m]
                ok.append(f"sequential {what} {100 * r:.0f} % of the host's buffered bound: "
                          + ("MET" if r >= 0.8 else "NOT MET"))
            out.append("Target (sequential within 80 % of the host's bound): " + "; ".join(ok))
    out.append("")
    if idles:
        out.append(f"Each case started once the machine had been {a.quiet_idle:g} cores idle over "
                   f"0.5 s (or after {a.quiet_wait:g} s of waiting): idle cores seen before the "
                   f"cases: median {statistics.median(idles):.2f}, lowest {min(idles):.2f}.")
    out.append(f"Load average {load0:.1f} at the start, {load_end:.1f} at the end; whole run "
               f"{time.monotonic() - t_start:.0f} s; raw samples: {a.dir}/raw.txt")
    text = "\n".join(out)
    print(text)
    if a.markdown:
        with open(a.markdown, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    try:
        main()
    except (RuntimeError, subprocess.CalledProcessError) as e:
        log(f"bench/blk: {e}")
        sys.exit(1)
