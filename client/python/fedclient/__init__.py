"""fedclient: the Python binding of libfedclient, the fedcoord client SDK.

It owns the Python face of the C task loop (Client, Task, FedclientError) and the conversion
between numpy arrays and the SDK's tensor buffers. It never copies a tensor it can share: the
arrays of a Task are read-only views of the model the SDK downloaded, and submit() hands the
SDK the data pointers of arrays that already have the task's dtype and C order. It never talks
to the network itself and never keeps a pointer the SDK does not keep.

    import fedclient
    with fedclient.Client("coord.example.org:7443", "ca.pem",
                          client_name="site-3", token=os.environ["FEDCOORD_TOKEN"]) as c:
        for task in c.tasks():
            if task.kind == fedclient.TaskKind.EVALUATE:
                c.report_eval(task, n, {"accuracy": acc})
            else:
                w = {name: a.copy() for name, a in task.tensors}
                ... train w in place ...
                c.submit(task, weights=w, num_examples=n, metrics={"train_loss": loss})

See docs/python.md.
"""

import collections.abc
import ctypes
import math
import operator
import os
import threading

import numpy as np

from . import _native
from ._native import DType, Status, TaskKind

__all__ = [
    "Client",
    "DType",
    "FedclientError",
    "FedclientTimeout",
    "Status",
    "Task",
    "TaskKind",
    "Tensor",
    "bf16_to_float32",
    "float32_to_bf16",
    "load_library",
    "strerror",
]

__version__ = "1.0"

_UINT32_MAX = (1 << 32) - 1
_UINT64_MAX = (1 << 64) - 1

# numpy dtype of each wire dtype. bf16 has no numpy type: its arrays hold the raw bits as
# uint16 (see bf16_to_float32 / float32_to_bf16).
_NP_DTYPE = {
    DType.F32: np.dtype("<f4"),
    DType.F16: np.dtype("<f2"),
    DType.BF16: np.dtype("<u2"),
    DType.F64: np.dtype("<f8"),
}


def load_library(path=None):
    """Loads libfedclient (path, else $FEDCLIENT_LIBRARY, else build/lib of this source tree,
    else the system's libfedclient.so.1) and returns the path used. Client() calls it on demand;
    call it yourself to pick a library or to fail early. Raises OSError."""
    _native.load(path)
    return _native.loaded_path()


def strerror(status):
    """fc_strerror: the one-line meaning of a status code."""
    text = _native.load().fc_strerror(int(status))
    return text.decode("utf-8", "replace")


def _status_name(status):
    try:
        return Status(status).name
    except ValueError:
        return "UNKNOWN(%d)" % status


class FedclientError(Exception):
    """A libfedclient call failed.

    status: the fc_status (a Status member, or the raw int for a code this binding does not know)
    name: the status's stable name, as fc_status_name gives it ("ERR_TLS")
    detail: fc_client_error's text (what was wrong and where)
    """

    def __init__(self, status, detail):
        try:
            self.status = Status(status)
        except ValueError:
            self.status = int(status)
        self.name = _status_name(status)
        self.detail = detail
        super().__init__("%s: %s" % (self.name, detail))

    def __reduce__(self):  # picklable (multiprocessing) with its fields
        return (self.__class__, (int(self.status), self.detail))


class FedclientTimeout(FedclientError, TimeoutError):
    """next_task() saw no task within its timeout (ERR_TIMEOUT); the session stays up."""


def _raise(status, detail):
    cls = FedclientTimeout if status == Status.ERR_TIMEOUT else FedclientError
    raise cls(status, detail)


def _to_c_string(value, field):
    if value is None:
        return None
    if isinstance(value, bytes):
        raw = value
    elif isinstance(value, str):
        raw = value.encode("utf-8")
    elif isinstance(value, os.PathLike):
        raw = os.fsencode(value)
    else:
        raise TypeError("fedclient: %s must be a str, bytes or path, not %s"
                        % (field, type(value).__name__))
    if b"\0" in raw:
        raise ValueError("fedclient: %s contains a NUL character" % field)
    return raw


