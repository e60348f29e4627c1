"""The binding without a daemon: loading, the ABI mirror, errors before a session exists,
bf16 conversion and the safetensors helper."""

import ctypes
import ctypes.util
import json
import os
import pickle
import re
import shutil
import socket
import struct
import subprocess
import sys
import unittest

import numpy as np

import harness
import fedclient
from fedclient import _native, safetensors

HEADER = os.path.join(harness.REPO, "client", "include", "fedcoord", "client.h")


class LibraryTest(unittest.TestCase):
    def test_library_loads_and_names_statuses_like_the_sdk(self):
        path = fedclient.load_library()
        self.assertTrue(os.path.exists(path), path)
        self.assertEqual(fedclient.strerror(fedclient.Status.ERR_HASH), "SHA-256 mismatch")
        self.assertEqual(fedclient.strerror(fedclient.Status.OK), "success")

    def test_status_enum_matches_the_c_header(self):
        with open(HEADER) as f:
            text = f.read()
        block = text[text.index("typedef enum fc_status"):text.index("} fc_status;")]
        pairs = {m.group(1): int(m.group(2))
                 for m in re.finditer(r"FC_([A-Z_]+) = (\d+),", block)}
        self.assertEqual(pairs, {s.name: s.value for s in fedclient.Status})

    def test_missing_library_is_an_error_that_says_where_it_looked(self):
        env = dict(os.environ, FEDCLIENT_LIBRARY="/nonexistent/libfedclient.so")
        code = ("import sys; sys.path.insert(0, %r)\n"
                "import fedclient\n"
                "try:\n    fedclient.load_library()\n"
                "except OSError as e:\n    print(e)\n" % os.path.join(harness.REPO, "client",
                                                                       "python"))
        out = subprocess.run([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                             text=True, check=True).stdout
        self.assertIn("/nonexistent/libfedclient.so (no such file)", out)
        self.assertIn("FEDCLIENT_LIBRARY", out)

    def test_a_library_without_the_sdk_functions_is_refused(self):
        libc = ctypes.util.find_library("c")
        env = dict(os.environ, FEDCLIENT_LIBRARY=libc)
        code = ("import sys; sys.path.insert(0, %r)\n"
                "import fedclient\n"
                "try:\n    fedclient.load_library()\n"
                "except OSError as e:\n    print(e)\n" % os.path.join(harness.REPO, "client",
                                                                       "python"))
        out = subprocess.run([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                             text=True, check=True).stdout
        self.assertIn("does not export fc_", out)


@unittest.skipUnless(shutil.which("cc"), "needs a C compiler to print the C layout")
class AbiTest(unittest.TestCase):
    """The ctypes structs against the C compiler's own layout of client.h."""

    def test_struct_layouts_match_the_c_compiler(self):
        structs = {
            "fc_client_config": _native.ClientConfig,
            "fc_tensor_info": _native.TensorInfo,
            "fc_metric": _native.Metric,
            "fc_tensor_desc": _native.TensorDesc,
        }
        lines = ['#include <stdio.h>', '#include <stddef.h>', '#include "fedcoord/client.h"',
                 "int main(void) {"]
        for cname, py in structs.items():
            lines.append('printf("%s sizeof %%zu\\n", sizeof(%s));' % (cname, cname))
            for field, _ in py._fields_:
                lines.append('printf("%s %s %%zu\\n", offsetof(%s, %s));'
                             % (cname, field, cname, field))
        lines += ['printf("FC_MAX_DIMS %d\\n", FC_MAX_DIMS);', "return 0;", "}"]
        folder = harness.tmpdir("abi")
        src, exe = os.path.join(folder, "abi.c"), os.path.join(folder, "abi")
        with open(src, "w") as f:
            f.write("\n".join(lines) + "\n")
        harness.run(["cc", "-std=c11", "-I", os.path.join(harness.REPO, "client", "include"),
                     "-o", exe, src])
        got = dict(line.rsplit(" ", 1) for line in harness.run([exe]).splitlines())
        for cname, py in structs.items():
            self.assertEqual(int(got["%s sizeof" % cname]), ctypes.sizeof(py), cname)
            for field, _ in py._fields_:
                self.assertEqual(int(got["%s %s" % (cname, field)]), getattr(py, field).offset,
                                 "%s.%s" % (cname, field))
        self.assertEqual(int(got["FC_MAX_DIMS"]), _native.FC_MAX_DIMS)


class OpenErrorTest(unittest.TestCase):
    """fc_client_open failures surface as FedclientError with the status name and detail."""

    @classmethod
    def setUpClass(cls):
        cls.tls = harness.make_tls(harness.tmpdir("open-errors"))

    def open(self, server, **kw):
        args = dict(client_name="site-1", token="t" * 43, reconnect_max_attempts=-1,
                    connect_timeout_ms=2000)
        args.update(kw)
        with self.assertRaises(fedclient.FedclientError) as cm:
            fedclient.Client(server, self.tls["ca"], **args)
        return cm.exception

    def test_missing_ca_file_is_a_config_error_naming_the_file(self):
        with self.assertRaises(fedclient.FedclientError) as cm:
            fedclient.Client("127.0.0.1:7443", "/nonexistent/ca.pem", client_name="a",
                             token="t")
        e = cm.exception
        self.assertEqual(e.status, fedclient.Status.ERR_CONFIG)
        self.assertEqual(e.name, "ERR_CONFIG")
        self.assertIn("ca_file /nonexistent/ca.pem", e.detail)
        self.assertTrue(str(e).startswith("ERR_CONFIG: "), str(e))

    def test_address_without_port_is_a_config_error(self):
        e = self.open("localhost")
        self.assertEqual(e.name, "ERR_CONFIG")
        self.assertIn("localhost", e.detail)

    def test_token_without_client_name_is_a_config_error(self):
        e = self.open("127.0.0.1:7443", client_name=None)
        self.assertEqual(e.name, "ERR_CONFIG")
        self.assertIn("client_name", e.detail)

    def test_unreachable_server_is_closed_after_the_reconnect_attempts(self):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()  # nothing listens there now
        e = self.open("127.0.0.1:%d" % port, reconnect_max_attempts=2, reconnect_base_ms=10)
        self.assertEqual(e.status, fedclient.Status.ERR_CLOSED)
        # attempt 0 plus reconnect_max_attempts retries (docs/sdk.md, "Retry behaviour")
        self.assertRegex(e.detail, r"could not reach the server after \d+ attempts")
        self.assertIn("127.0.0.1:%d" % port, e.detail)
        self.assertIn("refused", e.detail)

    def test_bad_python_arguments_fail_before_the_sdk_is_called(self):
        with self.assertRaises(ValueError):
            fedclient.Client("127.0.0.1:1\0x", self.tls["ca"], client_name="a", token="t")
        with self.assertRaises(ValueError):
            fedclient.Client("127.0.0.1:1", self.tls["ca"], client_name="a", token="t",
                             connect_timeout_ms=-1)
        with self.assertRaises(ValueError):
            fedclient.Client("127.0.0.1:1", self.tls["ca"], client_name="a", token="t",
                             io_timeout_ms=1 << 32)
        with self.assertRaises(TypeError):
            fedclient.Client("127.0.0.1:1", self.tls["ca"], client_name=3, token="t")


class ErrorTypeTest(unittest.TestCase):
    def test_error_keeps_status_name_and_detail_through_pickle(self):
        e = fedclient.FedclientError(14, "update has tensor 'w' shape [3,2]")
        self.assertEqual((e.status, e.name), (fedclient.Status.ERR_SHAPE, "ERR_SHAPE"))
        self.assertEqual(str(e), "ERR_SHAPE: update has tensor 'w' shape [3,2]")
        back = pickle.loads(pickle.dumps(e))
        self.assertEqual((type(back), back.status, back.detail), (type(e), e.status, e.detail))
        t = pickle.loads(pickle.dumps(fedclient.FedclientTimeout(22, "no task")))
        self.assertIsInstance(t, TimeoutError)
        self.assertEqual(fedclient.FedclientError(99, "x").name, "UNKNOWN(99)")


class Bf16Test(unittest.TestCase):
    # Expected bit patterns by hand: 1.0f = 0x3F800000 -> 0x3F80; 3.140625 = 0x40490000.
    def test_bf16_bits_widen_exactly(self):
        bits = np.array([0x3F80, 0x4049, 0xBF80, 0x0000, 0x7F80], dtype=np.uint16)
        self.assertEqual(fedclient.bf16_to_float32(bits).tolist(),
                         [1.0, 3.140625, -1.0, 0.0, float("inf")])

    def test_float32_rounds_to_nearest_even_bf16(self):
        f = np.array([0x3F808000, 0x3F818000, 0x3F808001, 0x3F807FFF], dtype=np.uint32)
        # halfway below an even result stays (0x3F80); halfway above an odd one goes up to
        # the even 0x3F82; just above half rounds up; just below half rounds down.
        self.assertEqual(fedclient.float32_to_bf16(f.view(np.float32)).tolist(),
                         [0x3F80, 0x3F82, 0x3F81, 0x3F80])

    def test_nan_stays_nan(self):
        out = fedclient.float32_to_bf16(np.array([np.nan, -np.nan], dtype=np.float32))
        self.assertTrue(np.isnan(fedclient.bf16_to_float32(out)).all())


class SafetensorsTest(unittest.TestCase):
    def test_written_file_has_the_documented_layout(self):
        path = os.path.join(harness.tmpdir("st"), "m.safetensors")
        safetensors.save(path, [("a", np.array([1.0, -2.0], dtype=np.float32)),
                                ("b", np.array([0.5]))])
        with open(path, "rb") as f:
            raw = f.read()
        (n,) = struct.unpack_from("<Q", raw)
        self.assertEqual(n % 8, 0)
        header = json.loads(raw[8:8 + n])
        self.assertEqual(header, {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                                  "b": {"dtype": "F64", "shape": [1], "data_offsets": [8, 16]}})
        self.assertEqual(raw[8 + n:], struct.pack("<2f", 1.0, -2.0) + struct.pack("<d", 0.5))
        back = safetensors.load(path)
        self.assertEqual([(k, v.dtype.str, v.tolist()) for k, v in back],
                         [("a", "<f4", [1.0, -2.0]), ("b", "<f8", [0.5])])

    def test_trailing_bytes_are_refused(self):
        path = os.path.join(harness.tmpdir("st"), "t.safetensors")
        safetensors.save(path, [("a", np.zeros(2, dtype=np.float32))])
        with open(path, "ab") as f:
            f.write(b"x")
        with self.assertRaises(ValueError) as cm:
            safetensors.load(path)
        self.assertIn("1 bytes after the last tensor", str(cm.exception))


if __name__ == "__main__":
    unittest.main()
