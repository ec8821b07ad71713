"""How often the host stalls this virtual machine's CPUs.

One process per core runs a fixed piece of pure-Python arithmetic (about
2 ms) over and over for `--seconds` and times each piece. On an idle machine
every piece takes about as long as the median; a piece that takes twice as
long or more lost its CPU for part of that time. On the 2-core VMs these
benchmarks run on, the host takes the cores away in bursts (every ~1.5 s for
100-300 ms, often both cores at once) without the guest's steal counter
showing it, and a frame in the gateway (or in the peer) during such a burst
runs 2-8x slower: the p99 points at half load are set by these bursts.
compare.sh runs this probe on the idle machine before and after its points so
that the table says how stormy the host was.

Usage: stall_probe.py [--seconds 10] [--procs N] [--out stalls.json]
Prints one line; writes the summary (and every slow piece) as JSON.
"""
import argparse
import json
import multiprocessing as mp
import os
import time

SLOW = 2.0  # a piece this many times the median or more counts as stalled
EPISODE_GAP = 0.1  # slow pieces closer than this (s) belong to one episode


def work(n):
    s = 0
    for i in range(n):
        s += i
    return s


def calibrate(target_s=0.002):
    n = 20000
    while True:
        # The fastest of three: a stall while calibrating would shrink the pieces.
        d = min(timed(n) for _ in range(3))
        if d >= target_s / 2:
            return max(1000, int(n * target_s / d))
        n *= 2


def timed(n):
    t = time.perf_counter()
    work(n)
    return time.perf_counter() - t


def probe(args):
    n, until = args
    out = []
    while True:
        t = time.perf_counter()
        work(n)
        d = time.perf_counter() - t
        now = time.monotonic()
        out.append((now, d))
        if now >= until:
            return out


def summarise(runs, seconds):
    pieces = [p for run in runs for p in run]
    ds = sorted(d for _, d in pieces)
    med = ds[len(ds) // 2]
    slow = sorted((t, d / med) for t, d in pieces if d >= SLOW * med)
    t0 = min(t for t, _ in pieces)
    episodes = []
    for t, r in slow:
        if episodes and t - episodes[-1]["last"] <= EPISODE_GAP:
            e = episodes[-1]
            e["last"] = t
            e["worst"] = max(e["worst"], r)
            e["pieces"] += 1
        else:
            episodes.append({"first": t, "last": t, "worst": r, "pieces": 1})
    starts = [e["first"] for e in episodes]
    gaps = sorted(b - a for a, b in zip(starts, starts[1:]))
    lost = sum(d - med for _, d in pieces if d >= SLOW * med)
    return {
        "seconds": seconds,
        "procs": len(runs),
        "pieces": len(pieces),
        "median_piece_ms": round(med * 1e3, 3),
        "slow_share_pct": round(100.0 * len(slow) / len(pieces), 2),
        # CPU time the slow pieces lost, as a share of the probe's CPU time.
        "lost_pct": round(100.0 * lost / (seconds * len(runs)), 2),
        "worst_ratio": round(max((r for _, r in slow), default=1.0), 1),
        "episodes": len(episodes),
        "median_gap_s": round(gaps[len(gaps) // 2], 2) if gaps else None,
        "episode_starts_s": [round(e["first"] - t0, 2) for e in episodes],
    }


def line(s):
    gap = f", about every {s['median_gap_s']} s" if s["median_gap_s"] else ""
    return (f"{s['slow_share_pct']} % of {s['median_piece_ms']} ms pieces took >= {SLOW:g}x the median "
            f"(worst {s['worst_ratio']}x, {s['lost_pct']} % of the time lost); "
            f"{s['episodes']} episodes in {s['seconds']} s{gap}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--procs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--out")
    a = ap.parse_args()
    n = calibrate()
    until = time.monotonic() + a.seconds
    with mp.Pool(a.procs) as pool:
        runs = pool.map(probe, [(n, until)] * a.procs)
    s = summarise(runs, a.seconds)
    if a.out:
        with open(a.out, "w") as f:
            json.dump(s, f, indent=1)
    print(line(s))


if __name__ == "__main__":
    main()
