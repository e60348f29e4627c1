"""The binding against a real fedcoord daemon over TLS: federated rounds whose result is read
back from the daemon's SQLite store, zero-copy task views, the task fields, FedProx, and the
errors a server or a bad setup produces.

Expected aggregates are computed here from the definition of fedavg (docs/aggregators.md:
D = sum n_i delta_i / sum n_i; the sgd optimizer with its default lr 1 applies w += D), with
deltas that are multiples of 1/4 so every value is exact in float32.
"""

import ctypes
import gc
import json
import threading
import time
import unittest
import weakref

import numpy as np

import harness
import fedclient
from fedclient import _native

W0 = np.arange(6, dtype=np.float32).reshape(2, 3) * 0.5
B0 = np.array([1.0, 2.0, 3.0], dtype=np.float32)
INITIAL = [("w", W0), ("b", B0)]

# Per round and client: (delta of w, delta of b). Client a trains on 1 example, b on 3.
DELTAS = {
    1: {"a": (np.array([[1, 0, -1], [2, 0.5, 0.25]]), np.array([4, -4, 0])),
        "b": (np.array([[0.5, 0.5, 0.5], [-1, 0, 1]]), np.array([0, 0.25, -0.75]))},
    2: {"a": (np.array([[-2, 1, 0], [0, 0, 8]]), np.array([1, 1, 1])),
        "b": (np.array([[0.25, -0.25, 0], [1, 1, -1]]), np.array([2, 0, -2]))},
}
EXAMPLES = {"a": 1, "b": 3}


def fedavg_step(w, b, rnd):
    """w, b after round rnd: w + sum n_i dw_i / sum n_i, in float64 (exact here)."""
    total = sum(EXAMPLES.values())
    dw = sum(EXAMPLES[c] * DELTAS[rnd][c][0] for c in EXAMPLES) / total
    db = sum(EXAMPLES[c] * DELTAS[rnd][c][1] for c in EXAMPLES) / total
    return w.astype(np.float64) + dw, b.astype(np.float64) + db


def one_client_daemon(name, **round_keys):
    keys = {"min_clients": 1, "clients_per_round": 1, "min_updates": 1, "max_rounds": 1}
    keys.update(round_keys)
    return harness.Daemon(name, INITIAL, ["solo"], round=keys)


