"""Python peer of bench_sync (fork start method, stdlib only).

  uncontended N ROUNDS   Lock acquire + release in one process: prints ns per pair
  contended N ROUNDS     two processes each acquire + release a Lock N times:
                         prints microseconds per acquisition
  event N ROUNDS         Event ping-pong with an echo process: prints microseconds per
                         round trip
  increments N ROUNDS    two processes each do `with v.get_lock(): v.value += 1` N times:
                         prints M increments/s
"""
import multiprocessing as mp
import statistics
import sys
import time


def uncontended(ctx, n):
    lock = ctx.Lock()
    start = time.perf_counter()
    for _ in range(n):
        lock.acquire()
        lock.release()
    return (time.perf_counter() - start) / n * 1e9


def loop_lock(lock, barrier, n):
    barrier.wait()
    for _ in range(n):
        lock.acquire()
        lock.release()


def contended(ctx, n):
    lock, barrier = ctx.Lock(), ctx.Barrier(2)
    p = ctx.Process(target=loop_lock, args=(lock, barrier, n))
    p.start()
    barrier.wait()
    start = time.perf_counter()
    loop_lock(lock, ctx.Barrier(1), n)
    p.join()
    return (time.perf_counter() - start) / (2 * n) * 1e6


def echo(ping, pong, n):
    for _ in range(n):
        ping.wait()
        ping.clear()
        pong.set()


def event(ctx, n):
    ping, pong = ctx.Event(), ctx.Event()
    p = ctx.Process(target=echo, args=(ping, pong, n + 100))
    p.start()

    def trip():
        ping.set()
        pong.wait()
        pong.clear()

    for _ in range(100):
        trip()
    start = time.perf_counter()
    for _ in range(n):
        trip()
    elapsed = time.perf_counter() - start
    p.join()
    return elapsed / n * 1e6


def add(v, barrier, n):
    barrier.wait()
    for _ in range(n):
        with v.get_lock():
            v.value += 1


def increments(ctx, n):
    v, barrier = ctx.Value("i", 0), ctx.Barrier(2)
    p = ctx.Process(target=add, args=(v, barrier, n))
    p.start()
    start = time.perf_counter()
    add(v, barrier, n)
    p.join()
    elapsed = time.perf_counter() - start
    assert v.value == 2 * n
    return 2 * n / elapsed / 1e6


def main():
    ctx = mp.get_context("fork")
    mode, n, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    f = {"uncontended": uncontended, "contended": contended, "event": event, "increments": increments}[mode]
    print(statistics.median(f(ctx, n) for _ in range(rounds)))


if __name__ == "__main__":
    main()
