"""Process spawner for tests/hostile/hostile.py (stdlib only; runs as `hostile.py --spawner`).

Why: on Linux a child spawned with vfork (what Python's subprocess and posix_spawn use) takes its
parent's RSS high-water mark into its own ru_maxrss at exec. The suite's parent grows (it builds
inputs of hundreds of MB), so its children are spawned from this small process instead, and the
ru_maxrss that os.wait4 reports for them is theirs.

Protocol: one JSON object per line on stdin
  {"id", "argv", "cwd", "env", "stdin": path|null, "stdout": path, "stderr": path, "timeout": s,
   "rss_cap_kb": n, "rlimit_as": bytes|0}
and one JSON object per line on stdout when that child has ended
  {"id", "rc": exit code or -signal, "secs", "maxrss_kb" (wait4), "hwm_kb" (peak VmHWM polled),
   "killed": ""|"timeout"|"rss", "error": ""}
before which {"id", "idle": true} may come once: the child used under 15 % of a CPU for a second (it
waits on a FIFO, a pipe ...), so the suite may start another case beside it.
Each child runs in its own session; on a cap the whole session is killed with SIGKILL. Requests are
served concurrently (one thread each).
"""
import json
import os
import resource
import signal
import subprocess
import sys
import threading
import time

_out_lock = threading.Lock()


def hwm_kb(pid):
    """Peak resident set (VmHWM) of the process's current address space, in KB (0 if gone)."""
    try:
        with open("/proc/%d/status" % pid, "rb") as f:
            for line in f:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def cpu_ticks(pid):
    """utime + stime of a process (all its threads), in clock ticks; None if gone."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except (OSError, IndexError, ValueError):
        return None


def run(req, notify):
    res = {"id": req["id"], "rc": None, "secs": 0.0, "maxrss_kb": 0, "hwm_kb": 0, "killed": "", "error": ""}
    stdin = subprocess.DEVNULL
    files = []
    try:
        if req.get("stdin"):
            stdin = open(req["stdin"], "rb")
            files.append(stdin)
        out = open(req["stdout"], "wb")
        err = open(req["stderr"], "wb")
        files += [out, err]
        t0 = time.monotonic()
        try:
            p = subprocess.Popen(req["argv"], stdin=stdin, stdout=out, stderr=err, cwd=req["cwd"], env=req["env"],
                                 start_new_session=True)
        except OSError as e:
            res["rc"], res["error"] = 127, "cannot start %s: %s" % (req["argv"][0], e)
            return res
        try:
            resource.prlimit(p.pid, resource.RLIMIT_CORE, (0, 0))
            if req.get("rlimit_as"):
                resource.prlimit(p.pid, resource.RLIMIT_AS, (req["rlimit_as"], req["rlimit_as"]))
        except (OSError, ValueError):
            pass
        peak, nap, killed = 0, 0.002, ""
        hz = os.sysconf("SC_CLK_TCK")
        idle_sent, last_t, last_cpu = False, t0, 0
        while True:
            pid, status, ru = os.wait4(p.pid, os.WNOHANG)
            if pid:
                break
            peak = max(peak, hwm_kb(p.pid))
            now = time.monotonic()
            if not idle_sent and now - last_t >= 1.0:  # a child that waits (a FIFO, a pipe) does not need a CPU
                cpu = cpu_ticks(p.pid)
                if cpu is not None:
                    if (cpu - last_cpu) / hz < 0.15 * (now - last_t):
                        notify({"id": req["id"], "idle": True})
                        idle_sent = True
                    last_t, last_cpu = now, cpu
            if peak >= req["rss_cap_kb"]:
                killed = "rss"
            elif time.monotonic() - t0 > req["timeout"]:
                killed = "timeout"
            if killed:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                pid, status, ru = os.wait4(p.pid, 0)
                break
            time.sleep(nap)
            nap = min(0.02, nap * 1.5)
        res["secs"] = time.monotonic() - t0
        p.returncode = 0  # reaped above
        try:
            os.killpg(p.pid, signal.SIGKILL)  # whatever the case left behind in its session
        except (ProcessLookupError, PermissionError):
            pass
        res["rc"] = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        res["maxrss_kb"] = ru.ru_maxrss
        res["hwm_kb"] = peak
        res["killed"] = killed
    except Exception as e:  # report, never die: the suite waits for this answer
        res["error"] = "spawner: %r" % e
        if res["rc"] is None:
            res["rc"] = 127
    finally:
        for f in files:
            f.close()
    return res


def send(obj):
    line = json.dumps(obj) + "\n"
    with _out_lock:
        sys.stdout.write(line)
        sys.stdout.flush()


def serve(req):
    send(run(req, send))


def main():
    for line in sys.stdin:
        if not line.strip():
            continue
        threading.Thread(target=serve, args=(json.loads(line),), daemon=True).start()
    # stdin closed: wait for the children still running
    for t in threading.enumerate():
        if t is not threading.current_thread() and not t.daemon:
            t.join()
    while threading.active_count() > 1:
        time.sleep(0.05)
    return 0
