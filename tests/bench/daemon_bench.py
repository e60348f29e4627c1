#!/usr/bin/env python3
"""daemon_bench.py: the daemon-level benchmarks of issue 8, run by `make bench` (tests/bench/run).

Starts real fedcoord processes (build/bin/fedcoord) on loopback with a throw-away PKI and data
folder, drives them with build/bench/bench_loadgen (many TLS client sessions per thread speaking
the real protocol through proto/wire.c and proto/frame.c), and measures each figure as a ratio
to a baseline measured in the same run:

  ingest    100 clients upload 4 MB updates: update payload bytes/s accepted by the daemon,
            ratio to single-core AES-256-GCM (`openssl speed -evp aes-256-gcm`, 16 KiB blocks)
  memory    fedavg, 25M parameters, 10/100/1000 clients per round: daemon VmHWM / model size
  idle      10,000 idle TLS sessions with heartbeats: daemon RSS, bytes per connection
  overhead  1M parameters, >= 20 rounds: close_to_commit_us median/p90 vs write+fsync
  big       1B f32 (4 GB) model, 4 clients: completes, VmHWM / model
  robust    median and krum, n = 100, d = 10M: round time vs bench_robust (library alone)

Environment: BENCH_QUICK=1 (or QUICK=1) for smaller sizes (printed), BENCH_DIR for the scratch
folder (default $TMPDIR or /tmp), BENCH_ONLY=name,name to run a subset (written to bench/results.partial.json
only), BENCH_NO_DOC=1 to skip writing docs/performance.md. Writes bench/results.json and
docs/performance.md; `daemon_bench.py BUILD --render` rewrites the page from the JSON.
It never listens on anything but 127.0.0.1 and removes its scratch folder at the end.
"""
import json
import os
import platform
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ARGS = [a for a in sys.argv[1:] if not a.startswith("--")]
RENDER_ONLY = "--render" in sys.argv[1:]  # rewrite docs/performance.md from bench/results.json
BUILD = ARGS[0] if ARGS else os.path.join(ROOT, "build")
if not os.path.isabs(BUILD):
    BUILD = os.path.join(ROOT, BUILD)
FEDCOORD = os.environ.get("BENCH_FEDCOORD") or os.path.join(BUILD, "bin", "fedcoord")
# BENCH_BEFORE=PATH: a fedcoord built from an earlier commit; the benchmarks named in
# BENCH_BEFORE_ONLY (default memory,ingest) then also run against it, in the same run, and the
# results appear as NAME_before (before/after figures of an optimisation).
BEFORE = os.environ.get("BENCH_BEFORE")
BEFORE_ONLY = os.environ.get("BENCH_BEFORE_ONLY", "memory,ingest").split(",")
LOADGEN = os.path.join(BUILD, "bench", "bench_loadgen")
QUICK = os.environ.get("BENCH_QUICK", os.environ.get("QUICK", "0")) not in ("", "0")
ONLY = [x for x in os.environ.get("BENCH_ONLY", "").split(",") if x]
MB = 1 << 20
GB = 1 << 30

results = {"quick": QUICK, "benchmarks": {}, "notes": []}


def log(msg):
    print(msg, flush=True)


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def machine():
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) * 1024
    ossl = subprocess.run(["openssl", "version"], capture_output=True, text=True).stdout.strip()
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_bytes": mem,
            "kernel": platform.release(), "openssl": ossl}


def proc_status(pid):
    out = {}
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith(("VmHWM:", "VmRSS:", "RssAnon:", "RssFile:")):
                    k, v = line.split(":", 1)
                    out[k] = int(v.split()[0]) * 1024
    except OSError:
        pass
    return out


# ---------------------------------------------------------------- baselines

def aes_gcm_speed():
    """Single-core AES-256-GCM throughput (bytes/s) at 16384-byte blocks, from openssl speed."""
    secs = "1" if QUICK else "3"
    p = subprocess.run(["openssl", "speed", "-seconds", secs, "-bytes", "16384", "-evp",
                        "aes-256-gcm"], capture_output=True, text=True)
    # The last line: "AES-256-GCM  123456.78k" (1000s of bytes per second)
    for line in reversed(p.stdout.splitlines()):
        m = re.match(r"^\s*aes-256-gcm\s+([\d.]+)k\s*$", line, re.I)
        if m:
            return float(m.group(1)) * 1000.0
    raise RuntimeError("cannot parse openssl speed output:\n" + p.stdout + p.stderr)