class FederationTest(unittest.TestCase):
    def test_two_clients_two_fedavg_rounds_commit_the_weighted_mean(self):
        d = harness.Daemon("fedavg", INITIAL, ["a", "b"],
                           round={"min_clients": 2, "clients_per_round": 2, "min_updates": 2,
                                  "max_rounds": 2})
        expected = {1: (W0, B0)}
        expected[2] = fedavg_step(*expected[1], 1)
        expected[3] = fedavg_step(*expected[2], 2)

        def participant(name):
            def loop(client):
                seen = []
                for task in client.tasks(timeout=30):
                    self.assertEqual(task.kind, fedclient.TaskKind.TRAIN)
                    got = task.tensor_dict()
                    seen.append((task.round, task.model_version, got["w"].copy(),
                                 got["b"].copy()))
                    dw, db = DELTAS[task.round][name]
                    if name == "a":  # a sends the delta itself, as float64 lists/arrays
                        client.submit(task, delta=[dw, db.tolist()],
                                      num_examples=EXAMPLES[name],
                                      metrics={"train_loss": 0.5 * task.round})
                    else:  # b sends trained weights; the SDK uploads w_i - w_t
                        weights = {"b": (got["b"] + db).astype(np.float32),
                                   "w": (got["w"] + dw).astype(np.float32)}
                        client.submit(task, weights=weights, num_examples=EXAMPLES[name],
                                      metrics=[("train_loss", 1.5 * task.round)])
                return seen, client.done_reason
            return loop

        with d:
            threads = [harness.ClientThread(d, n, participant(n)) for n in ("a", "b")]
            for t in threads:
                t.start()
            results = harness.join_all(threads, timeout=90)
        for seen, done in results:
            self.assertEqual([(r, v) for r, v, _, _ in seen], [(1, 1), (2, 2)])
            for rnd, version, w, b in seen:
                np.testing.assert_array_equal(w, expected[version][0])
                np.testing.assert_array_equal(b, expected[version][1])
            self.assertIn("training complete", done)
        version, model = d.model()
        self.assertEqual(version, 3)
        self.assertEqual([n for n, _ in model], ["w", "b"])
        np.testing.assert_array_equal(model[0][1], expected[3][0].astype(np.float32))
        np.testing.assert_array_equal(model[1][1], expected[3][1].astype(np.float32))
        self.assertEqual(d.query("SELECT id, state FROM rounds ORDER BY id"),
                         [(1, "COMMITTED"), (2, "COMMITTED")])
        parts = d.query("SELECT round_id, client, outcome, num_examples, metrics_json "
                        "FROM participants ORDER BY round_id, client")
        self.assertEqual([p[:4] for p in parts],
                         [(1, "a", "accepted", 1), (1, "b", "accepted", 3),
                          (2, "a", "accepted", 1), (2, "b", "accepted", 3)])
        self.assertIn('"train_loss":1.0', parts[2][4].replace(" ", ""))
        self.assertIn('"train_loss":3.0', parts[3][4].replace(" ", ""))


    def test_a_daemon_without_a_model_trains_the_one_a_client_proposes(self):
        d = harness.Daemon("propose", None, ["a", "b"],
                           round={"min_clients": 2, "clients_per_round": 2, "min_updates": 2,
                                  "max_rounds": 1})

        def participant(name):
            def loop(client):
                if name == "a":
                    with self.assertRaises(fedclient.FedclientError) as cm:
                        client.set_initial_model([("w", W0), ("w", B0)])
                    self.assertEqual(cm.exception.name, "ERR_EXISTS")
                    self.assertIn("'w'", cm.exception.detail)
                    with self.assertRaises(TypeError):
                        client.set_initial_model({"w": W0 + 1j})
                    client.set_initial_model({"w": W0, "b": B0})
                else:  # same values, given as pairs with a Fortran-ordered array
                    client.set_initial_model([("w", np.asfortranarray(W0)), ("b", B0)])
                seen = []
                for task in client.tasks(timeout=30):
                    seen.append((task.round, task.tensor_dict()["w"].copy(),
                                 task.tensor_dict()["b"].copy()))
                    dw, db = DELTAS[1][name]
                    client.submit(task, delta=[dw, db], num_examples=EXAMPLES[name])
                return seen
            return loop

        with d:
            threads = [harness.ClientThread(d, n, participant(n)) for n in ("a", "b")]
            for t in threads:
                t.start()
            results = harness.join_all(threads, timeout=90)
        for seen in results:
            self.assertEqual(len(seen), 1)
            np.testing.assert_array_equal(seen[0][1], W0)
            np.testing.assert_array_equal(seen[0][2], B0)
        w1, b1 = fedavg_step(W0, B0, 1)
        _, model = d.model()
        np.testing.assert_array_equal(model[0][1], w1.astype(np.float32))
        np.testing.assert_array_equal(model[1][1], b1.astype(np.float32))


    def test_evaluation_rounds_commit_example_weighted_metrics(self):
        # eval_every = 1 and max_rounds = 1: evaluate v1, train to v2, evaluate v2, stop.
        d = harness.Daemon("eval", INITIAL, ["a", "b"],
                           round={"min_clients": 2, "clients_per_round": 2, "min_updates": 2,
                                  "max_rounds": 1, "eval_every": 1})
        accuracy = {"a": 0.5, "b": 0.75}  # with 1 and 3 examples: weighted mean 0.6875

        def participant(name):
            def loop(client):
                kinds = []
                for task in client.tasks(timeout=30):
                    kinds.append((task.round, task.kind.name, task.model_version))
                    if task.kind == fedclient.TaskKind.EVALUATE:
                        client.report_eval(task, EXAMPLES[name],
                                           {"accuracy": accuracy[name] / task.model_version})
                    else:
                        client.submit(task, delta=DELTAS[1][name], num_examples=EXAMPLES[name])
                return kinds
            return loop

        with d:
            threads = [harness.ClientThread(d, n, participant(n)) for n in ("a", "b")]
            for t in threads:
                t.start()
            results = harness.join_all(threads, timeout=90)
        for kinds in results:
            self.assertEqual(kinds, [(1, "EVALUATE", 1), (2, "TRAIN", 1), (3, "EVALUATE", 2)])
        rows = d.query("SELECT id, state, metrics_json FROM rounds WHERE id IN (1, 3) "
                       "ORDER BY id")
        self.assertEqual([(r[0], r[1]) for r in rows], [(1, "COMMITTED"), (3, "COMMITTED")])
        self.assertEqual(json.loads(rows[0][2]), {"accuracy": 0.6875})
        self.assertEqual(json.loads(rows[1][2]), {"accuracy": 0.6875 / 2})
        parts = d.query("SELECT client, num_examples, metrics_json FROM participants "
                        "WHERE round_id = 1 ORDER BY client")
        self.assertEqual([(c, n, json.loads(m)) for c, n, m in parts],
                         [("a", 1, {"accuracy": 0.5}), ("b", 3, {"accuracy": 0.75})])


