"""Python's side of bench_pool: multiprocessing.Pool and ProcessPoolExecutor (driven by
asyncio) on the same workloads. Usage: pool_peer.py MODE [args]; prints the median of
its repeats last, in the unit bench_pool.cpp expects."""
import asyncio
import concurrent.futures
import multiprocessing
import os
import statistics
import sys
import time

PROCESSES = 2


def tiny(x):
    return x + 1


def tiny_chunk(chunk):
    return [x + 1 for x in chunk]


def median_of(repeats, f):
    return statistics.median(f() for _ in range(repeats))


def pool_apply_us(pinned):
    if pinned:
        os.sched_setaffinity(0, {0})
    with multiprocessing.Pool(PROCESSES) as pool:
        for _ in range(500):
            pool.apply(tiny, (1,))

        def run():
            n = 3000
            start = time.perf_counter()
            for i in range(n):
                pool.apply(tiny, (i,))
            return (time.perf_counter() - start) / n * 1e6

        return median_of(5, run)


def ppe_apply_us(pinned):
    if pinned:
        os.sched_setaffinity(0, {0})

    async def main():
        loop = asyncio.get_running_loop()
        with concurrent.futures.ProcessPoolExecutor(PROCESSES) as ex:
            for _ in range(500):
                await loop.run_in_executor(ex, tiny, 1)

            async def run():
                n = 2000
                start = time.perf_counter()
                for i in range(n):
                    await loop.run_in_executor(ex, tiny, i)
                return (time.perf_counter() - start) / n * 1e6

            return statistics.median([await run() for _ in range(5)])

    return asyncio.run(main())


def pool_apply_async_rate(n):
    with multiprocessing.Pool(PROCESSES) as pool:
        pool.map(tiny, range(1000))

        def run():
            start = time.perf_counter()
            results = [pool.apply_async(tiny, (i,)) for i in range(n)]
            for r in results:
                r.get()
            return n / (time.perf_counter() - start)

        return median_of(3, run)


def ppe_apply_async_rate(n):
    async def main():
        loop = asyncio.get_running_loop()
        with concurrent.futures.ProcessPoolExecutor(PROCESSES) as ex:
            await asyncio.gather(*(loop.run_in_executor(ex, tiny, i) for i in range(1000)))

            async def run():
                start = time.perf_counter()
                await asyncio.gather(*(loop.run_in_executor(ex, tiny, i) for i in range(n)))
                return n / (time.perf_counter() - start)

            return statistics.median([await run() for _ in range(3)])

    return asyncio.run(main())


def pool_map_rate(n, chunksize):
    with multiprocessing.Pool(PROCESSES) as pool:
        pool.map(tiny, range(1000))

        def run():
            start = time.perf_counter()
            pool.map(tiny, range(n), chunksize or None)
            return n / (time.perf_counter() - start)

        return median_of(3, run)


def ppe_map_rate(n, chunksize):
    # chunksize 0: Pool's default, ceil(n / (4 * processes)).
    chunksize = chunksize or -(-n // (4 * PROCESSES))
    items = list(range(n))
    chunks = [items[i:i + chunksize] for i in range(0, n, chunksize)]

    async def main():
        loop = asyncio.get_running_loop()
        with concurrent.futures.ProcessPoolExecutor(PROCESSES) as ex:
            await loop.run_in_executor(ex, tiny_chunk, [1])

            async def run():
                start = time.perf_counter()
                await asyncio.gather(*(loop.run_in_executor(ex, tiny_chunk, c) for c in chunks))
                return n / (time.perf_counter() - start)

            return statistics.median([await run() for _ in range(3)])

    return asyncio.run(main())


def pool_lag_ms(n, which):
    """A 1 ms periodic asyncio timer's lag while Pool.map_async(tiny, range(n), 1) runs."""

    async def main():
        lags = []
        with multiprocessing.Pool(PROCESSES) as pool:
            pool.map(tiny, range(1000))
            result = pool.map_async(tiny, range(n), 1)
            while not result.ready():
                due = time.perf_counter() + 0.001
                await asyncio.sleep(0.001)
                lags.append(max(0.0, time.perf_counter() - due) * 1e3)
            result.get()
        lags.sort()
        return lags[len(lags) // 2] if which == "p50" else lags[min(len(lags) - 1, int(len(lags) * 0.99))]

    return asyncio.run(main())


def pool_start_ms(touch_mib):
    ballast = bytearray(touch_mib << 20)
    for i in range(0, len(ballast), 4096):
        ballast[i] = 1

    def run():
        start = time.perf_counter()
        pool = multiprocessing.Pool(PROCESSES)
        pool.map(tiny, range(2), 1)  # until the workers answer, as bench_pool measures
        took = (time.perf_counter() - start) * 1e3
        pool.terminate()
        pool.join()
        return took

    return median_of(5, run)


if __name__ == "__main__":
    multiprocessing.set_start_method("fork")
    mode, args = sys.argv[1], sys.argv[2:]
    result = {
        "pool_apply_us": lambda: pool_apply_us(args[0] == "pinned"),
        "ppe_apply_us": lambda: ppe_apply_us(args[0] == "pinned"),
        "pool_apply_async_rate": lambda: pool_apply_async_rate(int(args[0])),
        "ppe_apply_async_rate": lambda: ppe_apply_async_rate(int(args[0])),
        "pool_map_rate": lambda: pool_map_rate(int(args[0]), int(args[1])),
        "ppe_map_rate": lambda: ppe_map_rate(int(args[0]), int(args[1])),
        "pool_lag_ms": lambda: pool_lag_ms(int(args[0]), args[1]),
        "pool_start_ms": lambda: pool_start_ms(int(args[0])),
    }[mode]()
    print(result)
