#!/usr/bin/env python3
"""Expected values for tests/unit/test_agg_*.c, computed from the definitions in
docs/aggregators.md (the design's aggregators.md) with the Python standard library only.
This is an independent implementation: it shares no code with the C rules.
Run: python3 tests/agg_expected.py
"""
import math


def fedopt(kind, D_seq, w0, lr, b1=0.9, b2=0.99, tau=1e-3):
    m = [0.0] * len(w0)
    v = [tau * tau] * len(w0)
    w = list(w0)
    out = []
    for D in D_seq:
        for i, d in enumerate(D):
            if kind == "adagrad":
                m[i] = d
                v[i] = v[i] + d * d
            else:
                m[i] = b1 * m[i] + (1 - b1) * d
                if kind == "adam":
                    v[i] = b2 * v[i] + (1 - b2) * d * d
                else:
                    s = v[i] - d * d
                    sign = (s > 0) - (s < 0)
                    v[i] = v[i] - (1 - b2) * d * d * sign
            w[i] = w[i] + lr * m[i] / (math.sqrt(v[i]) + tau)
        out.append(list(w))
    return out


def clip(x, tau):
    n = math.sqrt(sum(t * t for t in x))
    return [t * min(1.0, tau / n) for t in x] if n > tau else list(x)


def centered_clip(deltas, v, tau, iters):
    for _ in range(iters):
        s = [0.0] * len(v)
        for d in deltas:
            c = clip([a - b for a, b in zip(d, v)], tau)
            s = [a + b for a, b in zip(s, c)]
        v = [a + b / len(deltas) for a, b in zip(v, s)]
    return v


if __name__ == "__main__":
    D_seq = [[1.0, -2.0], [0.5, 0.25], [-3.0, 0.0]]
    w0 = [1.0, -1.0]
    print("adam   ", fedopt("adam", D_seq, w0, 0.1))
    print("yogi   ", fedopt("yogi", D_seq, w0, 0.01))
    print("adagrad", fedopt("adagrad", D_seq, w0, 0.1))
    print("cc iters=2", centered_clip([[3.0, 4.0], [0.5, 0.0]], [0.0, 0.0], 1.0, 2))
