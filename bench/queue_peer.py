"""Python peer of bench_queue (fork start method, stdlib only).

  small N ROUNDS             multiprocessing.Queue, N ints, one producer process:
                             prints M items/s (median of rounds)
  big N ROUNDS SIZE          the same with N bytes objects of SIZE: prints GB/s
  pingpong N ROUNDS pinned|unpinned
                             multiprocessing.Pipe round trips with an echo process:
                             prints microseconds per round trip; pinned puts both
                             processes on one CPU
"""
import multiprocessing as mp
import os
import statistics
import sys
import time


def produce(q, n, item):
    for _ in range(n):
        q.put(item)


def queue_round(ctx, n, item):
    q = ctx.Queue()
    p = ctx.Process(target=produce, args=(q, n, item))
    p.start()
    q.get()  # the producer runs: start the clock
    start = time.perf_counter()
    for _ in range(n - 1):
        q.get()
    elapsed = time.perf_counter() - start
    p.join()
    return elapsed


def echo(conn, other_end):
    other_end.close()  # inherited by fork: else the parent's close is no EOF here
    try:
        while True:
            conn.send(conn.recv())
    except EOFError:
        pass


def pingpong_round(ctx, n):
    a, b = ctx.Pipe()
    p = ctx.Process(target=echo, args=(b, a))
    p.start()
    b.close()
    for _ in range(1000):
        a.send(1)
        a.recv()
    start = time.perf_counter()
    for _ in range(n):
        a.send(1)
        a.recv()
    elapsed = time.perf_counter() - start
    a.close()
    p.join()
    return elapsed / n * 1e6


def main():
    ctx = mp.get_context("fork")
    mode, n, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    if mode == "small":
        runs = [(n - 1) / queue_round(ctx, n, 12345) / 1e6 for _ in range(rounds)]
    elif mode == "big":
        size = int(sys.argv[4])
        item = b"x" * size
        runs = [(n - 1) * size / queue_round(ctx, n, item) / 1e9 for _ in range(rounds)]
    elif mode == "pingpong":
        if sys.argv[4] == "pinned":
            os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
        runs = [pingpong_round(ctx, n) for _ in range(rounds)]
    else:
        sys.exit("unknown mode " + mode)
    print(statistics.median(runs))


if __name__ == "__main__":
    main()
