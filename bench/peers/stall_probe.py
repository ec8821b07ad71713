"""How often this virtual machine's cores stall or slow down under it.

One process per core runs a fixed piece of pure-Python arithmetic (1-2 ms)
over and over for `--seconds` and times each piece. On an idle machine
every piece takes about as long as the median; a piece that takes twice as
long or more was held up. For each piece the probe also reads its own
`/proc/self/schedstat`: the time the guest kernel says the process ran and
the time it waited for a CPU. A slow piece that the guest says ran the whole
time (no wait) was slowed below the guest: the host took the core away or
ran it slower, and the guest's steal counter does not always show it. On
the 2-core VMs these benchmarks run on, such episodes come every ~1-1.5 s,
and a frame in the gateway (or in the peer) during one runs slower: the p99
points at half load meet them. compare.sh runs this probe on the idle
machine before and after its points so that the table says how stormy the
host was.

Usage: stall_probe.py [--seconds 10] [--procs N] [--out stalls.json]
Prints one line; writes the summary as JSON.
"""
import argparse
import json
import multiprocessing as mp
import os
import time

SLOW = 2.0  # a piece this many times the median or more counts as stalled
EPISODE_GAP = 0.1  # slow pieces closer than this (s) belong to one episode
WARMUP = 0.3  # seconds of pieces not counted (interpreter and caches warming up)


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


def schedstat():
    """(ns on a CPU, ns waiting for one) of this process, per the guest
    kernel; (0, 0) where /proc/self/schedstat is missing."""
    try:
        with open("/proc/self/schedstat") as f:
            ran, waited = f.read().split()[:2]
        return int(ran), int(waited)
    except (OSError, ValueError):
        return 0, 0


def probe(args):
    n, start, until = args
    out = []
    while True:
        r0, w0 = schedstat()
        t = time.perf_counter()
        work(n)
        d = time.perf_counter() - t
        r1, w1 = schedstat()
        now = time.monotonic()
        if now >= start:  # the first pieces warm up the interpreter
            out.append((now, d, (w1 - w0) * 1e-9))
        if now >= until:
            return out


def summarise(runs):
    pieces = [p for run in runs for p in run]
    ds = sorted(d for _, d, _ in pieces)
    med = ds[len(ds) // 2]
    slow = sorted((t, d / med) for t, d, _ in pieces if d >= SLOW * med)
    t0 = min(t for t, _, _ in pieces)
    # Each process measured from its first kept piece's start to its last.
    seconds = sum(run[-1][0] - run[0][0] + run[0][1] for run in runs if run) / max(1, len(runs))
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
    lost = sum(d - med for _, d, _ in pieces if d >= SLOW * med)
    # What the guest itself accounts for: time the slow pieces waited for
    # a CPU inside the guest (another guest process, or the probe's own
    # siblings). The rest of their lost time happened below the guest.
    guest_wait = sum(min(w, d - med) for _, d, w in pieces if d >= SLOW * med)
    return {
        "seconds": round(seconds, 2),
        "procs": len(runs),
        "pieces": len(pieces),
        "median_piece_ms": round(med * 1e3, 3),
        "slow_share_pct": round(100.0 * len(slow) / len(pieces), 2),
        # CPU time the slow pieces lost, as a share of the probe's CPU time.
        "lost_pct": round(100.0 * lost / (seconds * len(runs)), 2),
        # Share of that lost time the guest saw as waiting for a CPU.
        "guest_wait_pct_of_lost": round(100.0 * guest_wait / lost, 1) if lost else None,
        "worst_ratio": round(max((r for _, r in slow), default=1.0), 1),
        "episodes": len(episodes),
        "median_gap_s": round(gaps[len(gaps) // 2], 2) if gaps else None,
        "episode_starts_s": [round(e["first"] - t0, 2) for e in episodes],
    }


def line(s):
    gap = f", about every {s['median_gap_s']} s" if s["median_gap_s"] else ""
    guest = ("" if s["guest_wait_pct_of_lost"] is None else
             f", {s['guest_wait_pct_of_lost']} % of it waiting for a CPU in the guest")
    return (f"{s['slow_share_pct']} % of {s['median_piece_ms']} ms pieces took >= {SLOW:g}x the median "
            f"(worst {s['worst_ratio']}x, {s['lost_pct']} % of the time lost{guest}); "
            f"{s['episodes']} episodes in {s['seconds']} s{gap}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--procs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--out")
    a = ap.parse_args()
    n = calibrate()
    start = time.monotonic() + WARMUP
    until = start + a.seconds
    with mp.Pool(a.procs) as pool:
        runs = pool.map(probe, [(n, start, until)] * a.procs)
    s = summarise(runs)
    if a.out:
        with open(a.out, "w") as f:
            json.dump(s, f, indent=1)
    print(line(s))


if __name__ == "__main__":
    main()
