"""Helpers the benchmark scripts (bench/*.py) share. Imported as `import benchlib` after the
scripts put their own directory on sys.path, so they run from any directory."""
import os
import time


def idle_cores(window):
    """Idle CPU of the whole machine over @window seconds, in cores (/proc/stat idle+iowait)."""
    def read():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return v[3] + v[4]
    i0, t0 = read(), time.monotonic()
    time.sleep(window)
    return (read() - i0) / os.sysconf("SC_CLK_TCK") / (time.monotonic() - t0)


def wait_quiet(a):
    """Before a measurement: wait (at most --quiet-wait s) until the machine has been at least
    --quiet-idle cores idle over 0.5 s; the other work on this shared machine comes and goes.
    Returns the idle cores last seen."""
    deadline = time.monotonic() + a.quiet_wait
    while True:
        idle = idle_cores(0.5)
        if idle >= a.quiet_idle or time.monotonic() >= deadline:
            return idle
