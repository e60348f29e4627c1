"""_native: loads libfedclient.so through ctypes and declares its functions.

This module owns the ctypes mirror of client/include/fedcoord/client.h (structs, enums,
signatures) and the search for the shared library. It never converts arrays, never raises a
FedclientError and keeps no state besides the loaded library.
"""

import ctypes
import enum
import os
import threading

# ---- fc_status: the numbers are stable (append-only list in core/status.h) ----


class Status(enum.IntEnum):
    """fc_status. The member names are fc_status_name()'s ("ERR_HASH")."""

    OK = 0
    ERR_NOMEM = 1
    ERR_INVALID = 2
    ERR_IO = 3
    ERR_FORMAT = 4
    ERR_OVERFLOW = 5
    ERR_LIMIT = 6
    ERR_NOT_FOUND = 7
    ERR_EXISTS = 8
    ERR_PROTOCOL = 9
    ERR_VERSION = 10
    ERR_AUTH = 11
    ERR_TLS = 12
    ERR_HASH = 13
    ERR_SHAPE = 14
    ERR_DTYPE = 15
    ERR_CONFIG = 16
    ERR_STATE = 17
    ERR_DB = 18
    ERR_CORRUPT = 19
    ERR_AGAIN = 20
    ERR_CLOSED = 21
    ERR_TIMEOUT = 22
    ERR_UNSUPPORTED = 23
    ERR_NON_FINITE = 24
    ERR_REQUIREMENT = 25
    ERR_BUSY = 26
    ERR_RANGE = 27
    ERR_CHUNK = 28
    ERR_SYSTEM = 29


class DType(enum.IntEnum):
    """fc_dtype: tensor element types, numbered as on the wire."""

    INVALID = 0
    F32 = 1
    F16 = 2
    BF16 = 3
    F64 = 4


class TaskKind(enum.IntEnum):
    """fc_task_type."""

    TRAIN = 1
    EVALUATE = 2


FC_SUBMIT_WEIGHTS = 0
FC_SUBMIT_DELTA = 1
FC_MAX_DIMS = 8

# ---- structs (same field order and types as client.h) ----


class ClientConfig(ctypes.Structure):
    _fields_ = [
        ("size", ctypes.c_size_t),
        ("server", ctypes.c_char_p),
        ("ca_file", ctypes.c_char_p),
        ("server_name", ctypes.c_char_p),
        ("cert_file", ctypes.c_char_p),
        ("key_file", ctypes.c_char_p),
        ("token", ctypes.c_char_p),
        ("client_name", ctypes.c_char_p),
        ("connect_timeout_ms", ctypes.c_uint32),
        ("io_timeout_ms", ctypes.c_uint32),
        ("reconnect_max_attempts", ctypes.c_int),
        ("reconnect_base_ms", ctypes.c_uint32),
        ("reconnect_max_ms", ctypes.c_uint32),
        ("max_model_bytes", ctypes.c_uint64),
    ]


class TensorInfo(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_char_p),
        ("dtype", ctypes.c_int),
        ("ndim", ctypes.c_uint32),
        ("shape", ctypes.c_uint64 * FC_MAX_DIMS),
        ("numel", ctypes.c_uint64),
        ("nbytes", ctypes.c_uint64),
        ("data", ctypes.c_void_p),
    ]


class TensorDesc(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_char_p),
        ("dtype", ctypes.c_int),
        ("ndim", ctypes.c_size_t),
        ("shape", ctypes.POINTER(ctypes.c_uint64)),
        ("data", ctypes.c_void_p),
    ]


class Metric(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("value", ctypes.c_double)]


client_p = ctypes.c_void_p
task_p = ctypes.c_void_p

