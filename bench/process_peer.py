"""Python peer of bench_process: multiprocessing.Process start+join with a no-op target.
Usage: process_peer.py sequential N ROUNDS METHOD [BIG_MIB] prints per-start+join
microseconds (median of rounds) with the start method METHOD (fork, spawn, forkserver),
the parent holding BIG_MIB MiB resident; process_peer.py concurrent N ROUNDS prints the
seconds to start N children (fork) and then join them all."""
import multiprocessing as mp
import statistics
import sys
import time


def noop():
    pass


def sequential(n, rounds, method, big_mib):
    ballast = bytearray(big_mib << 20)
    for i in range(0, len(ballast), 4096):  # every page resident
        ballast[i] = 1
    ctx = mp.get_context(method)
    per_round = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(n):
            p = ctx.Process(target=noop)
            p.start()
            p.join()
        per_round.append((time.perf_counter() - start) / n * 1e6)
    return statistics.median(per_round)


def concurrent(n, rounds):
    ctx = mp.get_context("fork")
    per_round = []
    for _ in range(rounds):
        start = time.perf_counter()
        procs = [ctx.Process(target=noop) for _ in range(n)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        per_round.append(time.perf_counter() - start)
    return statistics.median(per_round)


if __name__ == "__main__":
    mode, n, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    if mode == "sequential":
        method = sys.argv[4] if len(sys.argv) > 4 else "fork"
        big_mib = int(sys.argv[5]) if len(sys.argv) > 5 else 0
        print(sequential(n, rounds, method, big_mib))
    else:
        print(concurrent(n, rounds))