def _to_uint(value, field, maximum):
    try:
        n = operator.index(value)
    except TypeError:
        raise TypeError("fedclient: %s must be an integer, not %s"
                        % (field, type(value).__name__)) from None
    if n < 0 or n > maximum:
        raise ValueError("fedclient: %s = %d is out of range 0..%d" % (field, n, maximum))
    return n


# ---------------------------------------------------------------- tensors


def bf16_to_float32(bits):
    """bf16 raw bits (uint16 array, as Task arrays of a bf16 tensor) -> float32 array (exact)."""
    bits = np.asarray(bits)
    if bits.dtype != np.uint16:
        raise TypeError("fedclient: bf16 bits must be uint16, not %s" % bits.dtype)
    return (bits.astype("<u4") << 16).view("<f4")


def float32_to_bf16(values):
    """float array -> bf16 raw bits (uint16), rounded to nearest even; NaN stays NaN."""
    f = np.ascontiguousarray(values, dtype="<f4")
    u = f.view("<u4")
    rounded = (u + (np.uint32(0x7FFF) + ((u >> 16) & 1))) >> 16
    nan = np.isnan(f)
    out = rounded.astype("<u2")
    out[nan] = ((u[nan] >> 16) | 0x0040).astype("<u2")  # keep sign and payload top, force quiet
    return out


def _as_array(x):
    """x as an ndarray without a copy where possible: ndarrays as they are, torch tensors (and
    anything else with .detach() and .numpy()) through x.detach().numpy() when on the CPU
    (this shares memory), anything else through np.asarray."""
    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "detach") and hasattr(x, "numpy"):
        t = x.detach()
        device = getattr(t, "device", None)
        if device is not None and getattr(device, "type", "cpu") != "cpu":
            t = t.cpu()
        return t.numpy()
    return np.asarray(x)


Tensor = collections.namedtuple("Tensor", ["name", "array"])
Tensor.__doc__ = "One tensor of a task's model: its name and a read-only numpy view."


class _TaskMemory:
    """Owns one fc_task*. Every array view of the task's model keeps a reference to it, so the
    C task is freed only when the Task is closed and no view remains (never under a view)."""

    __slots__ = ("ptr", "lib", "__weakref__")

    def __init__(self, lib, ptr):
        self.lib = lib
        self.ptr = ptr

    def __del__(self):
        if self.ptr:
            self.lib.fc_task_free(self.ptr)
            self.ptr = None


def _task_view(memory, info):
    """A read-only numpy view of one tensor: no copy. Zero-byte tensors get an empty array."""
    dtype = _NP_DTYPE.get(info.dtype)
    if dtype is None:
        raise FedclientError(Status.ERR_DTYPE, "tensor '%s' has unknown dtype %d"
                             % (info.name.decode("utf-8", "replace"), info.dtype))
    shape = tuple(int(info.shape[k]) for k in range(info.ndim))
    if info.nbytes == 0:
        arr = np.empty(shape, dtype=dtype)
    else:
        raw = (ctypes.c_char * info.nbytes).from_address(info.data)
        raw._fedclient_memory = memory  # the view chain keeps the task's memory alive
        arr = np.frombuffer(memoryview(raw).toreadonly(), dtype=dtype).reshape(shape)
    arr.flags.writeable = False
    return arr