# name: (restype, argtypes)
_SIGNATURES = {
    "fc_strerror": (ctypes.c_char_p, [ctypes.c_int]),
    "fc_client_open": (ctypes.c_int, [ctypes.POINTER(ClientConfig), ctypes.POINTER(client_p)]),
    "fc_client_close": (None, [client_p]),
    "fc_client_error": (ctypes.c_char_p, [client_p]),
    "fc_client_last_status": (ctypes.c_int, [client_p]),
    "fc_client_next_task": (ctypes.c_int, [client_p, ctypes.c_uint32, ctypes.POINTER(task_p)]),
    "fc_task_free": (None, [task_p]),
    "fc_task_round": (ctypes.c_uint64, [task_p]),
    "fc_task_get_kind": (ctypes.c_int, [task_p]),
    "fc_task_model_version": (ctypes.c_uint64, [task_p]),
    "fc_task_deadline_ms": (ctypes.c_uint64, [task_p]),
    "fc_task_config": (ctypes.c_char_p, [task_p, ctypes.c_char_p]),
    "fc_task_config_double": (
        ctypes.c_int,
        [task_p, ctypes.c_char_p, ctypes.c_double, ctypes.POINTER(ctypes.c_double)],
    ),
    "fc_task_config_int64": (
        ctypes.c_int,
        [task_p, ctypes.c_char_p, ctypes.c_int64, ctypes.POINTER(ctypes.c_int64)],
    ),
    "fc_task_lr": (ctypes.c_double, [task_p, ctypes.c_double]),
    "fc_task_epochs": (ctypes.c_int64, [task_p, ctypes.c_int64]),
    "fc_task_mu": (ctypes.c_double, [task_p, ctypes.c_double]),
    "fc_task_tensor_count": (ctypes.c_size_t, [task_p]),
    "fc_task_tensor": (ctypes.c_int, [task_p, ctypes.c_size_t, ctypes.POINTER(TensorInfo)]),
    "fc_task_find_tensor": (ctypes.c_long, [task_p, ctypes.c_char_p]),
    "fc_task_prox_add": (
        ctypes.c_int,
        [task_p, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_double],
    ),
    "fc_client_submit": (
        ctypes.c_int,
        [
            client_p,
            task_p,
            ctypes.c_int,
            ctypes.POINTER(ctypes.c_void_p),
            ctypes.c_uint64,
            ctypes.POINTER(Metric),
            ctypes.c_size_t,
        ],
    ),
    "fc_client_set_initial_model": (
        ctypes.c_int,
        [client_p, ctypes.c_size_t, ctypes.POINTER(TensorDesc)],
    ),
    "fc_client_report_eval": (
        ctypes.c_int,
        [client_p, task_p, ctypes.c_uint64, ctypes.POINTER(Metric), ctypes.c_size_t],
    ),
}

ENV_LIBRARY = "FEDCLIENT_LIBRARY"

_lock = threading.Lock()
_lib = None
_lib_path = None


def candidate_paths():
    """Where load() looks, in order: $FEDCLIENT_LIBRARY, the source tree's build/lib (this
    package sits in client/python/fedclient/), then the system's libfedclient.so.1."""
    paths = []
    env = os.environ.get(ENV_LIBRARY)
    if env:
        paths.append(env)
        return paths  # an explicit choice is never second-guessed
    here = os.path.dirname(os.path.abspath(__file__))
    repo = os.path.normpath(os.path.join(here, "..", "..", ".."))
    paths.append(os.path.join(repo, "build", "lib", "libfedclient.so"))
    paths.append("libfedclient.so.1")  # the dynamic loader's search (ldconfig, LD_LIBRARY_PATH)
    return paths


def load(path=None):
    """Loads libfedclient once and returns the ctypes.CDLL. path overrides the search.
    Raises OSError naming every place tried, or a missing function."""
    global _lib, _lib_path
    with _lock:
        if _lib is not None and (path is None or path == _lib_path):
            return _lib
        tried = []
        lib = None
        for p in [path] if path else candidate_paths():
            if os.sep in p and not os.path.exists(p):
                tried.append("%s (no such file)" % p)
                continue
            try:
                lib = ctypes.CDLL(p)
            except OSError as e:
                tried.append("%s (%s)" % (p, e))
                continue
            path = p
            break
        if lib is None:
            raise OSError(
                "fedclient: cannot load libfedclient; tried: %s. Build it with `make` in the "
                "fedcoord tree, install it with `make install`, or set %s to its path"
                % ("; ".join(tried), ENV_LIBRARY)
            )
        for name, (restype, argtypes) in _SIGNATURES.items():
            try:
                fn = getattr(lib, name)
            except AttributeError:
                raise OSError(
                    "fedclient: %s does not export %s: not a libfedclient.so.1 of this version"
                    % (path, name)
                ) from None
            fn.restype = restype
            fn.argtypes = argtypes
        _lib, _lib_path = lib, path
        return lib


def loaded_path():
    """The path load() used, or None before the first load."""
    return _lib_path