class TaskTest(unittest.TestCase):
    def test_task_arrays_are_read_only_views_of_the_sdk_buffer(self):
        with one_client_daemon("views", mu=0.25) as d, d.client("solo") as c:
            task = c.next_task(timeout=30)
            lib = _native.load()
            info = _native.TensorInfo()
            arrays = task.tensors
            for i, (name, arr) in enumerate(arrays):
                self.assertEqual(lib.fc_task_tensor(task._memory.ptr, i, ctypes.byref(info)), 0)
                self.assertEqual(info.name.decode(), name)
                self.assertEqual(arr.ctypes.data, info.data, name)  # the SDK's own bytes
                self.assertEqual(arr.nbytes, info.nbytes)
                self.assertFalse(arr.flags.writeable)
                self.assertFalse(arr.flags.owndata)
                with self.assertRaises(ValueError):
                    arr.flags.writeable = True
                with self.assertRaises(ValueError):
                    arr[...] = 0
            self.assertTrue(np.shares_memory(task["w"], arrays[0].array))
            np.testing.assert_array_equal(task["w"], W0)
            np.testing.assert_array_equal(task[1], B0)
            self.assertEqual(task.names, ["w", "b"])
            self.assertEqual(task.dtype("b"), fedclient.DType.F32)

            # Lifetime: closing the Task keeps the memory while a view exists.
            view = task["w"]
            memory = weakref.ref(task._memory)
            c.submit(task, weights=[W0 + 1, B0], num_examples=2)
            task.close()
            self.assertTrue(task.closed)
            with self.assertRaises(ValueError):
                task.round
            gc.collect()
            self.assertIsNotNone(memory(), "freed while a view still uses it")
            np.testing.assert_array_equal(view, W0)
            del view, arrays, arr
            gc.collect()
            self.assertIsNone(memory(), "the SDK task outlived its last view")
            self.assertIsNone(c.next_task(timeout=30))  # Bye after the commit (max_rounds 1)
        np.testing.assert_array_equal(d.model()[1][0][1], W0 + 1)

    def test_submit_reads_matching_arrays_in_place_and_converts_others_once(self):
        with one_client_daemon("submit-copies") as d, d.client("solo") as c:
            with c.next_task(timeout=30) as task:
                w = np.ascontiguousarray(W0 + 0.25)                # f32, C order: shared
                b = np.array([[9, 1.25], [9, 2.25], [9, 3.25]])[:, 1]  # f64 and strided
                arrays, ptrs = fedclient._submit_arrays(task, {"w": w, "b": b}, "test")
                self.assertEqual(ptrs[0], w.ctypes.data)
                self.assertIs(arrays[0], w)
                self.assertNotEqual(ptrs[1], b.ctypes.data)
                self.assertEqual(arrays[1].dtype, np.dtype("<f4"))
                self.assertTrue(arrays[1].flags.c_contiguous)
                self.assertEqual(ptrs[1], arrays[1].ctypes.data)
                # Fortran-ordered f32 has the right dtype but not the layout: converted.
                wf = np.asfortranarray(W0)
                arrays, ptrs = fedclient._submit_arrays(task, [wf, B0], "test")
                self.assertNotEqual(ptrs[0], wf.ctypes.data)
                np.testing.assert_array_equal(arrays[0], W0)
                self.assertEqual(ptrs[1], B0.ctypes.data)

                with self.assertRaisesRegex(ValueError, r"tensor 'w' has shape \[3, 2\], "
                                                        r"the task's model has \[2, 3\]"):
                    c.submit(task, weights=[W0.T, B0], num_examples=1)
                with self.assertRaisesRegex(ValueError, "missing b unknown c"):
                    c.submit(task, weights={"w": W0, "c": B0}, num_examples=1)
                with self.assertRaisesRegex(ValueError, "1 arrays given, the task's model "
                                                        "has 2 tensors"):
                    c.submit(task, weights=[W0], num_examples=1)
                with self.assertRaisesRegex(TypeError, "tensor 'w' is complex64"):
                    c.submit(task, weights=[W0 + 0j, B0], num_examples=1)
                with self.assertRaisesRegex(TypeError, "exactly one of weights= or delta="):
                    c.submit(task, weights=[W0, B0], delta=[W0, B0], num_examples=1)
                with self.assertRaises(ValueError):
                    c.submit(task, weights=[W0, B0], num_examples=-1)
                c.submit(task, weights={"w": w, "b": b}, num_examples=5)
            # max_rounds = 1: the Bye comes after the commit, so the store has the model.
            self.assertIsNone(c.next_task(timeout=30))
        np.testing.assert_array_equal(d.model()[1][0][1], W0 + 0.25)
        np.testing.assert_array_equal(d.model()[1][1][1], B0 + 0.25)

    def test_task_fields_config_and_fedprox(self):
        with one_client_daemon("fields", mu=0.25) as d, d.client("solo") as c:
            before = int(time.time() * 1000)
            with c.next_task(timeout=30) as task:
                self.assertEqual((task.round, task.kind, task.model_version),
                                 (1, fedclient.TaskKind.TRAIN, 1))
                # [round] round_timeout = 60s in the harness
                self.assertGreater(task.deadline_ms, before + 50_000)
                self.assertLess(task.deadline_ms, before + 70_000)
                self.assertEqual(task.config("mu"), "0.25")
                self.assertEqual(task.config_float("mu"), 0.25)
                self.assertEqual(task.mu(), 0.25)
                self.assertIsNone(task.config("lr"))
                self.assertEqual(task.lr(0.125), 0.125)
                self.assertEqual(task.epochs(3), 3)
                self.assertEqual(task.config_float("lr", 0.5), 0.5)
                with self.assertRaises(KeyError):
                    task.config_float("lr")
                with self.assertRaises(fedclient.FedclientError) as cm:
                    task.config_int("mu")
                self.assertEqual(cm.exception.name, "ERR_FORMAT")
                self.assertIn("'mu' = '0.25'", cm.exception.detail)

                # grad += mu (w - w_t): with w = w_t + 2, mu 0.25 adds 0.5 everywhere.
                g = np.ones((2, 3), dtype=np.float32)
                out = task.prox_add("w", g, W0 + 2)
                self.assertIs(out, g)
                np.testing.assert_array_equal(g, np.full((2, 3), 1.5, dtype=np.float32))
                gb = np.zeros(3, dtype=np.float32)
                task.prox_add(1, gb, B0 - 4, mu=0.5)  # explicit mu, by index
                np.testing.assert_array_equal(gb, np.full(3, -2.0, dtype=np.float32))
                with self.assertRaises(TypeError):
                    task.prox_add("w", np.zeros((2, 3)), W0)  # f64 grad cannot be updated
                with self.assertRaises(KeyError):
                    task.prox_add("nope", g, W0)
                with self.assertRaises(fedclient.FedclientError) as cm:
                    task.prox_add("w", g, W0, mu=-1.0)
                self.assertEqual(cm.exception.status, fedclient.Status.ERR_INVALID)
                self.assertIn("<fedclient.Task round=1 kind=train", repr(task))


