"""Python peer of bench_pipeline: `head -c MIB M /dev/zero | tr '\\0' a | wc -c` as a
subprocess.Popen chain joined by stdout=PIPE (Python's documented way), ROUNDS times;
prints the median throughput in GB/s last.
  usage: pipeline_peer.py MIB ROUNDS"""
import statistics
import subprocess
import sys
import time


def chain(mib):
    start = time.perf_counter()
    head = subprocess.Popen(["head", "-c", f"{mib}M", "/dev/zero"], stdout=subprocess.PIPE)
    tr = subprocess.Popen(["tr", "\\0", "a"], stdin=head.stdout, stdout=subprocess.PIPE)
    head.stdout.close()  # so head gets SIGPIPE if tr exits
    wc = subprocess.Popen(["wc", "-c"], stdin=tr.stdout, stdout=subprocess.PIPE)
    tr.stdout.close()
    out, _ = wc.communicate()
    head.wait()
    tr.wait()
    assert int(out) == mib << 20, out
    return (mib << 20) / (time.perf_counter() - start) / 1e9


def main():
    mib, rounds = int(sys.argv[1]), int(sys.argv[2])
    print(statistics.median(chain(mib) for _ in range(rounds)))


main()