class Task:
    """One assignment from the server: a round's train or evaluate task and its model.

    The tensors are read-only numpy views of the model the SDK downloaded (no copy). A view
    stays valid as long as it exists: close() (or leaving a `with` block) drops the Task's own
    reference and the C task is freed once no view of it is left. Copy an array
    (`a.copy()`, `torch.tensor(a)`) to train on it.
    Tensor data may be unaligned when an earlier tensor's byte size is not a multiple of this
    dtype's size (arr.flags.aligned is then False); numpy handles that, only more slowly.
    """

    def __init__(self, lib, ptr):
        self._lib = lib
        self._memory = _TaskMemory(lib, ptr)
        self._tensors = None
        self._dtypes = None

    # -- lifetime --
    def close(self):
        """Drops this Task's hold on the SDK task; idempotent. Arrays already taken stay valid."""
        self._memory = None
        self._tensors = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    @property
    def closed(self):
        return self._memory is None

    def _call(self, fn, *args):
        """fn(task pointer, *args) with the task's memory held for the whole call."""
        memory = self._hold()
        return fn(memory.ptr, *args)

    def _hold(self):
        """The task's memory, for a caller to keep referenced across an SDK call so that a
        close() from another thread cannot free the task under it."""
        if self._memory is None:
            raise ValueError("fedclient: the task is closed")
        return self._memory

    # -- fields --
    @property
    def round(self):
        return int(self._call(self._lib.fc_task_round))

    @property
    def kind(self):
        return TaskKind(self._call(self._lib.fc_task_get_kind))

    @property
    def model_version(self):
        return int(self._call(self._lib.fc_task_model_version))

    @property
    def deadline_ms(self):
        """Deadline in Unix milliseconds, 0 = none."""
        return int(self._call(self._lib.fc_task_deadline_ms))

    def config(self, key):
        """The raw config value for key, or None if absent."""
        raw = self._call(self._lib.fc_task_config, _to_c_string(key, "key"))
        return None if raw is None else raw.decode("utf-8", "replace")

    def _typed(self, fn, ctype, key, default, what):
        out = ctype()
        ckey = _to_c_string(key, "key")
        st = self._call(fn, ckey, default if default is not None else 0, ctypes.byref(out))
        if st == Status.OK:
            return out.value
        if st == Status.ERR_NOT_FOUND:
            if default is None:
                raise KeyError(key)
            return default
        raise FedclientError(st, "task config '%s' = '%s' is not %s"
                             % (key, self.config(key), what))

    def config_float(self, key, default=None):
        """Config value as a float; default if absent (KeyError without a default); a value
        that is not a finite number raises FedclientError ERR_FORMAT."""
        return self._typed(self._lib.fc_task_config_double, ctypes.c_double, key,
                           None if default is None else float(default), "a finite number")

    def config_int(self, key, default=None):
        """Config value as an int (64-bit); as config_float otherwise."""
        return self._typed(self._lib.fc_task_config_int64, ctypes.c_int64, key,
                           None if default is None else int(default), "a 64-bit integer")

    def lr(self, default=0.01):
        """fc_task_lr: "lr", or default when absent or malformed."""
        return float(self._call(self._lib.fc_task_lr, float(default)))

    def epochs(self, default=1):
        """fc_task_epochs: "local_epochs", else "epochs", else default."""
        return int(self._call(self._lib.fc_task_epochs, int(default)))

    def mu(self, default=0.0):
        """fc_task_mu: the FedProx coefficient "mu", or default."""
        return float(self._call(self._lib.fc_task_mu, float(default)))

    # -- tensors --
    def _load_tensors(self):
        if self._tensors is not None:
            return
        memory = self._hold()
        ptr = memory.ptr
        n = self._lib.fc_task_tensor_count(ptr)
        tensors, dtypes = [], []
        info = _native.TensorInfo()
        for i in range(n):
            st = self._lib.fc_task_tensor(ptr, i, ctypes.byref(info))
            if st != Status.OK:
                raise FedclientError(st, "fc_task_tensor(%d) of %d failed" % (i, n))
            name = info.name.decode("utf-8", "replace")
            tensors.append(Tensor(name, _task_view(memory, info)))
            dtypes.append(DType(info.dtype))
        self._tensors, self._dtypes = tensors, dtypes

    @property
    def tensors(self):
        """[(name, read-only ndarray), ...] in the model's order (Tensor namedtuples)."""
        self._load_tensors()
        return list(self._tensors)

    def tensor_dict(self):
        """{name: read-only ndarray} in the model's order."""
        self._load_tensors()
        return {t.name: t.array for t in self._tensors}

    @property
    def names(self):
        self._load_tensors()
        return [t.name for t in self._tensors]

    def dtype(self, tensor):
        """The wire DType of a tensor (index or name); BF16 arrays hold raw uint16 bits."""
        return self._dtypes[self._index(tensor)]

    def __len__(self):
        self._load_tensors()
        return len(self._tensors)

    def __getitem__(self, tensor):
        """The read-only array of a tensor, by index or name."""
        return self._tensors[self._index(tensor)].array

    def _index(self, tensor):
        self._load_tensors()
        if isinstance(tensor, str):
            i = self._call(self._lib.fc_task_find_tensor, _to_c_string(tensor, "tensor"))
            if i < 0:
                raise KeyError("fedclient: the task has no tensor '%s'" % tensor)
            return int(i)
        i = operator.index(tensor)
        if not 0 <= i < len(self._tensors):
            raise IndexError("fedclient: tensor index %d out of range 0..%d"
                             % (i, len(self._tensors) - 1))
        return i

    def prox_add(self, tensor, grad, weights, mu=None):
        """FedProx: grad += mu * (weights - w_t) in place, where w_t is this task's model
        (fc_task_prox_add). tensor is an index or name of an f32 tensor; grad must be a
        writable, C-contiguous float32 array with the tensor's element count (a torch
        parameter's .grad is, or its .grad.numpy()); weights (an array or a torch tensor) is
        converted to float32 once if it must be.
        mu defaults to the server's coefficient (self.mu(0.0)). Returns grad."""
        i = self._index(tensor)
        name = self._tensors[i].name
        numel = self._tensors[i].array.size
        g = grad
        if not isinstance(g, np.ndarray) and hasattr(g, "numpy") and \
                getattr(getattr(g, "device", None), "type", "cpu") == "cpu":
            g = g.detach().numpy()  # a CPU torch tensor: its own memory
        if not isinstance(g, np.ndarray) or g.dtype != np.dtype("<f4") or \
                not g.flags.c_contiguous or not g.flags.writeable:
            raise TypeError("fedclient: prox_add(%s): grad must be a writable C-contiguous "
                            "float32 ndarray (it is updated in place)" % name)
        if g.size != numel:
            raise ValueError("fedclient: prox_add(%s): grad has %d elements, tensor has %d"
                             % (name, g.size, numel))
        w = np.ascontiguousarray(_as_array(weights), dtype="<f4")
        if w.size != numel:
            raise ValueError("fedclient: prox_add(%s): weights have %d elements, tensor has %d"
                             % (name, w.size, numel))
        if mu is None:
            mu = self.mu(0.0)
        memory = self._hold()
        st = self._lib.fc_task_prox_add(memory.ptr, i, g.ctypes.data, w.ctypes.data,
                                        float(mu))
        if st != Status.OK:
            raise FedclientError(st, "prox_add(%s, mu=%r): %s" % (name, mu, strerror(st)))
        return grad

    def __repr__(self):
        if self.closed:
            return "<fedclient.Task closed>"
        return "<fedclient.Task round=%d kind=%s model_version=%d tensors=%d>" % (
            self.round, self.kind.name.lower(), self.model_version, len(self))


