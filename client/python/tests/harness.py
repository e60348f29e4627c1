"""harness: runs a real fedcoord daemon for the Python binding's tests.

It owns the test fixtures that need the outside world: TLS material made with the openssl
command line (a CA and a server certificate for localhost / 127.0.0.1), client tokens from
`fedctl client add`, a daemon config file, the fedcoord process (started with [server] port = 0,
its port read from the `msg=listening` log line) and reading committed models back from the
SQLite store. It never fakes a server: every test that uses it talks TLS to build/bin/fedcoord.

Paths: the repository root is three folders up; FC_BUILD_DIR (default build) names the build
folder; FC_TEST_TMPDIR (set by tests/run-tests-python) or a fresh /tmp folder holds the files.
"""

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.normpath(os.path.join(HERE, "..", "..", ".."))
sys.path.insert(0, os.path.join(REPO, "client", "python"))

import fedclient  # noqa: E402  (needs the path above)
from fedclient import safetensors  # noqa: E402

BUILD = os.path.join(REPO, os.environ.get("FC_BUILD_DIR", "build"))
FEDCOORD = os.path.join(BUILD, "bin", "fedcoord")
FEDCTL = os.path.join(BUILD, "bin", "fedctl")
LIBRARY = os.path.join(BUILD, "lib", "libfedclient.so")
if "FEDCLIENT_LIBRARY" not in os.environ and os.path.exists(LIBRARY):
    os.environ["FEDCLIENT_LIBRARY"] = LIBRARY

_DTYPES = {"F32": "<f4", "F16": "<f2", "F64": "<f8", "BF16": "<u2"}


def tmpdir(prefix):
    """A fresh folder under FC_TEST_TMPDIR (or /tmp)."""
    base = os.environ.get("FC_TEST_TMPDIR") or None
    return tempfile.mkdtemp(prefix=prefix + ".", dir=base)


def run(args, **kw):
    """Runs a command; raises with its stderr when it fails."""
    p = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)
    if p.returncode != 0:
        raise RuntimeError("%s exited %d: %s" % (" ".join(args), p.returncode, p.stderr.strip()))
    return p.stdout


def make_tls(folder, cn="fedcoord test CA"):
    """A CA and a server certificate for DNS:localhost and IP:127.0.0.1 signed by it.
    Returns dict(ca=, cert=, key=) paths."""
    ca_key, ca = os.path.join(folder, "ca-key.pem"), os.path.join(folder, "ca.pem")
    key, csr = os.path.join(folder, "server-key.pem"), os.path.join(folder, "server.csr")
    cert, ext = os.path.join(folder, "server.pem"), os.path.join(folder, "server.ext")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    run(["openssl", "req", "-x509"] + ec + ["-keyout", ca_key, "-out", ca, "-days", "2",
         "-subj", "/CN=" + cn, "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign"])
    run(["openssl", "req"] + ec + ["-keyout", key, "-out", csr, "-subj", "/CN=localhost"])
    with open(ext, "w") as f:
        f.write("subjectAltName = DNS:localhost, IP:127.0.0.1\n"
                "basicConstraints = CA:FALSE\n"
                "keyUsage = critical, digitalSignature\n"
                "extendedKeyUsage = serverAuth\n")
    run(["openssl", "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-set_serial",
         str(int.from_bytes(os.urandom(8), "big") >> 1), "-days", "2", "-out", cert,
         "-extfile", ext])
    return {"ca": ca, "ca_key": ca_key, "cert": cert, "key": key}


def make_client_cert(folder, tls, cn):
    """A client certificate (clientAuth, subject CN = cn) signed by make_tls's CA.
    Returns (cert, key) paths."""
    key, csr = os.path.join(folder, cn + "-key.pem"), os.path.join(folder, cn + ".csr")
    cert, ext = os.path.join(folder, cn + ".pem"), os.path.join(folder, cn + ".ext")
    run(["openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", key, "-out", csr, "-subj", "/CN=" + cn])
    with open(ext, "w") as f:
        f.write("basicConstraints = CA:FALSE\n"
                "keyUsage = critical, digitalSignature\n"
                "extendedKeyUsage = clientAuth\n")
    run(["openssl", "x509", "-req", "-in", csr, "-CA", tls["ca"], "-CAkey", tls["ca_key"],
         "-set_serial", str(int.from_bytes(os.urandom(8), "big") >> 1), "-days", "2",
         "-out", cert, "-extfile", ext])
    return cert, key


