#include <coproc/pipeline.hpp>

#include <coproc/run.hpp>

#include <doctest/doctest.h>

#include "support/checks.hpp"
#include "support/proc.hpp"
#include "support/timing.hpp"

#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/write.hpp>

#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <system_error>
#include <thread>

using namespace std::chrono_literals;
using coproc_test::run;
namespace asio = boost::asio;

namespace {

using clock_type = std::chrono::steady_clock;
using stages = std::vector<std::vector<std::string>>;

struct temp_dir {
  std::filesystem::path path;
  temp_dir() {
    char name[] = "/tmp/coproc-pipeline-XXXXXX";
    REQUIRE(::mkdtemp(name) != nullptr);
    path = name;
  }
  ~temp_dir() { std::filesystem::remove_all(path); }
};

std::string file_text(const std::filesystem::path& p) {
  std::ifstream in(p);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// rchar + wchar: every byte this thread (which runs the io_context) moved through
// read/write. Not /proc/self/io: it adds in the I/O of reaped children.
unsigned long long bytes_moved_here() {
  std::ifstream io("/proc/thread-self/io");
  std::string key;
  unsigned long long value = 0, total = 0;
  while (io >> key >> value)
    if (key == "rchar:" || key == "wchar:") total += value;
  return total;
}

template <class Error, class Awaitable> Error thrown_by(Awaitable op) {
  try {
    run(std::move(op));
  } catch (const Error& e) {
    return e;
  }
  FAIL("no " << typeid(Error).name() << " thrown");
  throw std::logic_error("unreachable");
}

// The process group; 0 once the process is gone.
int pgid_of(int pid) {
  auto stat = coproc_test::read_proc_stat(pid);
  return stat ? stat->pgrp : 0;
}

// No child of this process is left, alive or a zombie (the reaper may lag a moment).
bool no_children_within(std::chrono::milliseconds limit) {
  auto deadline = clock_type::now() + limit;
  while (!coproc_test::live_children().empty() || !coproc_test::zombie_children().empty()) {
    if (clock_type::now() > deadline) return false;
    std::this_thread::sleep_for(5ms);
  }
  return true;
}

// A pipeline of `count` stages moving 64 MiB: head | cat ... | wc -c.
stages bulk_pipeline(int count) {
  stages s{{"head", "-c", "64M", "/dev/zero"}};
  for (int i = 0; i < count - 2; ++i)
    s.push_back(i % 2 ? std::vector<std::string>{"cat"}
                      : std::vector<std::string>{"tr", "\\0", "a"});
  s.push_back({"wc", "-c"});
  return s;
}

} // namespace

TEST_CASE("a two stage pipeline takes input and captures the last stage") {
  auto r = run(coproc::run_pipeline({{"sort"}, {"uniq", "-c"}},
                                    {.input = "b\na\nb\n", .capture_output = true}));
  CHECK(r.returncodes == std::vector<int>{0, 0});
  CHECK(r.returncode == 0);
  CHECK(r.out == "      1 a\n      2 b\n");
  CHECK(r.args == stages{{"sort"}, {"uniq", "-c"}});
}

TEST_CASE("a three stage pipeline writes into a file and stderr of every stage is captured") {
  temp_dir dir;
  auto out = dir.path / "counts";
  auto r = run(coproc::run_pipeline({{"sh", "-c", "echo e1 >&2; printf 'x\\ny\\nx\\n'"},
                                     {"sort"},
                                     {"sh", "-c", "uniq -c; echo e3 >&2"}},
                                    {.out = coproc::to_file(out), .err = coproc::stdio::pipe}));
  CHECK(r.returncode == 0);
  CHECK(file_text(out) == "      2 x\n      1 y\n");
  CHECK(r.err == "e1\ne3\n");
}

TEST_CASE("64 MiB through 2 3 and 10 stages without a byte through this process") {
  for (int count : {2, 3, 10}) {
    CAPTURE(count);
    stages s = count == 2 ? stages{{"head", "-c", "64M", "/dev/zero"}, {"wc", "-c"}}
                          : bulk_pipeline(count);
    auto before = bytes_moved_here();
    auto r = run(coproc::run_pipeline(s, {.capture_output = true, .timeout = 60s}));
    auto moved = bytes_moved_here() - before;
    CHECK(r.out == "67108864\n");
    CHECK(r.returncodes == std::vector<int>(static_cast<std::size_t>(count), 0));
    CHECK(moved < 1024 * 1024);
  }
}

TEST_CASE("a failing middle stage has its code in the result and check names it") {
  stages s{{"echo", "x"}, {"sh", "-c", "cat > /dev/null; exit 3"}, {"cat"}};
  auto r = run(coproc::run_pipeline(s, {.capture_output = true}));
  CHECK(r.returncodes == std::vector<int>{0, 3, 0});
  CHECK(r.returncode == 3);
  auto e = thrown_by<coproc::pipeline_error>(coproc::run_pipeline(s, {.check = true}));
  CHECK(e.stage() == 1);
  CHECK(e.returncode() == 3);
  CHECK(e.cmd() == s[1]);
  CHECK(e.returncodes() == std::vector<int>{0, 3, 0});
  std::string what = e.what();
  CHECK(what.find("stage 1") != std::string::npos);
  CHECK(what.find("exit 3") != std::string::npos);
  // A called_process_error, as run()'s check throws.
  CHECK_THROWS_AS(run(coproc::run_pipeline(s, {.check = true})), coproc::called_process_error);
}

TEST_CASE("pipefail reports the last failing stage") {
  auto r = run(
      coproc::run_pipeline({{"sh", "-c", "exit 2"}, {"sh", "-c", "cat; exit 5"}, {"true"}}, {}));
  CHECK(r.returncodes == std::vector<int>{2, 5, 0});
  CHECK(r.returncode == 5);
}

TEST_CASE("a stage that does not exist starts nothing and the error names it") {
  auto e = thrown_by<std::system_error>(
      coproc::run_pipeline({{"sleep", "10"}, {"no-such-stage-coproc"}, {"cat"}}));
  CHECK(e.code().value() == ENOENT);
  std::string what = e.what();
  CHECK(what.find("no-such-stage-coproc") != std::string::npos);
  CHECK(what.find("stage 1") != std::string::npos);
  CHECK(coproc_test::live_children().empty());
  CHECK(coproc_test::zombie_children().empty());
}

TEST_CASE("a stage whose exec fails after others started leaves none running") {
  temp_dir dir;
  auto bad = dir.path / "not-a-program";
  std::ofstream(bad) << "\x7f"
                        "ELF garbage\n";
  std::filesystem::permissions(bad, std::filesystem::perms::owner_all);
  auto e = thrown_by<std::system_error>(
      coproc::run_pipeline({{"sleep", "10"}, {"sleep", "10"}, {bad.string()}}));
  CHECK(std::string(e.what()).find("stage 2") != std::string::npos);
  CHECK(std::string(e.what()).find(bad.string()) != std::string::npos);
  CHECK(no_children_within(5000ms));
}

TEST_CASE("a timeout mid-pipeline kills and reaps every stage") {
  auto start = clock_type::now();
  auto e = thrown_by<coproc::timeout_expired>(
      coproc::run_pipeline({{"sh", "-c", "echo early; sleep 10"}, {"cat"}, {"sleep", "10"}},
                           {.capture_output = true, .timeout = 300ms}));
  CHECK(coproc_test::elapsed_ms(start) < 3000);
  CHECK(std::string(e.what()).find("sh -c") != std::string::npos);
  CHECK(coproc_test::live_children().empty());
  CHECK(coproc_test::zombie_children().empty());
}

TEST_CASE("cancelling a pipeline kills and reaps every stage") {
  using namespace asio::experimental::awaitable_operators;
  auto start = clock_type::now();
  auto winner = run([]() -> coproc::awaitable<int> {
    auto v = co_await (coproc::run_pipeline({{"sleep", "10"}, {"cat"}, {"sleep", "10"}}) ||
                       coproc_test::sleep_for(200ms));
    co_return static_cast<int>(v.index());
  }());
  CHECK(winner == 1);
  CHECK(coproc_test::elapsed_ms(start) < 3000);
  CHECK(coproc_test::live_children().empty());
  CHECK(coproc_test::zombie_children().empty());
}

TEST_CASE("start_new_session puts the whole pipeline in one group that kill reaches") {
  run([]() -> coproc::awaitable<void> {
    auto ex = co_await asio::this_coro::executor;
    coproc::pipeline p(ex, {{"sleep", "30"}, {"sleep", "30"}, {"sleep", "30"}},
                       {.start_new_session = true});
    auto pids = p.pids();
    REQUIRE(pids.size() == 3);
    for (int pid : pids) CHECK(pgid_of(pid) == pids[0]);
    CHECK(::getpgrp() != pids[0]);
    p.kill();
    auto codes = co_await p.wait();
    CHECK(codes == std::vector<int>{-SIGKILL, -SIGKILL, -SIGKILL});
  }());
  // run_pipeline's timeout reaches what the stages started too.
  auto e = thrown_by<coproc::timeout_expired>(coproc::run_pipeline(
      {{"sh", "-c", "sleep 30 & wait"}, {"cat"}}, {.start_new_session = true, .timeout = 200ms}));
  (void)e;
  CHECK(no_children_within(5000ms));
}

TEST_CASE("a pipeline streams the last stage's lines and kill_on_destroy ends it") {
  run([]() -> coproc::awaitable<void> {
    auto ex = co_await asio::this_coro::executor;
    // cat writes what it reads at once (tr or sort would buffer on a pipe).
    coproc::pipeline p(ex, {{"sh", "-c", "echo one; read a; echo two"}, {"cat"}, {"cat"}},
                       {.in = coproc::stdio::pipe, .out = coproc::stdio::pipe});
    auto lines = p.stdout_lines();
    // The first stage waits for a line of input after its first line: that one came
    // through the pipeline as it was written.
    CHECK(*co_await lines.next() == "one");
    co_await asio::async_write(p.stdin_pipe(), asio::buffer("\n", 1), asio::use_awaitable);
    CHECK(*co_await lines.next() == "two");
    CHECK_FALSE((co_await lines.next()).has_value());
    CHECK(co_await p.wait() == std::vector<int>{0, 0, 0});
  }());
  std::vector<int> pids;
  {
    asio::io_context ctx;
    coproc::pipeline p(ctx.get_executor(), {{"sleep", "30"}, {"sleep", "30"}},
                       {.kill_on_destroy = true});
    pids = p.pids();
  }
  CHECK(no_children_within(5000ms));
}

TEST_CASE("pipeline options are checked at the call") {
  CHECK_THROWS_AS((void)coproc::run_pipeline({}), std::invalid_argument);
  CHECK_THROWS_AS((void)coproc::run_pipeline({{"true"}, {}}), std::invalid_argument);
  CHECK_THROWS_AS((void)coproc::run_pipeline(
                      {{"true"}}, {.capture_output = true, .out = coproc::stdio::devnull}),
                  std::invalid_argument);
  auto missing = thrown_by<std::system_error>(coproc::run_pipeline(
      {{"cat"}, {"cat"}}, {.in = coproc::from_file("/nonexistent/coproc-input")}));
  CHECK(std::string(missing.what()).find("/nonexistent/coproc-input") != std::string::npos);
  CHECK(coproc_test::live_children().empty());
}
