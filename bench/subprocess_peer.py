"""Python peer of bench_subprocess. Modes (each prints the median of its rounds last):
  run_seq N ROUNDS       subprocess.run(['/bin/true']) one after another: us per spawn
  asyncio_seq N ROUNDS   asyncio create_subprocess_exec + wait, one after another: us per spawn
  popen_conc N ROUNDS    N subprocess.Popen started, then all waited: spawns per second
  asyncio_conc N ROUNDS  N create_subprocess_exec + wait gathered: spawns per second
  asyncio_cat MIB ROUNDS MIB through cat with proc.communicate(input): GB/s
  run_cat MIB ROUNDS     the same with subprocess.run(input=..., capture_output=True): GB/s"""
import asyncio
import statistics
import subprocess
import sys
import time

TRUE = "/bin/true"


def run_seq(n):
    start = time.perf_counter()
    for _ in range(n):
        subprocess.run([TRUE])
    return (time.perf_counter() - start) / n * 1e6


def asyncio_seq(n):
    async def main():
        start = time.perf_counter()
        for _ in range(n):
            p = await asyncio.create_subprocess_exec(TRUE)
            await p.wait()
        return (time.perf_counter() - start) / n * 1e6
    return asyncio.run(main())


def popen_conc(n):
    start = time.perf_counter()
    procs = [subprocess.Popen([TRUE]) for _ in range(n)]
    for p in procs:
        p.wait()
    return n / (time.perf_counter() - start)


def asyncio_conc(n):
    async def one():
        p = await asyncio.create_subprocess_exec(TRUE)
        return await p.wait()

    async def main():
        start = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(n)))
        return n / (time.perf_counter() - start)
    return asyncio.run(main())


def payload(mib):
    return bytes(range(256)) * (mib * 1024 * 1024 // 256)


def asyncio_cat(mib):
    data = payload(mib)

    async def main():
        start = time.perf_counter()
        p = await asyncio.create_subprocess_exec(
            "cat", stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        out, _ = await p.communicate(data)
        elapsed = time.perf_counter() - start
        assert len(out) == len(data)
        return len(data) / elapsed / 1e9
    return asyncio.run(main())


def run_cat(mib):
    data = payload(mib)
    start = time.perf_counter()
    r = subprocess.run(["cat"], input=data, capture_output=True)
    elapsed = time.perf_counter() - start
    assert len(r.stdout) == len(data)
    return len(data) / elapsed / 1e9


if __name__ == "__main__":
    mode, n, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    f = globals()[mode]
    print(statistics.median(f(n) for _ in range(rounds)))
