"""Python's side of bench_remote: Dask distributed (a LocalCluster of 2 worker processes,
1 thread each, talking TCP over loopback) on the same map and apply as coproc's remote
pool. Usage: remote_peer.py map|apply; prints the median of its repeats last (items/s,
or microseconds per apply). Run by /usr/bin/python3 (Debian's python3-distributed)."""
import statistics
import sys
import time

from distributed import Client, LocalCluster


def tiny(x):
    return x + 1


def main(mode):
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        client.gather(client.map(tiny, range(1000)))
        runs = []
        for r in range(3):
            if mode == "map":
                n = 4000
                start = time.perf_counter()
                # pure=False: every run computes again (no cached keys).
                out = client.gather(client.map(tiny, range(n), pure=False))
                runs.append(n / (time.perf_counter() - start))
                assert out[-1] == n
            else:
                n = 300
                start = time.perf_counter()
                for i in range(n):
                    client.submit(tiny, i, pure=False).result()
                runs.append((time.perf_counter() - start) / n * 1e6)
        print(statistics.median(runs))


if __name__ == "__main__":
    main(sys.argv[1])
