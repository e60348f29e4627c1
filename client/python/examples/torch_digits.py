#!/usr/bin/python3
"""torch_digits: a fedcoord client that trains a small PyTorch model on the UCI digits.

It owns one client's side of the demo federation in Python: it loads the digits
(client/examples/data/digits.csv.gz), takes its own shard of a seeded non-IID Dirichlet split
(every process computes the same split and keeps shard --index), and then runs the fedclient
task loop: propose its initial weights in case the server has no model yet, load each task's
model into torch, train a few epochs of mini-batch SGD (FedProx through Task.prox_add when the
server sends mu > 0), submit the weights, report evaluations.
It never writes anywhere except stdout/stderr and the --write-initial file.

Models (tensor names match the C example trainer's softmax model, so both can share a daemon):
  softmax  fc.weight [10,64], fc.bias [10]                         (zeros at start)
  mlp      fc1.weight [32,64], fc1.bias [32], fc2.weight [10,32], fc2.bias [10]  (seeded init)

    torch_digits.py --write-initial init.safetensors [--model mlp]
    FEDCOORD_TOKEN=... torch_digits.py --server 127.0.0.1:7443 --ca ca.pem --name site-1 \
        --index 0 --clients 10
"""

import argparse
import gzip
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.normpath(os.path.join(HERE, "..", "..", ".."))
sys.path.insert(0, os.path.join(REPO, "client", "python"))

import fedclient  # noqa: E402
from fedclient import safetensors  # noqa: E402

try:
    import torch  # noqa: E402
    from torch import nn  # noqa: E402
except ImportError:  # pragma: no cover - reported to the user below
    torch = None

DEFAULT_DATA = os.path.join(REPO, "client", "examples", "data", "digits.csv.gz")
MAX_ROWS = 100_000


def load_digits(path):
    """(X float32 [n,64] in [0,1], y int64 [n]). Every malformed row is an error naming the
    file, line and field."""
    opener = gzip.open if path.endswith(".gz") else open
    xs, ys = [], []
    with opener(path, "rt", encoding="ascii") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            if len(xs) >= MAX_ROWS:
                raise ValueError("%s: more than %d rows" % (path, MAX_ROWS))
            fields = line.split(",")
            if len(fields) != 65:
                raise ValueError("%s:%d: %d fields, expected 65 (64 pixels and a label)"
                                 % (path, lineno, len(fields)))
            row = []
            for k, text in enumerate(fields):
                limit = 9 if k == 64 else 16
                what = "label" if k == 64 else "pixel"
                try:
                    v = int(text)
                except ValueError:
                    v = -1
                if not 0 <= v <= limit:
                    raise ValueError("%s:%d: field %d (%s) is '%s', expected an integer 0..%d"
                                     % (path, lineno, k + 1, what, text, limit))
                row.append(v)
            xs.append(row[:64])
            ys.append(row[64])
    if not xs:
        raise ValueError("%s: no rows" % path)
    return np.array(xs, dtype=np.float32) / 16.0, np.array(ys, dtype=np.int64)


def dirichlet_split(y, clients, alpha, seed, min_size=10):
    """Per class, shuffle its examples and cut them among the clients in Dirichlet(alpha)
    proportions. Redraws up to 100 times until every client has min_size examples, then moves
    examples one by one from the largest shard. Returns a list of index arrays."""
    if clients * min_size > len(y):
        raise ValueError("%d clients need %d examples, the data has %d"
                         % (clients, clients * min_size, len(y)))
    rng = np.random.default_rng(seed)
    for _ in range(100):
        shards = [[] for _ in range(clients)]
        for c in np.unique(y):
            idx = rng.permutation(np.flatnonzero(y == c))
            p = rng.dirichlet(np.full(clients, alpha))
            cuts = np.round(np.cumsum(p)[:-1] * len(idx)).astype(int)
            for j, part in enumerate(np.split(idx, cuts)):
                shards[j].extend(part.tolist())
        if min(len(s) for s in shards) >= min_size:
            break
    for j in range(clients):
        while len(shards[j]) < min_size:
            big = max(range(clients), key=lambda k: len(shards[k]))
            shards[j].append(shards[big].pop())
    return [np.array(sorted(s), dtype=np.int64) for s in shards]


