#!/usr/bin/python3
"""numpy baseline for tests/bench/bench_robust.c: the same robust rules on the same data.

Usage: robust_numpy.py DATA.f32 N D
DATA.f32 holds N rows of D little-endian float32 values. For each rule this prints
"numpy <rule> <seconds>" (computation only; loading the file is not timed) and writes the
result as D float64 values to DATA.f32.<rule>.out so that the C bench can compare.

The implementations are the straightforward numpy ones (float64 where the C code uses double):
median via np.median, trimmed mean via np.partition as scipy.stats.trim_mean does, Krum with a
pairwise-distance loop over explicit differences, Bulyan with the same distances, iterative
selection and a stable argsort for the coordinate phase (in column chunks to bound memory),
geomed as RFA's smoothed Weiszfeld.
"""
import math
import sys
import time

import numpy as np


def pairwise(X):
    n = X.shape[0]
    Dm = np.zeros((n, n))
    for i in range(n - 1):
        diff = X[i + 1:] - X[i].astype(np.float64)
        Dm[i, i + 1:] = np.einsum("ij,ij->i", diff, diff)
    return Dm + Dm.T


def krum_scores(Dm, k):
    n = Dm.shape[0]
    s = np.sort(Dm + np.diag(np.full(n, np.inf)), axis=1)
    return s[:, :k].sum(axis=1)


def median(X):
    return np.median(X, axis=0).astype(np.float64)


def trimmed_mean(X, beta=0.2):
    n = X.shape[0]
    k = math.floor(beta * n + 1e-9)
    P = np.partition(X, (k, n - k - 1), axis=0)
    return P[k:n - k].mean(axis=0, dtype=np.float64)


def krum(X, f=10):
    n = X.shape[0]
    sc = krum_scores(pairwise(X), n - f - 2)
    return X[int(np.argmin(sc))].astype(np.float64)


def bulyan(X, f=10):
    n = X.shape[0]
    theta, beta = n - 2 * f, n - 4 * f
    Dm = pairwise(X)
    cand, sel = list(range(n)), []
    for _ in range(theta):
        nc = len(cand)
        k = min(max(1, nc - f - 2), nc - 1)
        sc = krum_scores(Dm[np.ix_(cand, cand)], k)
        sel.append(cand.pop(int(np.argmin(sc))))
    out = np.empty(X.shape[1])
    step = 65536
    for j0 in range(0, X.shape[1], step):
        S = X[sel, j0:j0 + step].astype(np.float64)
        Ss = np.sort(S, axis=0)
        med = Ss[theta // 2] if theta % 2 else 0.5 * (Ss[theta // 2 - 1] + Ss[theta // 2])
        idx = np.argsort(np.abs(S - med), axis=0, kind="stable")[:beta]
        out[j0:j0 + step] = np.take_along_axis(S, idx, axis=0).mean(axis=0)
    return out


def geomed(X, nu=1e-5, max_iter=4, ftol=1e-6):
    n = X.shape[0]
    alpha = np.full(n, 1.0 / n)
    z = np.average(X, axis=0, weights=alpha)

    def obj_of(z):
        dist = np.linalg.norm(X - z, axis=1)
        return float(alpha @ dist), dist

    obj, dist = obj_of(z)
    for _ in range(max_iter):
        prev = obj
        w = alpha / np.maximum(nu, dist)
        w = w / w.sum()
        z = np.average(X, axis=0, weights=w)
        obj, dist = obj_of(z)
        if abs(prev - obj) < ftol * obj:
            break
    return z


def main():
    path, n, d = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    X = np.fromfile(path, dtype="<f4").reshape(n, d)
    for name, fn in (("median", median), ("trimmed_mean", trimmed_mean), ("krum", krum),
                     ("bulyan", bulyan), ("geomed", geomed)):
        t0 = time.perf_counter()
        out = fn(X)
        t = time.perf_counter() - t0
        out.astype("<f8").tofile("%s.%s.out" % (path, name))
        print("numpy %s %.6f" % (name, t), flush=True)


if __name__ == "__main__":
    main()
