#!/usr/bin/env python3
"""Independent reference for server/round.c selection (docs/rounds.md): splitmix64 seeding,
xoshiro256**, rejection-sampled bounded draws, Floyd's sampling. Prints the ids chosen for
round 1 with seed 42 from clients 1..20, choosing 4 (used by test_round.c)."""
M = (1 << 64) - 1

def splitmix(state):
    state = (state + 0x9E3779B97F4A7C15) & M
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M
    return state, z ^ (z >> 31)

def rotl(x, k):
    return ((x << k) | (x >> (64 - k))) & M

class Xoshiro:
    def __init__(self, seed, round_id):
        sm = seed ^ ((round_id * 0xD1B54A32D192ED03) & M)
        self.s = []
        for _ in range(4):
            sm, v = splitmix(sm)
            self.s.append(v)
    def next(self):
        s = self.s
        result = (rotl((s[1] * 5) & M, 7) * 9) & M
        t = (s[1] << 17) & M
        s[2] ^= s[0]; s[3] ^= s[1]; s[1] ^= s[2]; s[0] ^= s[3]; s[2] ^= t
        s[3] = rotl(s[3], 45)
        return result
    def below(self, n):
        threshold = (1 << 64) % n
        while True:
            x = self.next()
            if x >= threshold:
                return x % n

def select(seed, round_id, ids, k):
    ids = sorted(ids)
    p = Xoshiro(seed, round_id)
    n = len(ids)
    chosen = []
    for j in range(n - k, n):
        t = p.below(j + 1)
        chosen.append(j if t in chosen else t)
    return [ids[i] for i in sorted(chosen)]

if __name__ == "__main__":
    print(", ".join(str(x) for x in select(42, 1, range(1, 21), 4)))