def fsync_baseline(folder, nbytes, reps):
    """Median seconds of writing nbytes to a new file and fsyncing it (file and folder)."""
    data = b"\x01" * nbytes
    times = []
    for i in range(reps):
        path = os.path.join(folder, "fsync_probe.%d" % i)
        t0 = time.perf_counter()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.write(fd, data)
        os.fsync(fd)
        os.close(fd)
        dfd = os.open(folder, os.O_RDONLY)
        os.fsync(dfd)
        os.close(dfd)
        times.append(time.perf_counter() - t0)
        os.unlink(path)
    return statistics.median(times)


# ---------------------------------------------------------------- fixtures

def make_pki(folder):
    def run(*args):
        subprocess.run(args, check=True, capture_output=True)
    ca_key, ca = os.path.join(folder, "ca.key"), os.path.join(folder, "ca.pem")
    key, csr, crt = (os.path.join(folder, n) for n in ("server.key", "server.csr", "server.pem"))
    ext = os.path.join(folder, "ext.cnf")
    with open(ext, "w") as f:
        f.write("subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    run("openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", ca_key)
    run("openssl", "req", "-x509", "-new", "-key", ca_key, "-subj", "/CN=fedcoord bench CA",
        "-days", "2", "-out", ca)
    run("openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", key)
    run("openssl", "req", "-new", "-key", key, "-subj", "/CN=localhost", "-out", csr)
    run("openssl", "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
        "-days", "2", "-extfile", ext, "-out", crt)
    return {"ca": ca, "cert": crt, "key": key}


def write_safetensors(path, params):
    """One f32 tensor 'w' of `params` zeros (sparse file: the data costs no disk until read)."""
    header = json.dumps({"w": {"dtype": "F32", "shape": [params],
                               "data_offsets": [0, 4 * params]}}).encode()
    header += b" " * ((8 - len(header) % 8) % 8)
    with open(path, "wb") as f:
        f.write(len(header).to_bytes(8, "little"))
        f.write(header)
        f.truncate(8 + len(header) + 4 * params)


class Daemon:
    """One fedcoord process with its own data folder, stderr captured with arrival times."""

    def __init__(self, work, name, pki, template_db, params, round_cfg, storage=None,
                 rule="fedavg"):
        self.dir = os.path.join(work, name)
        os.makedirs(self.dir)
        self.model = os.path.join(self.dir, "model.safetensors")
        write_safetensors(self.model, params)
        shutil.copy(template_db, os.path.join(self.dir, "fedcoord.db"))
        cfg = ["[server]", "listen = 127.0.0.1", "port = 0", "data_dir = %s" % self.dir,
               "[tls]", "cert = %s" % pki["cert"], "key = %s" % pki["key"],
               "[round]", "initial_model = %s" % self.model, "round_timeout = 30m"]
        cfg += ["%s = %s" % kv for kv in round_cfg.items()]
        cfg += ["[aggregator]", "rule = %s" % rule, "[http]", "enabled = false",
                "[limits]", "max_connections = 0", "max_connections_per_peer = 0",
                "max_update_bytes = 8GiB", "idle_timeout = 10m", "handshake_timeout = 60s"]
        if storage:
            cfg += ["[storage]"] + ["%s = %s" % kv for kv in storage.items()]
        self.config_text = "\n".join(cfg) + "\n"
        with open(os.path.join(self.dir, "fedcoord.ini"), "w") as f:
            f.write(self.config_text)
        self.lines = []  # (monotonic time, line)
        self.port = None
        self.proc = subprocess.Popen([FEDCOORD, "--config", os.path.join(self.dir, "fedcoord.ini")],
                                     stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        deadline = time.monotonic() + (600 if params > 100_000_000 else 60)
        while self.port is None:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("fedcoord did not start:\n" + "".join(
                    l for _, l in self.lines[-20:]))
            time.sleep(0.02)
        self.base_rss = proc_status(self.proc.pid).get("VmRSS", 0)
        self.start_hwm = proc_status(self.proc.pid).get("VmHWM", 0)  # start-up (model import)
        # Peak RSS once listening, split into anonymous memory and mapped file pages (spill
        # files, the database), sampled every 100 ms: VmHWM alone cannot tell the phases apart.
        self.peak = {"VmRSS": 0, "RssAnon": 0, "RssFile": 0}
        self.sampling = True
        self.sampler = threading.Thread(target=self._sample, daemon=True)
        self.sampler.start()

    def _sample(self):
        while self.sampling and self.proc.poll() is None:
            st = proc_status(self.proc.pid)
            for k in self.peak:
                self.peak[k] = max(self.peak[k], st.get(k, 0))
            time.sleep(0.1)

    def _read(self):
        for line in self.proc.stderr:
            self.lines.append((time.monotonic(), line))
            if self.port is None and "msg=listening" in line:
                m = re.search(r"\bport=(\d+)", line)
                if m:
                    self.port = int(m.group(1))

    def status(self):
        return proc_status(self.proc.pid)

    def commits(self):
        out = []
        for t, line in self.lines:
            if 'msg="round committed"' in line and "kind=train" in line:
                m = re.search(r"close_to_commit_us=(\d+)", line)
                c = re.search(r"\bcommit_us=(\d+)", line)
                out.append({"t": t, "close_to_commit_us": int(m.group(1)) if m else None,
                            "commit_us": int(c.group(1)) if c else None})
        return out

    def aggregated_us(self):
        out = []
        for _, line in self.lines:
            if 'msg=aggregated' in line:
                m = re.search(r"\bus=(\d+)", line)
                if m:
                    out.append(int(m.group(1)))
        return out

    def round_starts(self):
        return [t for t, line in self.lines
                if 'msg="round state"' in line and "to=TRAINING" in line]

    def errors(self):
        return [l.strip() for _, l in self.lines if "level=error" in l or "level=warn" in l]

    def stop(self):
        self.sampling = False
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.reader.join(timeout=5)
        shutil.rmtree(self.dir, ignore_errors=True)


def loadgen(mode, port, ca, n, *opts, on_line=None, timeout=3600):
    args = [LOADGEN, mode, str(port), ca, str(n)] + [str(o) for o in opts]
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    errs = []
    et = threading.Thread(target=lambda: errs.extend(p.stderr), daemon=True)
    et.start()
    result = None
    for line in p.stdout:
        if on_line:
            on_line(line)
        if line.startswith("result "):
            result = dict(kv.split("=", 1) for kv in line.split()[1:])
    p.wait(timeout=timeout)
    et.join(timeout=5)
    if p.returncode != 0 or result is None:
        raise RuntimeError("bench_loadgen %s failed (%s):\n%s" % (mode, p.returncode,
                                                                  "".join(errs[-10:])))
    result["stderr_tail"] = [e.strip() for e in errs[-5:]]
    return result


def run_rounds(work, name, pki, tdb, params, n, rounds, storage=None, rule="fedavg",
               threads=2):
    d = Daemon(work, name, pki, tdb, params,
               {"min_clients": n, "clients_per_round": n, "min_updates": n,
                "max_rounds": rounds}, storage=storage, rule=rule)
    try:
        t0 = time.monotonic()
        r = loadgen("rounds", d.port, pki["ca"], n, "--threads", threads, "--payload",
                    4 * params, "--timeout", 7200)
        wall = time.monotonic() - t0
        st = d.status()
        commits = d.commits()
        starts = d.round_starts()
        aggregated = d.aggregated_us()
        errs = d.errors()
    finally:
        d.stop()
    if int(r["errors"]) or int(r["open_at_end"]) or len(commits) < rounds:
        raise RuntimeError("%s: %s errors, %d of %d rounds committed; loadgen: %s; daemon: %s" % (
            name, r["errors"], len(commits), rounds, r["stderr_tail"], errs[-5:]))
    return {"loadgen": r, "wall_s": wall, "vmhwm": st.get("VmHWM", 0), "base_rss": d.base_rss,
            "startup_hwm": d.start_hwm, "round_peak": dict(d.peak),
            "commits": commits, "starts": starts, "aggregated_us": aggregated,
            "config": d.config_text}


# ---------------------------------------------------------------- benchmarks

def bench_ingest(work, pki, tdb, aes):
    params = 1_000_000  # 4 MB updates
    n = 100
    rounds = 3 if QUICK else 8
    storage = {"staging_memory": "512MiB", "staging_disk": "0"}
    r = run_rounds(work, "ingest", pki, tdb, params, n, rounds, storage=storage)
    lg = r["loadgen"]
    rate = int(lg["payload_bytes"]) / (int(lg["upload_ms"]) / 1000.0)
    return {"params": params, "update_bytes": 4 * params, "clients": n, "rounds": rounds,
            "staging": storage, "payload_bytes": int(lg["payload_bytes"]),
            "upload_seconds": int(lg["upload_ms"]) / 1000.0, "ingest_bytes_per_s": rate,
            "aes_256_gcm_bytes_per_s": aes, "ratio_to_aes_gcm": rate / aes,
            "goal": ">= 1 GB/s", "met": rate >= 1e9}


def bench_memory(work, pki, tdb):
    params = 2_500_000 if QUICK else 25_000_000
    model = 4 * params
    out = {"params": params, "model_bytes": model, "rule": "fedavg", "counts": []}
    # An operator sizes staging to hold one whole update in memory and spills nothing
    # (128 MiB for a 100 MB update; 16 MiB for the 10 MB QUICK model).
    staging = {"staging_memory": "16MiB" if QUICK else "128MiB", "staging_disk": "0"}
    out["staging"] = staging
    limit = 3 * model + 64 * MB
    for n in (10, 100, 1000):
        rounds = 2 if n < 1000 else 1
        r = run_rounds(work, "memory%d" % n, pki, tdb, params, n, rounds, storage=staging)
        out["counts"].append({"clients": n, "rounds": rounds, "vmhwm": r["vmhwm"],
                              "startup_hwm": r["startup_hwm"], "round_peak": r["round_peak"],
                              "ratio_to_model": r["vmhwm"] / model,
                              "met": r["vmhwm"] <= limit, "wall_s": r["wall_s"]})
        log("  memory n=%d: VmHWM %.1f MB (%.2fx model)" % (n, r["vmhwm"] / MB,
                                                           r["vmhwm"] / model))
    out["goal"] = "<= 3x model + 64 MB = %.0f MB" % (limit / MB)
    out["met"] = all(c["met"] for c in out["counts"])
    return out


def bench_idle(work, pki, tdb):
    n = 10000
    hold = 5 if QUICK else 35
    d = Daemon(work, "idle", pki, tdb, 1000,
               {"min_clients": 100000, "clients_per_round": 100000, "min_updates": 1})
    samples = {}
    try:
        def on_line(line):
            if line.startswith("connected "):
                samples["connected"] = dict(kv.split("=", 1) for kv in line.split()[1:])
                samples["rss_connected"] = d.status().get("VmRSS", 0)
            elif line.startswith("held "):
                samples["held"] = dict(kv.split("=", 1) for kv in line.split()[1:])
                samples["rss_held"] = d.status().get("VmRSS", 0)
                samples["hwm"] = d.status().get("VmHWM", 0)
        r = loadgen("idle", d.port, pki["ca"], n, "--hold", hold, "--timeout", 300,
                    "--inflight", 64, on_line=on_line)
        base = d.base_rss
        errs = d.errors()
    finally:
        d.stop()
    held = int(samples.get("held", {}).get("sessions", 0))
    rss = samples.get("rss_held", 0)
    per = (rss - base) / held if held else 0
    return {"sessions_requested": n, "connected": int(samples["connected"]["sessions"]),
            "connect_seconds": float(samples["connected"]["seconds"]), "held": held,
            "hold_seconds": hold, "daemon_rss_base": base, "daemon_rss_held": rss,
            "daemon_vmhwm": samples.get("hwm", 0), "bytes_per_connection": per,
            "ratio_rss_to_1gib": rss / GB, "goal": ">= 10,000 at <= 1 GiB RSS",
            "met": held >= 10000 and rss <= GB, "loadgen_errors": int(r["errors"]),
            "daemon_warnings": errs[-3:]}


def bench_overhead(work, pki, tdb):
    params = 1_000_000
    rounds = 20 if QUICK else 30
    r = run_rounds(work, "overhead", pki, tdb, params, 2, rounds)
    ctc = sorted(c["close_to_commit_us"] / 1000.0 for c in r["commits"])
    med = statistics.median(ctc)
    p90 = ctc[min(len(ctc) - 1, int(round(0.9 * (len(ctc) - 1))))]
    base = fsync_baseline(work, 4 * params, 20) * 1000.0
    commit = statistics.median(c["commit_us"] / 1000.0 for c in r["commits"])
    agg = statistics.median(a / 1000.0 for a in r["aggregated_us"]) if r["aggregated_us"] else None
    return {"params": params, "rounds": len(ctc), "close_to_commit_ms_median": med,
            "close_to_commit_ms_p90": p90, "write_fsync_ms_median": base,
            "finish_job_ms_median": agg, "store_commit_ms_median": commit,
            "ratio_to_write_fsync": med / base, "goal": "<= 20 ms", "met": p90 <= 20.0}


def bench_big(work, pki, tdb):
    params = 1_000_000_000
    model = 4 * params
    if QUICK:
        return {"skipped": "QUICK mode"}
    st = os.statvfs(work)
    free_disk = st.f_bavail * st.f_frsize
    avail = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
    need_disk = 3 * model + 4 * GB   # initial model file (sparse), store copies, staging
    need_mem = 3 * model + 2 * GB
    if free_disk < need_disk or avail < need_mem:
        return {"skipped": "needs %.0f GB free disk and %.0f GB available memory; have %.0f GB "
                "and %.0f GB" % (need_disk / GB, need_mem / GB, free_disk / GB, avail / GB)}
    # A 4 GB update does not fit a sensible memory budget: uploads spill to disk, one at a time
    # (the budget holds one update, so they are taken in client-id order as they are folded).
    storage = {"staging_memory": "256MiB", "staging_disk": "4GiB"}
    r = run_rounds(work, "big", pki, tdb, params, 4, 1, storage=storage, threads=2)
    return {"params": params, "model_bytes": model, "clients": 4, "staging": storage,
            "vmhwm": r["vmhwm"], "ratio_to_model": r["vmhwm"] / model, "wall_s": r["wall_s"],
            "startup_hwm": r["startup_hwm"], "round_peak": r["round_peak"],
            "goal": "completes, <= 3x model", "met": r["vmhwm"] <= 3 * model}


def bench_robust_rules(work, pki, tdb):
    params = 1_000_000 if QUICK else 10_000_000
    n = 100
    env = dict(os.environ, BENCH_D=str(params), BENCH_RSS_D="100000", BENCH_NO_NUMPY="1",
               BENCH_DIR=work, BENCH_QUICK="0")
    p = subprocess.run([os.path.join(BUILD, "bench", "bench_robust")], env=env,
                       capture_output=True, text=True, timeout=3600)
    lib = {}
    for line in p.stdout.splitlines():
        m = re.match(r"^\s+(median|krum)\s+([\d.]+) s$", line)
        if m:
            lib[m.group(1)] = float(m.group(2))
    out = {"params": params, "clients": n, "rules": {}}
    # Retaining rules keep every update until finish: staging spills to disk beyond memory.
    storage = {"staging_memory": "256MiB", "staging_disk": "64GiB"}
    out["staging"] = storage
    for rule in ("median", "krum"):
        r = run_rounds(work, "robust_" + rule, pki, tdb, params, n, 1, storage=storage, rule=rule)
        c = r["commits"][0]
        round_s = c["t"] - r["starts"][0] if r["starts"] else None
        finish_s = c["close_to_commit_us"] / 1e6
        out["rules"][rule] = {"round_seconds": round_s, "close_to_commit_seconds": finish_s,
                              "library_seconds": lib.get(rule),
                              "ratio_close_to_library": finish_s / lib[rule] if lib.get(rule)
                              else None, "vmhwm": r["vmhwm"]}
    out["goal"] = "report time and the ratio to the library alone"
    return out


# ---------------------------------------------------------------- report

def micro_results():
    """Figures of the micro-benchmarks that tests/bench/run ran just before (same run)."""
    out = {}
    try:
        with open(os.path.join(BUILD, "bench", "micro-results.txt")) as f:
            text = f.read()
    except OSError:
        return out
    m = re.search(r"fold f32->f64\s+([\d.]+) GB/s", text)
    t = re.search(r"triad f64\s+([\d.]+) GB/s", text)
    r = re.search(r"ratio fold/triad ([\d.]+)", text)
    if m and t and r:
        out["fold"] = {"fold_gb_s": float(m.group(1)), "triad_gb_s": float(t.group(1)),
                       "ratio": float(r.group(1)), "goal": ">= 0.8",
                       "met": float(r.group(1)) >= 0.8}
    s = re.search(r"staging: copy into place \+ SHA-256\s+[\d.]+\s+([\d.]+)\s+([\d.]+)", text)
    if s:
        out["staging_copy_sha"] = {"gb_s": float(s.group(1)), "ratio_to_memcpy": float(s.group(2))}
    c = re.search(r"^1000000\s+\d+\s+([\d.]+)ms\s+([\d.]+)ms\s+([\d.]+)", text, re.M)
    if c:
        out["store_commit_1m"] = {"file_fsync_ms": float(c.group(1)), "commit_ms": float(c.group(2)),
                                  "ratio": float(c.group(3))}
    return out


def fmt_table(b):
    rows = []
    def add(measure, figure, ratio, goal, met):
        rows.append((measure, figure, ratio, goal, met))
    mr = results.get("micro", {})
    if "fold" in mr:
        f = mr["fold"]
        add("streaming fold f32->f64 (bench_fold)", "%.1f GB/s" % f["fold_gb_s"],
            "%.2fx triad (%.1f GB/s)" % (f["ratio"], f["triad_gb_s"]), f["goal"], f["met"])
    for key in ("ingest_before", "ingest"):
      if key in b and "error" not in b[key]:
        i = b[key]
        add(("[before] " if key.endswith("_before") else "") + "TLS ingest, %d clients, %d MB updates" % (i["clients"], i["update_bytes"] // 10**6),
            "%.2f GB/s" % (i["ingest_bytes_per_s"] / 1e9),
            "%.2fx 1-core AES-256-GCM (%.2f GB/s)" % (i["ratio_to_aes_gcm"],
                                                    i["aes_256_gcm_bytes_per_s"] / 1e9),
            i["goal"], i["met"])
    for key in ("memory_before", "memory"):
      if key in b and "error" not in b[key]:
        m = b[key]
        for c in m["counts"]:
            add(("[before] " if key.endswith("_before") else "") + "peak RSS fedavg %.1fM params, %d clients" % (m["params"] / 1e6, c["clients"]),
                "%.0f MB" % (c["vmhwm"] / MB), "%.2fx model" % c["ratio_to_model"], m["goal"],
                c["met"])
    if "idle" in b and "error" not in b["idle"]:
        i = b["idle"]
        add("idle TLS sessions with heartbeats", "%d at %.0f MB RSS (%.1f KB/conn)" % (
            i["held"], i["daemon_rss_held"] / MB, i["bytes_per_connection"] / 1024),
            "%.2f of 1 GiB" % i["ratio_rss_to_1gib"], i["goal"], i["met"])
    if "overhead" in b and "error" not in b["overhead"]:
        o = b["overhead"]
        add("round overhead, 1M params (close to commit)",
            "median %.1f ms, p90 %.1f ms (finish job %.1f, store commit %.1f)" % (
            o["close_to_commit_ms_median"], o["close_to_commit_ms_p90"],
            o["finish_job_ms_median"] or 0, o["store_commit_ms_median"]),
            "%.2fx write+fsync of 4 MB (%.1f ms)" % (o["ratio_to_write_fsync"],
                                                    o["write_fsync_ms_median"]),
            o["goal"], o["met"])
    if "big" in b and "error" not in b["big"]:
        g = b["big"]
        if "skipped" in g:
            add("4 GB model, 4 clients", "skipped: " + g["skipped"], "-", "completes, <= 3x", None)
        else:
            rp = g.get("round_peak", {})
            add("4 GB model, 4 clients", "%.2f GB peak (start-up %.1f; in rounds: anon %.1f, "
                "file %.1f), %.0f s" % (g["vmhwm"] / 1e9, g.get("startup_hwm", 0) / 1e9,
                                        rp.get("RssAnon", 0) / 1e9, rp.get("RssFile", 0) / 1e9,
                                        g["wall_s"]),
                "%.3fx model" % g["ratio_to_model"], g["goal"], g["met"])
    if "robust" in b and "error" not in b["robust"]:
        r = b["robust"]
        for rule, v in r["rules"].items():
            add("%s at close, n=%d, %.1fM params" % (rule, r["clients"], r["params"] / 1e6),
                "round %.1f s, close->commit %.2f s" % (v["round_seconds"] or 0,
                                                       v["close_to_commit_seconds"]),
                ("%.2fx library (%.2f s)" % (v["ratio_close_to_library"], v["library_seconds"])
                 if v["ratio_close_to_library"] else "library time missing"), "report", None)
    for k, v in b.items():
        if isinstance(v, dict) and "error" in v:
            add(k, "FAILED: " + v["error"][:120], "-", "-", False)
    return rows


def print_table(rows):
    w = [max(len(str(r[i])) for r in rows + [("measure", "figure", "ratio", "goal", "met")])
         for i in range(4)]
    hdr = ("measure", "figure", "ratio", "goal", "met")
    log("  ".join(str(h).ljust(w[i]) for i, h in enumerate(hdr[:4])) + "  met")
    for r in rows:
        met = "-" if r[4] is None else ("yes" if r[4] else "NO")
        log("  ".join(str(x).ljust(w[i]) for i, x in enumerate(r[:4])) + "  " + met)


def render_only():
    global results
    path = os.path.join(ROOT, "bench", "results.json")
    with open(path) as f:
        results = json.load(f)
    # The rows are formatted again from the raw figures, so a change of format needs no rerun.
    rows = fmt_table(results["benchmarks"])
    results["table"] = [dict(zip(("measure", "figure", "ratio", "goal", "met"), r)) for r in rows]
    with open(path, "w") as f:
        json.dump(results, f, indent=2, default=str)
        f.write("\n")
    global QUICK
    QUICK = results["quick"]
    write_doc(rows)
    return 0


def main():
    global FEDCOORD
    if RENDER_ONLY:
        return render_only()
    if not os.path.exists(FEDCOORD) or not os.path.exists(LOADGEN):
        log("daemon_bench: %s or %s missing (run make first)" % (FEDCOORD, LOADGEN))
        return 1
    nofile = raise_nofile()
    base = os.environ.get("BENCH_DIR") or os.environ.get("TMPDIR") or "/tmp"
    work = tempfile.mkdtemp(prefix="fedcoord-bench.", dir=base)
    results["machine"] = machine()
    results["machine"]["nofile"] = nofile
    results["started"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    results["loadavg_start"] = os.getloadavg()
    log("daemon benchmarks%s in %s (fd limit %d)" % (" (QUICK: smaller sizes)" if QUICK else "",
                                                    work, nofile))
    status = 0
    try:
        pki = make_pki(work)
        tdb = os.path.join(work, "template.db")
        t0 = time.monotonic()
        subprocess.run([LOADGEN, "enroll", tdb, "10000"], check=True, capture_output=True)
        log("  enrolled 10000 clients in %.1f s" % (time.monotonic() - t0))
        aes = aes_gcm_speed()
        results["baselines"] = {"aes_256_gcm_1core_bytes_per_s": aes}
        log("  openssl speed aes-256-gcm (1 core, 16 KiB): %.2f GB/s" % (aes / 1e9))
        plan = [("ingest", lambda: bench_ingest(work, pki, tdb, aes)),
                ("overhead", lambda: bench_overhead(work, pki, tdb)),
                ("idle", lambda: bench_idle(work, pki, tdb)),
                ("memory", lambda: bench_memory(work, pki, tdb)),
                ("robust", lambda: bench_robust_rules(work, pki, tdb)),
                ("big", lambda: bench_big(work, pki, tdb))]
        runs = []
        for name, fn in plan:
            if ONLY and name not in ONLY:
                continue
            if BEFORE and name in BEFORE_ONLY:
                runs.append((name + "_before", fn, BEFORE))
            runs.append((name, fn, FEDCOORD))
        for name, fn, binary in runs:
            FEDCOORD = binary
            t = time.monotonic()
            log("== daemon %s%s" % (name, " (%s)" % binary if name.endswith("_before") else ""))
            try:
                results["benchmarks"][name] = fn()
            except Exception as e:  # report and carry on with the others
                results["benchmarks"][name] = {"error": str(e)}
                log("  FAILED: %s" % e)
                status = 1
            results["benchmarks"][name]["bench_seconds"] = time.monotonic() - t
            log("  (%.1f s)" % (time.monotonic() - t))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results["micro"] = micro_results()
    results["loadavg_end"] = os.getloadavg()
    rows = fmt_table(results["benchmarks"])
    results["table"] = [dict(zip(("measure", "figure", "ratio", "goal", "met"), r)) for r in rows]
    log("")
    print_table(rows)
    os.makedirs(os.path.join(ROOT, "bench"), exist_ok=True)
    # A subset (BENCH_ONLY) never replaces the results and the page of a whole run.
    name = "results.partial.json" if ONLY else "results.json"
    with open(os.path.join(ROOT, "bench", name), "w") as f:
        json.dump(results, f, indent=2, default=str)
    if not os.environ.get("BENCH_NO_DOC") and not ONLY:
        write_doc(rows)
    return status


def write_doc(rows):
    m = results["machine"]
    lines = [
        "# Performance",
        "",
        "Generated by `make bench%s` (tests/bench/daemon_bench.py) on %s. Every figure is a ratio "
        "to a baseline measured in the same run on the same machine. Raw numbers: "
        "`bench/results.json`. Analysis and profiles: see \"Notes\" below (kept by hand in "
        "`tests/bench/performance_notes.md` and appended here)." % (
            " QUICK=1" if QUICK else "", results["started"]),
        "",
        "Machine: %s, %d cores, %.1f GiB RAM, Linux %s, %s. Load average at start %.1f, at "
        "end %.1f (the machine may be shared: figures that compete for CPU vary from run to "
        "run)." % (m["cpu"], m["cores"], m["memory_bytes"] / GB, m["kernel"], m["openssl"],
                   results["loadavg_start"][0], results["loadavg_end"][0]),
        "",
    ]
    if QUICK:
        lines += ["**QUICK mode**: smaller models (memory: 2.5M parameters instead of 25M; robust: "
                  "1M instead of 10M; idle hold 5 s), the 4 GB round skipped. Run `make bench` "
                  "for the full sizes.", ""]
    for n in results.get("notes", []):
        lines += ["Note: " + n, ""]
    lines += ["| measure | figure | ratio | goal | met |", "|---|---|---|---|---|"]
    for r in rows:
        met = "-" if r[4] is None else ("yes" if r[4] else "**no**")
        lines.append("| %s | %s | %s | %s | %s |" % (r[0], r[1], r[2], r[3], met))
    lines += ["", "## How to reproduce", "",
              "```", "make bench            # every benchmark, full sizes",
              "make bench QUICK=1    # or BENCH_QUICK=1: under 5 minutes",
              "BENCH_ONLY=ingest,idle tests/bench/daemon_bench.py build   # a subset, "
              "to bench/results.partial.json", "```", "",
              "The micro-benchmarks (bench_fold, bench_robust, bench_store, bench_stream) print "
              "their own figures first; the daemon benchmarks start `build/bin/fedcoord` with a "
              "throw-away PKI and data folder under $TMPDIR and drive it with "
              "`build/bench/bench_loadgen`.", ""]
    notes = os.path.join(ROOT, "tests", "bench", "performance_notes.md")
    if os.path.exists(notes):
        with open(notes) as f:
            lines += ["## Notes", "", f.read().rstrip(), ""]
    with open(os.path.join(ROOT, "docs", "performance.md"), "w") as f:
        f.write("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
