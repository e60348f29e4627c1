#!/usr/bin/env python3
"""Expected values for tests/unit/test_agg_robust.c, computed straight from the definitions in
design/aggregators.md with the Python standard library (float = IEEE double). Run it to print
the numbers the C tests hard-code; it shares no code with the C implementation.
"""
import math


def sqdist(a, b):
    return sum((x - y) ** 2 for x, y in zip(a, b))


def krum_scores(points, cand, k):
    scores = []
    for i in cand:
        ds = sorted(sqdist(points[i], points[j]) for j in cand if j != i)
        scores.append(sum(ds[:k]))
    return scores


def bulyan(points, f):
    n = len(points)
    theta, beta = n - 2 * f, n - 4 * f
    cand = list(range(n))
    sel = []
    first = None
    for _ in range(theta):
        k = min(max(1, len(cand) - f - 2), len(cand) - 1)
        sc = krum_scores(points, cand, k)
        if first is None:
            first = sc
        best = min(range(len(cand)), key=lambda t: (sc[t], cand[t]))
        sel.append(cand.pop(best))
    out = []
    for j in range(len(points[0])):
        col = [points[i][j] for i in sel]
        s = sorted(col)
        med = s[theta // 2] if theta % 2 else 0.5 * (s[theta // 2 - 1] + s[theta // 2])
        keyed = sorted(range(theta), key=lambda p: (abs(col[p] - med), p))[:beta]
        out.append(sum(col[p] for p in keyed) / beta)
    return sel, first, out


def geomed(points, alpha, nu=1e-5, max_iter=4, ftol=1e-6):
    tot = sum(alpha)
    alpha = [a / tot for a in alpha]
    d = len(points[0])

    def wmean(w):
        ws = sum(w)
        return [sum(w[i] * points[i][j] for i in range(len(points))) / ws for j in range(d)]

    def obj_of(z):
        dist = [math.sqrt(sqdist(z, p)) for p in points]
        return sum(a * x for a, x in zip(alpha, dist)), dist

    z = wmean(alpha)
    obj, dist = obj_of(z)
    beta = alpha
    it = 0
    while it < max_iter:
        prev = obj
        beta = [a / max(nu, x) for a, x in zip(alpha, dist)]
        bs = sum(beta)
        beta = [b / bs for b in beta]
        z = wmean(beta)
        obj, dist = obj_of(z)
        it += 1
        if abs(prev - obj) < ftol * obj:
            break
    return z, it, beta


def ida(points, eps=1e-12):
    n, d = len(points), len(points[0])
    mean = [sum(p[j] for p in points) / n for j in range(d)]
    inv = [1.0 / max(eps, math.sqrt(sqdist(p, mean))) for p in points]
    s = sum(inv)
    alpha = [v / s for v in inv]
    return [sum(alpha[i] * points[i][j] for i in range(n)) for j in range(d)], alpha


def main():
    print("# krum, 1-D points 0 1 2 3 100, f=1")
    pts = [[0.0], [1.0], [2.0], [3.0], [100.0]]
    print("scores", krum_scores(pts, range(5), 5 - 1 - 2))

    print("# bulyan, reference example x10: 0 1 2 3 4 50 90, f=1")
    pts = [[v] for v in (0.0, 1.0, 2.0, 3.0, 4.0, 50.0, 90.0)]
    print("sel/first/out", bulyan(pts, 1))

    print("# bulyan 2-D, f=1, n=7")
    pts = [[0.0, 3.0], [1.0, -1.0], [2.0, 0.0], [3.0, 1.0], [4.0, 0.0], [50.0, 8.0],
           [90.0, -6.0]]
    print("sel/first/out", bulyan(pts, 1))

    print("# bulyan f=0 on 0 1 2 3 (theta = beta = n)")
    print("sel/first/out", bulyan([[0.0], [1.0], [2.0], [3.0]], 0))

    print("# geomed, d=2, weights 1 2 3 4 (examples) and uniform")
    pts = [[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [10.0, 10.0]]
    for w in ([1.0, 2.0, 3.0, 4.0], [1.0, 1.0, 1.0, 1.0]):
        z, it, beta = geomed(pts, w)
        print("z %r it %d beta %r" % (z, it, beta))
    z, it, beta = geomed(pts, [1.0, 1.0, 1.0, 1.0], max_iter=100, ftol=1e-3)
    print("ftol 1e-3: z %r it %d" % (z, it))

    print("# ida, same points")
    z, alpha = ida(pts)
    print("z %r alpha %r" % (z, alpha))

    print("# trimmed mean pitfall: x_i = i^2, n=100, beta=0.29")
    k = math.floor(0.29 * 100 + 1e-9)
    vals = sorted(float(i * i) for i in range(100))
    print("k", k, "int(0.29*100)", int(0.29 * 100), "mean", sum(vals[k:100 - k]) / (100 - 2 * k))


if __name__ == "__main__":
    main()
