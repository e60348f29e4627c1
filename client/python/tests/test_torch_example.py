"""The PyTorch example (examples/torch_digits.py) federates against a real daemon.

Skipped, with the reason, when torch is not importable by this Python. The check of learning
does not trust the example's own output: it reads the final model from the daemon's database and
computes its accuracy on the whole digits set with numpy.
"""

import importlib.util
import os
import subprocess
import sys
import unittest

import numpy as np

import harness
import fedclient

EXAMPLE = os.path.join(harness.REPO, "client", "python", "examples", "torch_digits.py")
HAVE_TORCH = importlib.util.find_spec("torch") is not None
SKIP_REASON = ("torch is not installed for %s: apt-get install python3-torch (Debian 12) or "
               "pip install torch, see docs/python.md" % sys.executable)

sys.path.insert(0, os.path.dirname(EXAMPLE))
import torch_digits  # noqa: E402  (imports without torch; only main() needs it)


def softmax_accuracy(model, X, y):
    w = dict(model)
    logits = X @ w["fc.weight"].T.astype(np.float64) + w["fc.bias"]
    return float((logits.argmax(1) == y).mean())


@unittest.skipUnless(HAVE_TORCH, SKIP_REASON)
class TorchExampleTest(unittest.TestCase):
    def test_two_torch_clients_learn_the_digits_through_the_daemon(self):
        folder = harness.tmpdir("torch-init")
        init = os.path.join(folder, "init.safetensors")
        subprocess.run([sys.executable, EXAMPLE, "--write-initial", init], check=True,
                       stdout=subprocess.DEVNULL)
        initial = harness.safetensors.load(init)
        self.assertEqual([(n, a.shape) for n, a in initial],
                         [("fc.weight", (10, 64)), ("fc.bias", (10,))])
        rounds = 5
        # No initial_model: the daemon asks one of the clients to propose its weights.
        d = harness.Daemon("torch", None, ["t0", "t1"],
                           round={"min_clients": 2, "clients_per_round": 2, "min_updates": 2,
                                  "max_rounds": rounds, "mu": 0.01})  # FedProx path too
        with d:
            procs = []
            for i in range(2):
                env = dict(os.environ, FEDCOORD_TOKEN=d.tokens["t%d" % i])
                procs.append(subprocess.Popen(
                    [sys.executable, EXAMPLE, "--server", d.address, "--ca", d.tls["ca"],
                     "--name", "t%d" % i, "--index", str(i), "--clients", "2",
                     "--timeout", "60"],
                    env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
            outs = []
            for p in procs:
                try:
                    out, _ = p.communicate(timeout=240)
                except subprocess.TimeoutExpired:
                    p.kill()
                    out, _ = p.communicate()
                    self.fail("example still running after 240 s:\n%s" % out)
                outs.append(out)
                self.assertEqual(p.returncode, 0, out + "\n--- daemon log ---\n" + d.log())
        for out in outs:
            self.assertIn("round %d:" % rounds, out)
            self.assertIn("done: the server ended the session", out)
        version, final = d.model()
        self.assertEqual(version, rounds + 1)
        _, proposed = d.model(1)  # what a client proposed: the same as --write-initial
        for (n0, a0), (n1, a1) in zip(initial, proposed):
            self.assertEqual(n0, n1)
            np.testing.assert_array_equal(a0, a1)
        X, y = torch_digits.load_digits(torch_digits.DEFAULT_DATA)
        acc0 = softmax_accuracy(initial, X, y)
        acc = softmax_accuracy(final, X, y)
        # Zero weights predict class 0 for everything (~10%); 5 rounds of 5 local epochs reach
        # about 0.95 for two IID-ish halves. 0.85 leaves room for the non-IID split.
        self.assertLess(acc0, 0.2)
        self.assertGreater(acc, 0.85, "final accuracy %.4f; outputs:\n%s" % (acc, "\n".join(outs)))
        rows = d.query("SELECT count(*) FROM rounds WHERE state = 'COMMITTED'")
        self.assertEqual(rows[0][0], rounds)


    def test_a_model_that_does_not_match_the_servers_is_a_clear_error(self):
        softmax = [("fc.weight", np.zeros((10, 64), np.float32)),
                   ("fc.bias", np.zeros(10, np.float32))]
        d = harness.Daemon("torch-mismatch", softmax, ["m"],
                           round={"min_clients": 1, "clients_per_round": 1, "min_updates": 1})
        with d:
            p = subprocess.run([sys.executable, EXAMPLE, "--server", d.address, "--ca",
                                d.tls["ca"], "--name", "m", "--token", d.tokens["m"],
                                "--model", "mlp", "--clients", "2", "--timeout", "30"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               timeout=120)
        self.assertEqual(p.returncode, 1, p.stdout + p.stderr)
        self.assertIn("the server's model has tensors ['fc.weight', 'fc.bias']", p.stderr)


@unittest.skipUnless(HAVE_TORCH, SKIP_REASON)
class TorchInteropTest(unittest.TestCase):
    def test_cpu_torch_tensors_are_shared_not_copied(self):
        import torch
        p = torch.nn.Parameter(torch.arange(6, dtype=torch.float32).reshape(2, 3))
        a = fedclient._as_array(p)  # requires_grad: detached, same memory
        self.assertEqual(a.ctypes.data, p.data_ptr())
        self.assertEqual(a.dtype, np.float32)
        t = torch.zeros(4, dtype=torch.float64)
        self.assertEqual(fedclient._as_array(t).ctypes.data, t.data_ptr())


class TorchExampleDataTest(unittest.TestCase):
    """The parts of the example that need no torch: data loading and the split."""

    def test_digits_load_with_the_documented_shape_and_ranges(self):
        X, y = torch_digits.load_digits(torch_digits.DEFAULT_DATA)
        self.assertEqual(X.shape, (1797, 64))
        self.assertEqual(np.bincount(y).tolist(),
                         [178, 182, 177, 183, 181, 182, 181, 179, 174, 180])
        self.assertEqual((X.min(), X.max()), (0.0, 1.0))

    def test_malformed_row_names_file_line_and_field(self):
        path = os.path.join(harness.tmpdir("digits"), "bad.csv")
        with open(path, "w") as f:
            f.write(",".join(["0"] * 64 + ["3"]) + "\n")
            f.write(",".join(["0"] * 64 + ["10"]) + "\n")
        with self.assertRaises(ValueError) as cm:
            torch_digits.load_digits(path)
        self.assertIn("bad.csv:2: field 65 (label) is '10', expected an integer 0..9",
                      str(cm.exception))

    def test_split_is_a_seeded_partition_with_a_minimum_shard(self):
        _, y = torch_digits.load_digits(torch_digits.DEFAULT_DATA)
        a = torch_digits.dirichlet_split(y, 10, 0.1, 7)
        b = torch_digits.dirichlet_split(y, 10, 0.1, 7)
        self.assertTrue(all(np.array_equal(p, q) for p, q in zip(a, b)))
        allidx = np.concatenate(a)
        self.assertEqual(sorted(allidx.tolist()), list(range(len(y))))
        self.assertGreaterEqual(min(len(s) for s in a), 10)


if __name__ == "__main__":
    unittest.main()