def _submit_arrays(task, tensors, what):
    """Matches `tensors` (a mapping name -> array, a sequence of arrays in the task's order, or
    a sequence of (name, array) pairs) to the task's layout. Returns (arrays, pointers): each
    array has the task's dtype and shape in C order; one that already did is passed as is (no
    copy), any other is converted once."""
    task._load_tensors()
    spec = task._tensors
    names = [t.name for t in spec]
    if isinstance(tensors, np.ndarray):
        raise TypeError("fedclient: %s: pass a mapping name -> array or a list of arrays, "
                        "not one ndarray" % what)
    if isinstance(tensors, collections.abc.Mapping):
        by_name = dict(tensors)
    else:
        items = list(tensors)
        pairs = [x for x in items if isinstance(x, tuple) and len(x) == 2 and isinstance(x[0], str)]
        if items and len(pairs) == len(items):
            by_name = {}
            for n, a in pairs:
                if n in by_name:
                    raise ValueError("fedclient: %s: tensor '%s' given twice" % (what, n))
                by_name[n] = a
        else:
            if len(items) != len(spec):
                raise ValueError("fedclient: %s: %d arrays given, the task's model has %d "
                                 "tensors (%s)" % (what, len(items), len(spec), ", ".join(names)))
            by_name = dict(zip(names, items))
    missing = [n for n in names if n not in by_name]
    extra = [str(n) for n in by_name if n not in set(names)]
    if missing or extra:
        raise ValueError("fedclient: %s: tensors do not match the task's model:%s%s" % (
            what, " missing " + ", ".join(missing) if missing else "",
            " unknown " + ", ".join(extra) if extra else ""))
    arrays, pointers = [], (ctypes.c_void_p * max(1, len(spec)))()
    for i, t in enumerate(spec):
        target = t.array.dtype
        a = _as_array(by_name[t.name])
        if a.shape != t.array.shape:
            raise ValueError("fedclient: %s: tensor '%s' has shape %s, the task's model has %s"
                             % (what, t.name, list(a.shape), list(t.array.shape)))
        if a.dtype != target or not a.flags.c_contiguous:
            if task._dtypes[i] == DType.BF16 and a.dtype.kind == "f":
                a = float32_to_bf16(a)
            elif a.dtype.kind in "biuf" and np.can_cast(a.dtype, target, casting="same_kind") \
                    and not (task._dtypes[i] == DType.BF16 and a.dtype != np.uint16):
                a = np.ascontiguousarray(a, dtype=target)
            else:
                raise TypeError("fedclient: %s: tensor '%s' is %s, the task's model holds %s%s"
                                % (what, t.name, a.dtype, task._dtypes[i].name.lower(),
                                   " (bf16: pass floats or uint16 bits)"
                                   if task._dtypes[i] == DType.BF16 else ""))
        arrays.append(a)
        pointers[i] = a.ctypes.data
    return arrays, pointers


