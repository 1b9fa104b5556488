// Pipelines: `head -c 256M /dev/zero | tr '\0' a | wc -c` through coproc::run_pipeline,
// against the same pipeline run by sh -c 'a | b | c' and by Python's Popen(stdout=PIPE)
// chain (bench/pipeline_peer.py), in the same run; medians in GB/s. No byte of the
// stream passes through the measuring process in any of the three.
#include <coproc/pipeline.hpp>
#include <coproc/run.hpp>

#include "common.hpp"

#include <string>

namespace {

constexpr int mib = 256;
constexpr int rounds = 5;
const std::string expected = std::to_string(mib << 20) + "\n";

double coproc_pipeline() {
  return coproc::block_on([]() -> coproc::awaitable<double> {
    auto start = bench::clock::now();
    auto r = co_await coproc::run_pipeline(
        {{"head", "-c", std::to_string(mib) + "M", "/dev/zero"}, {"tr", "\\0", "a"}, {"wc", "-c"}},
        {.capture_output = true, .check = true});
    double seconds = bench::seconds_since(start);
    if (r.out != expected) throw std::runtime_error("coproc pipeline printed " + r.out);
    co_return (double(mib) * (1 << 20)) / seconds / 1e9;
  }());
}

double shell_pipeline() {
  return coproc::block_on([]() -> coproc::awaitable<double> {
    auto start = bench::clock::now();
    auto out = co_await coproc::check_output(
        {"sh", "-c", "head -c " + std::to_string(mib) + "M /dev/zero | tr '\\0' a | wc -c"});
    double seconds = bench::seconds_since(start);
    if (out != expected) throw std::runtime_error("sh printed " + out);
    co_return (double(mib) * (1 << 20)) / seconds / 1e9;
  }());
}

} // namespace

int main() {
  std::string name = "3-stage pipeline, " + std::to_string(mib) + " MiB";
  // Interleaved rounds, so that a slower moment of the machine hits every column.
  std::vector<double> ours, shell;
  for (int i = 0; i < rounds; ++i) {
    ours.push_back(coproc_pipeline());
    shell.push_back(shell_pipeline());
  }
  double ours_m = bench::median(ours), shell_m = bench::median(shell);
  double py = bench::python("pipeline_peer.py", std::to_string(mib) + " " + std::to_string(rounds));
  bench::row(name, "coproc::run_pipeline", ours_m, "GB/s", false);
  bench::row(name, "sh -c 'a | b | c'", shell_m, "GB/s", false);
  bench::row(name, "python Popen chain", py, "GB/s", false);
  bench::ratio("pipeline vs sh", ours_m, shell_m, false);
  bench::ratio("pipeline vs python Popen chain", ours_m, py, false);
}
