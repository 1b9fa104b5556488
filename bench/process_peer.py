"""Python peer of bench_process: multiprocessing.Process start+join with a no-op
target (fork start method). Prints per-start+join microseconds (median of rounds),
or with `concurrent N` the seconds to start N children and then join them all."""
import multiprocessing as mp
import statistics
import sys
import time


def noop():
    pass


def sequential(n, rounds):
    ctx = mp.get_context("fork")
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
    print(sequential(n, rounds) if mode == "sequential" else concurrent(n, rounds))
