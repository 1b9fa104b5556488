// Shared by the benchmark programs: timing, medians, running the Python peer, and the
// result rows that bench/report.py turns into the README table.
#pragma once

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

namespace bench {

using clock = std::chrono::steady_clock;

inline double seconds_since(clock::time_point start) {
  return std::chrono::duration<double>(clock::now() - start).count();
}

inline double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  auto n = v.size();
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

// Median over `repeats` runs of f, which returns the figure of one run.
inline double median_of(int repeats, const std::function<double()>& f) {
  std::vector<double> runs;
  for (int i = 0; i < repeats; ++i) runs.push_back(f());
  return median(runs);
}

// The last line `command` prints. A peer that fails (a missing module, a crash) stops the
// benchmark naming the command: a row of zeros would read as a result.
inline std::string last_line(const std::string& command) {
  FILE* pipe = ::popen(command.c_str(), "r");
  if (!pipe) throw std::runtime_error("cannot run " + command);
  std::string out;
  std::array<char, 256> buf;
  while (std::fgets(buf.data(), buf.size(), pipe)) out = buf.data();
  int status = ::pclose(pipe);
  if (status != 0)
    throw std::runtime_error(command + " failed (wait status " + std::to_string(status) + ")");
  return out;
}

// Runs `python3 bench/<script> args...` and returns the number it prints last (the
// peer prints the median of its own repeats, in the unit the caller expects). A peer
// that needs a Debian package (pebble, dask) runs with interpreter /usr/bin/python3.
inline double python(const std::string& script, const std::string& args = "",
                     const std::string& interpreter = "python3") {
  return std::strtod(
      last_line(interpreter + " " COPROC_BENCH_DIR "/" + script + " " + args).c_str(), nullptr);
}

// One result row, printed for people and appended to $COPROC_BENCH_ROWS (TSV:
// benchmark, implementation, value, unit, better = lower|higher) for the report.
inline void row(const std::string& benchmark, const std::string& impl, double value,
                const std::string& unit, bool lower_is_better) {
  std::printf("  %-44s %-22s %14.3f %s\n", benchmark.c_str(), impl.c_str(), value, unit.c_str());
  std::fflush(stdout);
  if (const char* path = std::getenv("COPROC_BENCH_ROWS")) {
    if (FILE* f = std::fopen(path, "a")) {
      std::fprintf(f, "%s\t%s\t%.6g\t%s\t%s\n", benchmark.c_str(), impl.c_str(), value,
                   unit.c_str(), lower_is_better ? "lower" : "higher");
      std::fclose(f);
    }
  }
}

// "coproc is 7.4x faster than python" lines.
inline void ratio(const std::string& what, double ours, double theirs, bool lower_is_better) {
  double r = lower_is_better ? theirs / ours : ours / theirs;
  std::printf("  => %s: coproc %.2fx %s\n", what.c_str(), r >= 1 ? r : 1 / r,
              r >= 1 ? "better" : "worse");
  std::fflush(stdout);
}

} // namespace bench