class ErrorTest(unittest.TestCase):
    def test_server_rejection_raises_with_status_name_and_server_detail(self):
        with one_client_daemon("reject") as d, d.client("solo") as c:
            with c.next_task(timeout=30) as task:
                # Checked by the SDK before anything is sent:
                with self.assertRaises(fedclient.FedclientError) as cm:
                    c.submit(task, delta=[W0, B0], num_examples=0)
                self.assertEqual(cm.exception.name, "ERR_INVALID")
                self.assertIn("num_examples", cm.exception.detail)
                with self.assertRaises(fedclient.FedclientError) as cm:
                    c.submit(task, delta=[W0, B0], num_examples=1,
                             metrics={"train_loss": float("inf")})
                self.assertEqual(cm.exception.name, "ERR_INVALID")
                self.assertIn("train_loss", cm.exception.detail)
                bad = W0.copy()
                bad[1, 2] = np.nan
                with self.assertRaises(fedclient.FedclientError) as cm:
                    c.submit(task, delta=[bad, B0], num_examples=1)
                e = cm.exception
                self.assertEqual(e.status, fedclient.Status.ERR_NON_FINITE)
                self.assertEqual(e.name, "ERR_NON_FINITE")
                self.assertIn("tensor 'w'", e.detail)
                self.assertEqual(c.last_status, fedclient.Status.ERR_NON_FINITE)
                self.assertEqual(c.error, e.detail)
                with self.assertRaises(fedclient.FedclientError) as cm:
                    c.report_eval(task, 10, {"accuracy": 0.5})
                self.assertEqual(cm.exception.name, "ERR_INVALID")
                self.assertIn("train task", cm.exception.detail)
        outcome = d.query("SELECT outcome FROM participants WHERE round_id = 1")
        self.assertEqual(outcome, [("rejected",)])

    def test_no_task_in_time_raises_timeout_and_the_session_stays_up(self):
        d = harness.Daemon("timeout", INITIAL, ["a", "b"],
                           round={"min_clients": 2, "clients_per_round": 2, "min_updates": 2})
        with d, d.client("a") as c:  # alone: no round can start
            t0 = time.monotonic()
            with self.assertRaises(fedclient.FedclientTimeout) as cm:
                c.next_task(timeout=0.3)
            self.assertGreaterEqual(time.monotonic() - t0, 0.25)
            self.assertIsInstance(cm.exception, TimeoutError)
            self.assertEqual(cm.exception.name, "ERR_TIMEOUT")
            # One client, one thread at a time: a second thread is refused, not interleaved.
            errors = []
            waiter = threading.Thread(target=lambda: self._swallow_timeout(c, errors))
            waiter.start()
            deadline = time.monotonic() + 10
            while not c._lock.locked() and time.monotonic() < deadline:  # waiter is inside
                time.sleep(0.01)
            with self.assertRaisesRegex(RuntimeError, "in use by another thread"):
                c.next_task(timeout=0.1)
            waiter.join(10)
            self.assertEqual(errors, ["timeout"])
            with self.assertRaises(fedclient.FedclientTimeout):  # still connected
                c.next_task(timeout=0.2)
            with self.assertRaises(ValueError):
                c.next_task(timeout=0)
        c.close()  # idempotent
        self.assertTrue(c.closed)
        with self.assertRaisesRegex(ValueError, "closed"):
            c.next_task(timeout=1)

    def test_mutual_tls_client_is_named_by_its_certificate(self):
        d = harness.Daemon("mtls", INITIAL, [], client_auth="require",
                           round={"min_clients": 1, "clients_per_round": 1, "min_updates": 1,
                                  "max_rounds": 1})
        cert, key = harness.make_client_cert(d.folder, d.tls, "site-cert")
        with d:
            with fedclient.Client(d.address, d.tls["ca"], cert_file=cert, key_file=key,
                                  reconnect_max_attempts=-1) as c:
                with c.next_task(timeout=30) as task:
                    c.submit(task, delta=DELTAS[1]["a"], num_examples=2)
                self.assertIsNone(c.next_task(timeout=30))
            with self.assertRaises(fedclient.FedclientError) as cm:  # no certificate
                fedclient.Client(d.address, d.tls["ca"], client_name="x", token="A" * 43,
                                 reconnect_max_attempts=-1)
            self.assertEqual(cm.exception.name, "ERR_TLS")
            self.assertIn("certificate required", cm.exception.detail)
        self.assertEqual(d.query("SELECT client, outcome, num_examples FROM participants"),
                         [("site-cert", "accepted", 2)])

    @staticmethod
    def _swallow_timeout(client, errors):
        try:
            client.next_task(timeout=1.0)
        except fedclient.FedclientTimeout:
            errors.append("timeout")

    def test_tls_and_authentication_failures(self):
        other = harness.make_tls(harness.tmpdir("other-ca"), cn="another CA")
        with one_client_daemon("auth") as d:
            quick = dict(reconnect_max_attempts=-1, connect_timeout_ms=5000)
            with self.assertRaises(fedclient.FedclientError) as cm:
                fedclient.Client(d.address, other["ca"], client_name="solo",
                                 token=d.tokens["solo"], **quick)
            self.assertEqual(cm.exception.name, "ERR_TLS")
            self.assertIn("certificate", cm.exception.detail)
            with self.assertRaises(fedclient.FedclientError) as cm:
                d.client("solo", server_name="other.example", **quick)
            self.assertEqual(cm.exception.name, "ERR_TLS")
            with self.assertRaises(fedclient.FedclientError) as cm:
                d.client("solo", token="A" * 43, **quick)
            self.assertEqual(cm.exception.name, "ERR_AUTH")
            with d.client("solo", server_name="localhost", **quick) as c:
                self.assertFalse(c.closed)


if __name__ == "__main__":
    unittest.main()
