"""Python's side of bench_pool_timeout: pebble's ProcessPool.schedule(timeout=), the
Python pool with per-task timeouts (Debian python3-pebble; run with /usr/bin/python3).
Usage: pool_timeout_peer.py MODE; prints the median of its repeats last, in the unit
bench_pool_timeout.cpp expects."""
import statistics
import sys
import time

import pebble

PROCESSES = 2


def tiny(x):
    return x + 1


def maybe_hang(i):
    if i % 10 == 0:
        time.sleep(1000)
    return i


def apply_us(timeout):
    with pebble.ProcessPool(max_workers=PROCESSES) as pool:
        for _ in range(200):
            pool.schedule(tiny, args=[1], timeout=timeout).result()

        def run():
            n = 1000
            start = time.perf_counter()
            for i in range(n):
                pool.schedule(tiny, args=[i], timeout=timeout).result()
            return (time.perf_counter() - start) / n * 1e6

        return statistics.median(run() for _ in range(5))


def every_tenth_s(timeout):
    def run():
        with pebble.ProcessPool(max_workers=PROCESSES) as pool:
            pool.schedule(tiny, args=[1]).result()
            start = time.perf_counter()
            futures = [pool.schedule(maybe_hang, args=[i], timeout=timeout) for i in range(1000)]
            timeouts = 0
            for f in futures:
                try:
                    f.result()
                except TimeoutError:
                    timeouts += 1
            assert timeouts == 100, timeouts
            return time.perf_counter() - start

    return statistics.median(run() for _ in range(3))


def replacement_ms(timeout):
    with pebble.ProcessPool(max_workers=1) as pool:
        pool.schedule(tiny, args=[1]).result()
        samples = []
        for _ in range(20):
            start = time.perf_counter()
            try:
                pool.schedule(maybe_hang, args=[0], timeout=timeout).result()
            except TimeoutError:
                pass
            pool.schedule(tiny, args=[1]).result()
            samples.append((time.perf_counter() - start - timeout) * 1e3)
        return statistics.median(samples)


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "apply_us":
        print(apply_us(None))
    elif mode == "apply_timeout_us":
        print(apply_us(10.0))
    elif mode == "every_tenth_s":
        print(every_tenth_s(float(sys.argv[2])))
    elif mode == "replacement_ms":
        print(replacement_ms(float(sys.argv[2])))