def _metrics(metrics):
    if metrics is None:
        return None, 0, []
    items = list(metrics.items()) if isinstance(metrics, collections.abc.Mapping) \
        else list(metrics)
    arr = (_native.Metric * max(1, len(items)))()
    keep = []
    for i, item in enumerate(items):
        try:
            name, value = item
        except (TypeError, ValueError):
            raise TypeError("fedclient: a metric must be a (name, value) pair, not %r"
                            % (item,)) from None
        raw = _to_c_string(name, "metric name")
        keep.append(raw)
        arr[i].name = raw
        arr[i].value = float(value)
    return arr, len(items), keep


class Client:
    """One session with a fedcoord coordinator (fc_client). Blocking calls; one thread at a time
    (a concurrent call from a second thread raises RuntimeError instead of corrupting the
    session). The GIL is released inside every SDK call, so clients in different threads run in
    parallel.

    Arguments are the fields of fc_client_config (docs/sdk.md); 0 means the SDK's default.
    Opening connects, verifies the server certificate and authenticates; failures raise
    FedclientError (ERR_CONFIG, ERR_TLS, ERR_AUTH, ERR_CLOSED after the reconnect attempts, ...).
    """

    def __init__(self, server, ca_file, *, client_name=None, token=None, server_name=None,
                 cert_file=None, key_file=None, connect_timeout_ms=0, io_timeout_ms=0,
                 reconnect_max_attempts=0, reconnect_base_ms=0, reconnect_max_ms=0,
                 max_model_bytes=0, library=None):
        self._ptr = None
        self._lock = threading.Lock()
        self.done_reason = None
        self._lib = _native.load(library)
        cfg = _native.ClientConfig()
        cfg.size = ctypes.sizeof(_native.ClientConfig)
        self._strings = [
            _to_c_string(server, "server"), _to_c_string(ca_file, "ca_file"),
            _to_c_string(server_name, "server_name"), _to_c_string(cert_file, "cert_file"),
            _to_c_string(key_file, "key_file"), _to_c_string(token, "token"),
            _to_c_string(client_name, "client_name"),
        ]
        (cfg.server, cfg.ca_file, cfg.server_name, cfg.cert_file, cfg.key_file, cfg.token,
         cfg.client_name) = self._strings
        cfg.connect_timeout_ms = _to_uint(connect_timeout_ms, "connect_timeout_ms", _UINT32_MAX)
        cfg.io_timeout_ms = _to_uint(io_timeout_ms, "io_timeout_ms", _UINT32_MAX)
        attempts = operator.index(reconnect_max_attempts)
        if not -(1 << 31) <= attempts < (1 << 31):
            raise ValueError("fedclient: reconnect_max_attempts = %d does not fit an int"
                             % attempts)
        cfg.reconnect_max_attempts = attempts
        cfg.reconnect_base_ms = _to_uint(reconnect_base_ms, "reconnect_base_ms", _UINT32_MAX)
        cfg.reconnect_max_ms = _to_uint(reconnect_max_ms, "reconnect_max_ms", _UINT32_MAX)
        cfg.max_model_bytes = _to_uint(max_model_bytes, "max_model_bytes", _UINT64_MAX)
        handle = _native.client_p()
        st = self._lib.fc_client_open(ctypes.byref(cfg), ctypes.byref(handle))
        self._strings = None  # the SDK copied what it needs
        if st != Status.OK:
            detail = self._lib.fc_client_error(handle).decode("utf-8", "replace") \
                if handle.value else strerror(st)
            self._lib.fc_client_close(handle)
            _raise(st, detail)
        self._ptr = handle

    # -- lifetime --
    def close(self):
        """Sends Bye, closes the connection, frees the session; idempotent. Tasks stay valid."""
        with self._lock:
            ptr, self._ptr = self._ptr, None
            if ptr is not None:
                self._lib.fc_client_close(ptr)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def __del__(self):
        if getattr(self, "_ptr", None) is not None:
            self._lib.fc_client_close(self._ptr)
            self._ptr = None

    @property
    def closed(self):
        return self._ptr is None

    @property
    def error(self):
        """fc_client_error: the detail of the last error ("" if none). Waits for a call
        running in another thread."""
        with self._lock:
            if self._ptr is None:
                return ""
            return self._lib.fc_client_error(self._ptr).decode("utf-8", "replace")

    @property
    def last_status(self):
        """fc_client_last_status: the status of the last failed call (Status.OK if none)."""
        with self._lock:
            if self._ptr is None:
                return Status.OK
            st = self._lib.fc_client_last_status(self._ptr)
        try:
            return Status(st)
        except ValueError:
            return st

    def _enter_call(self, what):
        if not self._lock.acquire(blocking=False):
            raise RuntimeError("fedclient: %s: this Client is in use by another thread; "
                               "one Client belongs to one thread at a time" % what)
        if self._ptr is None:
            self._lock.release()
            raise ValueError("fedclient: %s: the client is closed" % what)

    def _fail(self, st):
        _raise(st, self._lib.fc_client_error(self._ptr).decode("utf-8", "replace"))

    # -- the task loop --
    def next_task(self, timeout=None):
        """Waits up to timeout seconds (None = forever) for the next task and downloads its
        model. Returns a Task, or None when the server ended the federation (done_reason then
        holds its reason). Raises FedclientTimeout (no task in time; the session stays up) or
        FedclientError."""
        if timeout is None:
            ms = 0
        else:
            if not (isinstance(timeout, (int, float)) and math.isfinite(timeout)
                    and timeout > 0):
                raise ValueError("fedclient: next_task timeout must be a positive number of "
                                 "seconds or None, not %r" % (timeout,))
            ms = min(_UINT32_MAX, max(1, int(math.ceil(timeout * 1000))))
        self._enter_call("next_task")
        try:
            out = _native.task_p()
            st = self._lib.fc_client_next_task(self._ptr, ms, ctypes.byref(out))
            if st != Status.OK:
                self._fail(st)
            if not out.value:
                self.done_reason = self._lib.fc_client_error(self._ptr).decode("utf-8",
                                                                               "replace")
                return None
            return Task(self._lib, out.value)
        finally:
            self._lock.release()

    def tasks(self, timeout=None):
        """Iterates over tasks until the server says done; each task is closed when the next
        one is requested (arrays taken from it stay valid)."""
        while True:
            task = self.next_task(timeout)
            if task is None:
                return
            with task:
                yield task

    def submit(self, task, weights=None, num_examples=None, metrics=None, *, delta=None):
        """Uploads the result of a train task and waits for the server's Ack.

        Pass exactly one of weights= (the trained weights w_i; the SDK uploads w_i - w_t) or
        delta= (an update computed by the caller, uploaded as is). Either is a mapping
        name -> array, a sequence of arrays in the task's order, or a sequence of
        (name, array) pairs, e.g. a torch model's state_dict(); arrays (torch tensors, or
        anything np.asarray accepts) must have the tensors' shapes. An array that already has the tensor's dtype and C order
        is read in place; any other is converted once. num_examples > 0; metrics is a mapping
        name -> finite number (or a sequence of pairs). Raises FedclientError, e.g. ERR_SHAPE,
        ERR_NON_FINITE or ERR_REQUIREMENT for a rejected update, ERR_STATE for a closed round."""
        if (weights is None) == (delta is None):
            raise TypeError("fedclient: submit needs exactly one of weights= or delta=")
        if num_examples is None:
            raise TypeError("fedclient: submit needs num_examples")
        n = _to_uint(num_examples, "num_examples", _UINT64_MAX)
        kind = _native.FC_SUBMIT_WEIGHTS if delta is None else _native.FC_SUBMIT_DELTA
        what = "submit(%s)" % ("weights" if delta is None else "delta")
        arrays, pointers = _submit_arrays(task, weights if delta is None else delta, what)
        marr, mcount, keep = _metrics(metrics)
        memory = task._hold()
        self._enter_call("submit")
        try:
            st = self._lib.fc_client_submit(self._ptr, memory.ptr, kind, pointers, n,
                                            marr, mcount)
            if st != Status.OK:
                self._fail(st)
        finally:
            self._lock.release()
            del arrays, keep, memory  # alive until the SDK has returned; it keeps no pointer

    def set_initial_model(self, tensors):
        """Sets the model this client proposes if the server has none yet
        (fc_client_set_initial_model): next_task() then uploads it when the server asks, and
        keeps waiting. tensors is a mapping name -> array or a sequence of (name, array) pairs
        (e.g. a torch state_dict()), in model order. float16/32/64 arrays keep their dtype,
        other numeric arrays become float32. The SDK copies everything; None or an empty
        sequence clears the model. Raises FedclientError (ERR_EXISTS for a repeated name,
        ERR_INVALID, ...) naming the tensor; a previous model then stays."""
        if tensors is None:
            items = []
        elif isinstance(tensors, collections.abc.Mapping):
            items = list(tensors.items())
        else:
            items = list(tensors)
        descs = (_native.TensorDesc * max(1, len(items)))()
        keep = []
        for i, item in enumerate(items):
            try:
                name, value = item
            except (TypeError, ValueError):
                raise TypeError("fedclient: set_initial_model: item %d is not a (name, array) "
                                "pair" % i) from None
            a = _as_array(value)
            if a.dtype.kind == "f" and a.dtype.itemsize in (2, 4, 8):
                target = np.dtype("<f%d" % a.dtype.itemsize)
            elif a.dtype.kind in "biu":
                target = np.dtype("<f4")
            else:
                raise TypeError("fedclient: set_initial_model: tensor '%s' is %s, not a real "
                                "number type" % (name, a.dtype))
            a = np.ascontiguousarray(a, dtype=target)
            shape = (ctypes.c_uint64 * max(1, a.ndim))(*a.shape)
            raw = _to_c_string(name, "tensor name")
            keep += [raw, a, shape]
            descs[i].name = raw
            descs[i].dtype = {2: DType.F16, 4: DType.F32, 8: DType.F64}[target.itemsize]
            descs[i].ndim = a.ndim
            descs[i].shape = shape
            descs[i].data = a.ctypes.data
        self._enter_call("set_initial_model")
        try:
            st = self._lib.fc_client_set_initial_model(self._ptr, len(items),
                                                       descs if items else None)
            if st != Status.OK:
                self._fail(st)
        finally:
            self._lock.release()
            del keep

    def report_eval(self, task, num_examples, metrics=None):
        """Reports the result of an evaluate task and waits for the server's Ack."""
        n = _to_uint(num_examples, "num_examples", _UINT64_MAX)
        marr, mcount, keep = _metrics(metrics)
        memory = task._hold()
        self._enter_call("report_eval")
        try:
            st = self._lib.fc_client_report_eval(self._ptr, memory.ptr, n, marr, mcount)
            if st != Status.OK:
                self._fail(st)
        finally:
            self._lock.release()
            del keep, memory

    def __repr__(self):
        return "<fedclient.Client %s>" % ("closed" if self.closed else "open")