def local_split(idx, seed, index, test_fraction=0.2):
    """(train, test) index arrays: round(0.2 n) (at least 1) held out as the local test set."""
    rng = np.random.default_rng([seed, index, 1])
    idx = rng.permutation(idx)
    n_test = max(1, int(round(test_fraction * len(idx))))
    return idx[n_test:], idx[:n_test]


def build_model(kind, seed):
    class Softmax(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(64, 10)
            nn.init.zeros_(self.fc.weight)
            nn.init.zeros_(self.fc.bias)

        def forward(self, x):
            return self.fc(x)

    class MLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(64, 32), nn.Linear(32, 10)
            g = torch.Generator().manual_seed(seed)
            with torch.no_grad():
                for layer in (self.fc1, self.fc2):  # U(-1/sqrt(fan_in), 1/sqrt(fan_in))
                    bound = 1.0 / layer.in_features ** 0.5
                    layer.weight.uniform_(-bound, bound, generator=g)
                    layer.bias.uniform_(-bound, bound, generator=g)

        def forward(self, x):
            return self.fc2(torch.relu(self.fc1(x)))

    return Softmax() if kind == "softmax" else MLP()


def named_params(model):
    return [(n, p) for n, p in model.named_parameters()]


def load_task(model, task):
    """Copies the task's (read-only, shared) arrays into the model's parameters."""
    params = dict(named_params(model))
    if sorted(params) != sorted(task.names):
        raise ValueError("the server's model has tensors %s, this model has %s (--model?)"
                         % (task.names, sorted(params)))
    with torch.no_grad():
        for name, arr in task.tensors:
            p = params[name]
            if tuple(arr.shape) != tuple(p.shape):
                raise ValueError("tensor %s: server shape %s, model shape %s"
                                 % (name, list(arr.shape), list(p.shape)))
            p.copy_(torch.from_numpy(np.array(arr, dtype=np.float32)))


def evaluate(model, X, y):
    with torch.no_grad():
        logits = model(torch.from_numpy(X))
        loss = nn.functional.cross_entropy(logits, torch.from_numpy(y)).item()
        acc = (logits.argmax(1).numpy() == y).mean()
    return loss, float(acc)


def train(model, task, X, y, lr, epochs, batch, mu, rng):
    """Mini-batch SGD; FedProx adds mu (w - w_t) to every gradient through the SDK."""
    params = named_params(model)
    last = 0.0
    for _ in range(epochs):
        order = rng.permutation(len(y))
        total, batches = 0.0, 0
        for start in range(0, len(order), batch):
            sel = order[start:start + batch]
            xb, yb = torch.from_numpy(X[sel]), torch.from_numpy(y[sel])
            model.zero_grad()
            loss = nn.functional.cross_entropy(model(xb), yb)
            loss.backward()
            with torch.no_grad():
                for name, p in params:
                    if mu > 0:  # in place on the gradient's own memory (no copy)
                        task.prox_add(name, p.grad, p, mu)
                    p -= lr * p.grad
            total += loss.item()
            batches += 1
        last = total / batches
    return last


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--server", help="coordinator host:port")
    ap.add_argument("--ca", help="CA bundle (PEM) that issued the server certificate")
    ap.add_argument("--server-name", help="name to verify in the certificate (default: host)")
    ap.add_argument("--name", help="client name registered with `fedctl client add`")
    ap.add_argument("--token", help="client token (default: $FEDCOORD_TOKEN)")
    ap.add_argument("--index", type=int, default=0, help="this client's shard, 0..clients-1")
    ap.add_argument("--clients", type=int, default=10, help="number of shards")
    ap.add_argument("--alpha", type=float, default=0.5, help="Dirichlet concentration")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--data", default=DEFAULT_DATA)
    ap.add_argument("--model", choices=["softmax", "mlp"], default="softmax")
    ap.add_argument("--lr", type=float, default=0.5, help="SGD step unless the task sends lr")
    ap.add_argument("--epochs", type=int, default=5, help="local epochs unless the task says")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--timeout", type=float, default=600.0,
                    help="seconds to wait for a task before giving up")
    ap.add_argument("--write-initial", metavar="PATH",
                    help="write the model's initial weights as safetensors and exit")
    a = ap.parse_args(argv)
    if not a.write_initial:
        for opt in ("server", "ca", "name"):
            if getattr(a, opt) is None:
                ap.error("--%s is required (or use --write-initial)" % opt)
    if not 0 <= a.index < a.clients:
        ap.error("--index %d is not in 0..%d" % (a.index, a.clients - 1))
    if not a.alpha > 0:
        ap.error("--alpha must be > 0")
    return a


