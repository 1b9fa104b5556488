"""Python's side of bench_pool_tasks: multiprocessing.Pool and ProcessPoolExecutor on the
same workloads. Usage: pool_tasks_peer.py MODE [args]; prints the median of its repeats
last (two numbers for imap: items/s and peak RSS in MiB), in the unit bench_pool_tasks.cpp
expects."""
import asyncio
import concurrent.futures
import multiprocessing
import resource
import statistics
import sys
import time

PROCESSES = 2


def echo(x):
    return x


def tiny(x):
    return x + 1


def median_of(repeats, f):
    return statistics.median(f() for _ in range(repeats))


def pool_echo_gbs(size, count):
    """GB/s of payload there and back: count items of size bytes through echo, each
    round's results the next round's arguments."""
    data = [bytes(size) for _ in range(count)]
    with multiprocessing.Pool(PROCESSES) as pool:
        pool.apply(echo, (b"x",))

        def run():
            start = time.perf_counter()
            if count == 1:
                data[0] = pool.apply(echo, (data[0],))
            else:
                data[:] = pool.map(echo, data)
            took = time.perf_counter() - start
            assert len(data) == count and len(data[-1]) == size
            return 2 * size * count / took / 1e9

        return median_of(5, run)


def ppe_echo_gbs(size, count):
    data = [bytes(size) for _ in range(count)]

    async def main():
        loop = asyncio.get_running_loop()
        with concurrent.futures.ProcessPoolExecutor(PROCESSES) as ex:
            await loop.run_in_executor(ex, echo, b"x")
            runs = []
            for _ in range(5):
                start = time.perf_counter()
                data[:] = await asyncio.gather(*(loop.run_in_executor(ex, echo, d) for d in data))
                runs.append(2 * size * count / (time.perf_counter() - start) / 1e9)
                assert len(data) == count and len(data[-1]) == size
            return statistics.median(runs)

    return asyncio.run(main())


def pool_imap(n, chunksize):
    """Pool.imap over range(n): items/s, then the parent's peak RSS in MiB (Python's imap
    has no buffersize: its task thread reads the input ahead as fast as it can)."""
    with multiprocessing.Pool(PROCESSES) as pool:
        pool.map(tiny, range(1000), 10)
        start = time.perf_counter()
        total = 0
        for v in pool.imap(tiny, range(n), chunksize):
            total += v
        rate = n / (time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return f"{rate} {peak}"


async def ten_ms(i):
    await asyncio.sleep(0.01)
    return i


def batch(items):
    """One worker's share, run as aiomultiprocess runs it: its own event loop, the
    coroutines concurrently."""

    async def main():
        return await asyncio.gather(*(ten_ms(i) for i in items))

    return asyncio.run(main())


def ppe_coroutines_s(n, concurrency):
    async def main():
        loop = asyncio.get_running_loop()
        with concurrent.futures.ProcessPoolExecutor(PROCESSES) as ex:
            await loop.run_in_executor(ex, batch, [0])
            runs = []
            for _ in range(3):
                start = time.perf_counter()
                batches = [list(range(i, min(i + concurrency, n))) for i in range(0, n, concurrency)]
                out = await asyncio.gather(*(loop.run_in_executor(ex, batch, b) for b in batches))
                runs.append(time.perf_counter() - start)
                assert sum(len(b) for b in out) == n
            return statistics.median(runs)

    return asyncio.run(main())


if __name__ == "__main__":
    multiprocessing.set_start_method("fork")
    mode, args = sys.argv[1], sys.argv[2:]
    result = {
        "pool_echo_gbs": lambda: pool_echo_gbs(int(args[0]), int(args[1])),
        "ppe_echo_gbs": lambda: ppe_echo_gbs(int(args[0]), int(args[1])),
        "pool_imap": lambda: pool_imap(int(args[0]), int(args[1])),
        "ppe_coroutines_s": lambda: ppe_coroutines_s(int(args[0]), int(args[1])),
    }[mode]()
    print(result)
