"""bench/report.py ROWS.tsv OUT_DIR: turns the rows every benchmark appended (benchmark,
implementation, value, unit, lower|higher) into OUT_DIR/results.md, a Markdown table,
and OUT_DIR/results.png, a chart of coproc's speed-up over the Python peers (gnuplot)."""
import collections
import datetime
import os
import platform
import subprocess
import sys


def machine():
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores, Linux {platform.release()}"


def kind(impl):
    if impl.startswith("coproc"):
        return "coproc"
    if impl.lower().startswith("python"):
        return "python"
    return "raw"


def figure(value, unit):
    """5.27M tasks/s, 32.7k tasks/s, 53.16 us."""
    if abs(value) >= 1e6:
        return f"{value / 1e6:.3g}M {unit}"
    if abs(value) >= 1e4:
        return f"{value / 1e3:.3g}k {unit}"
    return f"{value:.4g} {unit}"


def speedup(ours, theirs, better):
    return theirs / ours if better == "lower" else ours / theirs


def main(rows_path, out_dir):
    groups = collections.OrderedDict()
    with open(rows_path) as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) != 5:
                continue
            bench, impl, value, unit, better = parts
            groups.setdefault(bench, []).append((impl, float(value), unit, better))

    stamp = datetime.date.today().isoformat()
    lines = [f"Measured {stamp} on {machine()}; medians, same run for every column.", "",
             "| benchmark | coproc | Python | raw OS | coproc vs Python |",
             "|---|---|---|---|---|"]
    chart = []
    for bench, entries in groups.items():
        cells = {"coproc": [], "python": [], "raw": []}
        for impl, value, unit, better in entries:
            label = figure(value, unit)
            if impl != "coproc":
                label += " (" + impl.replace("|", "\\|") + ")"  # a '|' would end the cell
            cells[kind(impl)].append(label)
        ours = [e for e in entries if kind(e[0]) == "coproc"]
        peers = [e for e in entries if kind(e[0]) == "python"]
        ratio = ""
        if ours and peers:
            best_ours = max(ours, key=lambda e: speedup(e[1], peers[0][1], e[3]))
            best_peer = min(peers, key=lambda e: speedup(best_ours[1], e[1], e[3]))
            r = speedup(best_ours[1], best_peer[1], best_peer[3])
            ratio = f"**{r:.1f}x**" if r >= 1 else f"{1 / r:.1f}x slower"
            chart.append((bench, r))
        lines.append(f"| {bench} | " + " | ".join("<br>".join(cells[k]) or "—"
                                                   for k in ("coproc", "python", "raw"))
                     + f" | {ratio} |")
    lines.append("")
    lines.append("coproc vs Python: the best coproc figure against the fastest Python peer "
                 "in the row, as a factor (above 1: coproc is better).")
    with open(os.path.join(out_dir, "results.md"), "w") as f:
        f.write("\n".join(lines) + "\n")

    data = os.path.join(out_dir, "results.dat")
    with open(data, "w") as f:
        for bench, r in reversed(chart):  # gnuplot draws the first row at the bottom
            f.write(f"\"{bench}\" {r:.3f}\n")
    script = f"""
set terminal pngcairo noenhanced size 1100,{120 + 34 * max(1, len(chart))} font ",11"
set output "{os.path.join(out_dir, 'results.png')}"
set title "coproc speed-up over Python multiprocessing/subprocess ({stamp})"
set style fill solid 0.8
set logscale x 10
set xrange [0.5:*]
set xlabel "times faster than the fastest Python peer (log scale)"
set yrange [-0.7:{len(chart) - 0.3}]
set ytics nomirror
unset key
set grid xtics
set arrow from 1, graph 0 to 1, graph 1 nohead dt 2
plot "{data}" using (1):0:(0.5):2:($0-0.35):($0+0.35):yticlabels(1) with boxxyerror lc rgb "#3b7dd8", \\
     "" using 2:0:(sprintf(" %.1fx", $2)) with labels left
"""
    subprocess.run(["gnuplot"], input=script, text=True, check=True)
    os.remove(data)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