def main(argv=None):
    a = parse_args(argv)
    if torch is None:
        print("torch_digits: PyTorch is not installed for %s. On Debian 12: "
              "apt-get install python3-torch; elsewhere: pip install torch "
              "(see docs/python.md)" % sys.executable, file=sys.stderr)
        return 2
    torch.manual_seed(a.seed)
    model = build_model(a.model, a.seed)
    if a.write_initial:
        safetensors.save(a.write_initial,
                         [(n, p.detach().numpy()) for n, p in named_params(model)],
                         metadata={"model": a.model})
        print("wrote %s (%s)" % (a.write_initial, a.model))
        return 0
    try:
        X, y = load_digits(a.data)
        shard = dirichlet_split(y, a.clients, a.alpha, a.seed)[a.index]
    except (OSError, ValueError) as e:
        print("torch_digits: %s" % e, file=sys.stderr)
        return 2
    tr, te = local_split(shard, a.seed, a.index)
    token = a.token or os.environ.get("FEDCOORD_TOKEN")
    if not token:
        print("torch_digits: no token: pass --token or set FEDCOORD_TOKEN", file=sys.stderr)
        return 2
    print("client %s: shard %d of %d, %d train / %d test examples, labels %s"
          % (a.name, a.index, a.clients, len(tr), len(te),
             np.bincount(y[shard], minlength=10).tolist()), flush=True)
    rng = np.random.default_rng([a.seed, a.index, 2])
    try:
        with fedclient.Client(a.server, a.ca, server_name=a.server_name, client_name=a.name,
                              token=token) as client:
            # Proposed only if the daemon has no model yet ([round] initial_model unset).
            client.set_initial_model(model.state_dict())
            for task in client.tasks(timeout=a.timeout):
                load_task(model, task)
                loss, acc = evaluate(model, X[te], y[te])
                if task.kind == fedclient.TaskKind.EVALUATE:
                    try:
                        client.report_eval(task, len(te), {"loss": loss, "accuracy": acc})
                    except fedclient.FedclientError as e:
                        print("round %d: evaluation not reported: %s" % (task.round, e))
                    print("round %d: evaluate: accuracy %.4f loss %.4f"
                          % (task.round, acc, loss), flush=True)
                    continue
                t0 = time.monotonic()
                train_loss = train(model, task, X[tr], y[tr], task.lr(a.lr),
                                   task.epochs(a.epochs), a.batch, task.mu(0.0), rng)
                try:  # the state_dict's f32 tensors are read in place, not copied
                    client.submit(task, weights=model.state_dict(), num_examples=len(tr),
                                  metrics={"train_loss": train_loss})
                except fedclient.FedclientError as e:  # a rejected update is not fatal
                    print("round %d: update rejected: %s" % (task.round, e), flush=True)
                    if e.status == fedclient.Status.ERR_CLOSED:
                        raise
                    continue
                print("round %d: model v%d local test accuracy %.4f, train loss %.4f, "
                      "%.2fs" % (task.round, task.model_version, acc, train_loss,
                                 time.monotonic() - t0), flush=True)
            print("done: %s" % client.done_reason, flush=True)
    except (fedclient.FedclientError, ValueError, OSError) as e:  # ValueError: model mismatch
        print("torch_digits: %s" % e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
