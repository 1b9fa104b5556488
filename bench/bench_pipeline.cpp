// Pipelines: `head -c 256M /dev/zero | tr '\0' a | wc -c` through coproc::run_pipeline,
// against the same pipeline run by sh -c 'a | b | c', by Python's Popen(stdout=PIPE)
// chain (bench/pipeline_peer.py) and by posix_spawnp joining the stages with pipe(2)
// (the raw OS limit), in the same run; medians in GB/s. No byte of the stream passes
// through the measuring process in any of the four.
#include <coproc/pipeline.hpp>
#include <coproc/run.hpp>

#include "common.hpp"

#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <functional>
#include <string>

extern char** environ;

namespace {

constexpr int mib = 256;
constexpr int rounds = 21;
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

double raw_pipeline() {
  auto start = bench::clock::now();
  std::string size = std::to_string(mib) + "M";
  std::array<std::vector<const char*>, 3> argv{{{"head", "-c", size.c_str(), "/dev/zero", nullptr},
                                                {"tr", "\\0", "a", nullptr},
                                                {"wc", "-c", nullptr}}};
  int in = -1, out[2];
  std::array<pid_t, 3> pids{};
  for (std::size_t i = 0; i < argv.size(); ++i) {
    if (::pipe2(out, O_CLOEXEC) != 0) throw std::runtime_error("pipe2 failed");
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    if (in >= 0) posix_spawn_file_actions_adddup2(&actions, in, 0);
    posix_spawn_file_actions_adddup2(&actions, out[1], 1);
    int rc = posix_spawnp(&pids[i], argv[i][0], &actions, nullptr,
                          const_cast<char* const*>(argv[i].data()), environ);
    posix_spawn_file_actions_destroy(&actions);
    if (rc != 0) throw std::runtime_error(std::string("posix_spawnp ") + argv[i][0] + " failed");
    if (in >= 0) ::close(in);
    ::close(out[1]);
    in = out[0];
  }
  std::string printed;
  char buf[64];
  for (ssize_t n; (n = ::read(in, buf, sizeof buf)) > 0;) printed.append(buf, std::size_t(n));
  ::close(in);
  for (pid_t pid : pids) ::waitpid(pid, nullptr, 0);
  double seconds = bench::seconds_since(start);
  if (printed != expected) throw std::runtime_error("raw pipeline printed " + printed);
  return (double(mib) * (1 << 20)) / seconds / 1e9;
}

} // namespace

int main() {
  std::string name = "3-stage pipeline, " + std::to_string(mib) + " MiB";
  // Interleaved rounds, so that a slower moment of the machine hits every column, each
  // starting with the next column. In a fixed order coproc's column always came right
  // after the Python peer's and trailed the raw column by about 5 %; rotated, it was level
  // with the raw column or ahead in six runs of six.
  std::vector<double> ours, shell, raw, python;
  const std::array<std::function<void()>, 4> columns{
      [&] { ours.push_back(coproc_pipeline()); }, [&] { shell.push_back(shell_pipeline()); },
      [&] { raw.push_back(raw_pipeline()); },
      [&] { python.push_back(bench::python("pipeline_peer.py", std::to_string(mib) + " 1")); }};
  for (int i = 0; i < rounds; ++i)
    for (std::size_t k = 0; k < columns.size(); ++k) columns[(i + k) % columns.size()]();
  double ours_m = bench::median(ours), shell_m = bench::median(shell), raw_m = bench::median(raw),
         py = bench::median(python);
  bench::row(name, "coproc::run_pipeline", ours_m, "GB/s", false);
  bench::row(name, "sh -c 'a | b | c'", shell_m, "GB/s", false);
  bench::row(name, "python Popen chain", py, "GB/s", false);
  bench::row(name, "posix_spawnp + pipe(2) (raw)", raw_m, "GB/s", false);
  bench::ratio("pipeline vs sh", ours_m, shell_m, false);
  bench::ratio("pipeline vs python Popen chain", ours_m, py, false);
  bench::ratio("pipeline vs raw", ours_m, raw_m, false);
}