class Daemon:
    """One fedcoord process with its own folder, TLS material, clients and initial model.

    initial_model: [(name, array)] written as [round] initial_model, or None (a client proposes);
    round: [round] keys (min_clients, clients_per_round, min_updates, max_rounds, ...);
    aggregator / optimizer: [aggregator] / [optimizer] keys; client_auth: [tls] client_auth
    (the daemon's CA then also verifies client certificates). Use as a context manager."""

    def __init__(self, name, initial_model, clients, round=None, aggregator=None,
                 optimizer=None, limits=None, client_auth=None):
        self.folder = tmpdir("pyfed-" + name)
        self.data_dir = os.path.join(self.folder, "data")
        os.mkdir(self.data_dir)
        self.db = os.path.join(self.data_dir, "fedcoord.db")
        self.tls = make_tls(self.folder)
        self.model_path = None  # None: the daemon asks a client to propose the model
        if initial_model is not None:
            self.model_path = os.path.join(self.folder, "initial.safetensors")
            safetensors.save(self.model_path, initial_model)
        self.tokens = {}
        for c in clients:
            out = run([FEDCTL, "client", "add", c, "--db", self.db]).strip().splitlines()
            self.tokens[c] = out[-1].strip()
        sections = {
            "server": {"port": 0, "data_dir": self.data_dir, "log_level": "info"},
            "tls": dict({"cert": self.tls["cert"], "key": self.tls["key"]},
                        **({"ca": self.tls["ca"], "client_auth": client_auth}
                           if client_auth else {})),
            "round": dict({"initial_model": self.model_path, "round_timeout": "60s"}
                          if self.model_path else {"round_timeout": "60s"}, **(round or {})),
            "aggregator": aggregator or {"rule": "fedavg"},
            "optimizer": optimizer or {"name": "sgd"},
            "http": {"enabled": "false"},
        }
        if limits:
            sections["limits"] = limits
        self.config = os.path.join(self.folder, "fedcoord.ini")
        with open(self.config, "w") as f:
            for sec, kv in sections.items():
                f.write("[%s]\n" % sec)
                for k, v in kv.items():
                    f.write("%s = %s\n" % (k, v))
        self.log_path = os.path.join(self.folder, "fedcoord.log")
        self.proc = None
        self.port = None

    def start(self, timeout=20):
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen([FEDCOORD, "--config", self.config], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        found = threading.Event()

        def pump():  # copies stderr to the log file, noting the port; never blocks the daemon
            for line in self.proc.stderr:
                self._log.write(line)
                self._log.flush()
                if self.port is None and "msg=listening" in line:
                    m = re.search(r"\bport=(\d+)", line)
                    if m:
                        self.port = int(m.group(1))
                        found.set()
            found.set()

        self._pump = threading.Thread(target=pump, daemon=True)
        self._pump.start()
        found.wait(timeout)
        if self.port is None:
            self.stop()
            raise RuntimeError("fedcoord did not log msg=listening port=N within %ds; log:\n%s"
                               % (timeout, self.log()))
        return self

    @property
    def address(self):
        return "127.0.0.1:%d" % self.port

    def client(self, name, **kw):
        """A fedclient.Client for registered client name, trusting this daemon's CA."""
        args = dict(client_name=name, token=self.tokens[name], connect_timeout_ms=10000,
                    io_timeout_ms=30000)
        args.update(kw)
        return fedclient.Client(self.address, self.tls["ca"], **args)

    def log(self):
        try:
            with open(self.log_path) as f:
                return f.read()
        except OSError:
            return ""

    def stop(self, timeout=15):
        """SIGTERM, then SIGKILL after timeout. Returns the exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._pump.join(5)
        self.proc.stderr.close()
        self._log.close()
        rc, self.proc = self.proc.returncode, None
        return rc

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False

    # ---- reading the store ----
    def query(self, sql, args=()):
        """Rows of a read-only query on the daemon's database."""
        con = sqlite3.connect("file:%s?mode=ro" % self.db, uri=True, timeout=10)
        try:
            return con.execute(sql, args).fetchall()
        finally:
            con.close()

    def model(self, version=None):
        """(version, [(name, array)]) of a committed model (the newest if version is None),
        rebuilt from models.tensor_specs_json and model_chunks."""
        if version is None:
            version = self.query("SELECT max(version) FROM models")[0][0]
        (specs_json, size), = self.query(
            "SELECT tensor_specs_json, size FROM models WHERE version = ?", (version,))
        data = b"".join(r[0] for r in self.query(
            "SELECT data FROM model_chunks WHERE version = ? ORDER BY seq", (version,)))
        if len(data) != size:
            raise RuntimeError("model %d: %d bytes in chunks, %d recorded"
                               % (version, len(data), size))
        out, off = [], 0
        for spec in json.loads(specs_json):
            dt = np.dtype(_DTYPES[str(spec["dtype"]).upper()])
            shape = tuple(spec["shape"])
            n = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
            out.append((spec["name"], np.frombuffer(data[off:off + n], dtype=dt)
                        .reshape(shape).copy()))
            off += n
        if off != size:
            raise RuntimeError("model %d: specs cover %d of %d bytes" % (version, off, size))
        return version, out


class ClientThread(threading.Thread):
    """Runs fn(client) in a thread with a client of its own; keeps the result or exception."""

    def __init__(self, daemon, name, fn, **kw):
        super().__init__(daemon=True, name="client-" + name)
        self.d, self.cname, self.fn, self.kw = daemon, name, fn, kw
        self.result = None
        self.error = None

    def run(self):
        try:
            with self.d.client(self.cname, **self.kw) as c:
                self.result = self.fn(c)
        except BaseException as e:  # reported by the test through join_all
            self.error = e


def join_all(threads, timeout=60):
    """Joins the threads; raises the first error (or a timeout) with the thread's name."""
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
        if t.is_alive():
            raise AssertionError("%s still running after %ds" % (t.name, timeout))
    for t in threads:
        if t.error is not None:
            raise AssertionError("%s failed: %r" % (t.name, t.error)) from t.error
    return [t.result for t in threads]
