#include <coproc/subprocess.hpp>

#include <doctest/doctest.h>

#include "support/checks.hpp"
#include "support/proc.hpp"
#include "support/timing.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/read_until.hpp>
#include <boost/asio/write.hpp>

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <system_error>
#include <thread>
#include <variant>

using namespace std::chrono_literals;
using coproc_test::run;
using coproc_test::sleep_for;
namespace asio = boost::asio;

namespace {

using clock_type = std::chrono::steady_clock;

// A fresh directory under /tmp, removed with everything in it at scope exit.
struct temp_dir {
  std::filesystem::path path;
  temp_dir() {
    char name[] = "/tmp/coproc-subprocess-XXXXXX";
    REQUIRE(::mkdtemp(name) != nullptr);
    path = name;
  }
  ~temp_dir() { std::filesystem::remove_all(path); }
  std::filesystem::path write(const std::string& file, const std::string& text,
                              std::filesystem::perms perms) const {
    auto p = path / file;
    std::ofstream(p) << text;
    std::filesystem::permissions(p, perms);
    return p;
  }
};

// Whether pid has ended: gone, or a zombie waiting for its (new) parent.
bool dead(int pid) {
  auto stat = coproc_test::read_proc_stat(pid);
  return !stat || stat->state == 'Z';
}

bool dies_within(int pid, std::chrono::milliseconds limit) {
  auto deadline = clock_type::now() + limit;
  while (!dead(pid)) {
    if (clock_type::now() > deadline) return false;
    std::this_thread::sleep_for(5ms);
  }
  return true;
}

double seconds_since(clock_type::time_point start) {
  return std::chrono::duration<double>(clock_type::now() - start).count();
}

// The pid a child wrote to path (the file may exist before its content does).
int read_pid(const std::filesystem::path& path) {
  int pid = 0;
  std::ifstream(path) >> pid;
  return pid;
}

coproc::awaitable<int> pid_written_to(std::filesystem::path path) {
  int pid;
  while ((pid = read_pid(path)) <= 0) co_await sleep_for(5ms);
  co_return pid;
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

} // namespace

// ---- run, call, check_call, check_output --------------------------------------------

TEST_CASE("run captures stdout and stderr and keeps the args as given") {
  auto r =
      run(coproc::run({"sh", "-c", "echo out; echo err >&2; exit 3"}, {.capture_output = true}));
  CHECK(r.args == std::vector<std::string>{"sh", "-c", "echo out; echo err >&2; exit 3"});
  CHECK(r.returncode == 3);
  CHECK(r.out == "out\n");
  CHECK(r.err == "err\n");
}

TEST_CASE("call returns the exit status and check_call throws called_process_error") {
  CHECK(run(coproc::call({"true"})) == 0);
  CHECK(run(coproc::call({"sh", "-c", "exit 7"})) == 7);
  run(coproc::check_call({"true"}));
  auto e = thrown_by<coproc::called_process_error>(coproc::check_call({"sh", "-c", "exit 7"}));
  CHECK(e.returncode() == 7);
  CHECK(e.cmd() == std::vector<std::string>{"sh", "-c", "exit 7"});
  CHECK(std::string(e.what()) == "command 'sh -c 'exit 7'' returned non-zero exit status 7");
}

TEST_CASE("check_output returns stdout and the error carries the captured output") {
  CHECK(run(coproc::check_output({"printf", "a b\\n"})) == "a b\n");
  auto e = thrown_by<coproc::called_process_error>(coproc::check_output(
      {"sh", "-c", "echo partial; echo why >&2; exit 2"}, {.capture_output = true}));
  CHECK(e.returncode() == 2);
  CHECK(e.output() == "partial\n");
  CHECK(e.errors() == "why\n");
  CHECK(std::string(e.what()).find("echo partial") != std::string::npos);
}

TEST_CASE("run with check throws called_process_error with the output") {
  auto e = thrown_by<coproc::called_process_error>(coproc::run(
      {"sh", "-c", "echo so far; exit 1"}, {.check = true, .out = coproc::stdio::pipe}));
  CHECK(e.returncode() == 1);
  CHECK(e.output() == "so far\n");
  CHECK(e.errors().empty());
  CHECK(run(coproc::run({"true"}, {.check = true})).returncode == 0);
}

TEST_CASE("a child killed by a signal returns minus the signal number") {
  CHECK(run(coproc::call({"sh", "-c", "kill -TERM $$"})) == -SIGTERM);
  CHECK(run(coproc::call({"sh", "-c", "kill -KILL $$"})) == -SIGKILL);
  auto e =
      thrown_by<coproc::called_process_error>(coproc::check_call({"sh", "-c", "kill -KILL $$"}));
  CHECK(e.returncode() == -9);
  CHECK(std::string(e.what()).find("SIGKILL") != std::string::npos);
}

TEST_CASE("the child starts with default signal dispositions and an empty mask") {
  struct sigaction ignore {
  }, old{};
  ignore.sa_handler = SIG_IGN;
  ::sigaction(SIGPIPE, &ignore, &old);
  sigset_t usr1, old_mask;
  sigemptyset(&usr1);
  sigaddset(&usr1, SIGUSR1);
  ::pthread_sigmask(SIG_BLOCK, &usr1, &old_mask);
  auto status = run(coproc::run({"grep", "-E", "^Sig(Ign|Blk)", "/proc/self/status"},
                                {.out = coproc::stdio::pipe}));
  ::pthread_sigmask(SIG_SETMASK, &old_mask, nullptr);
  ::sigaction(SIGPIPE, &old, nullptr);
  // SigBlk:\t<hex>\nSigIgn:\t<hex>\n
  auto field = [&](const char* name) {
    auto at = status.out.find(name);
    REQUIRE(at != std::string::npos);
    return std::stoull(status.out.substr(at + 8), nullptr, 16);
  };
  // Every bit: glibc's internal signals 32 and 33 are not left ignored either.
  CHECK(field("SigIgn:") == 0);
  CHECK(field("SigBlk:") == 0);
}

// ---- input and output -------------------------------------------------------------

TEST_CASE("input goes through cat and stdin is closed after it") {
  auto r = run(coproc::run({"cat"}, {.input = "hello\nworld", .capture_output = true}));
  CHECK(r.out == "hello\nworld");
  CHECK(run(coproc::run({"wc", "-c"}, {.input = "", .out = coproc::stdio::pipe})).out == "0\n");
  // in = pipe without input: the child reads EOF at once, as Python's stdin=PIPE.
  CHECK(run(coproc::run({"cat"}, {.in = coproc::stdio::pipe, .out = coproc::stdio::pipe}))
            .out.empty());
}

TEST_CASE("input larger than a pipe buffer is fed while the output is read") {
  std::string input(6 * 1024 * 1024 + 7, '\0');
  for (std::size_t i = 0; i < input.size(); ++i) input[i] = static_cast<char>('a' + i % 23);
  auto r = run(coproc::run({"cat"}, {.input = input, .capture_output = true, .timeout = 30s}));
  CHECK(r.returncode == 0);
  CHECK(r.out.size() == input.size());
  CHECK(r.out == input);
}

TEST_CASE("a child that exits without reading its input is not a SIGPIPE in the parent") {
  std::string input(1024 * 1024, 'x');
  auto r = run(coproc::run({"sh", "-c", "exit 4"}, {.input = input}));
  CHECK(r.returncode == 4);
  auto r2 = run(coproc::run({"head", "-c", "3"}, {.input = input, .out = coproc::stdio::pipe}));
  CHECK(r2.out == "xxx");
}

TEST_CASE("8 MiB on stdout and stderr at once never deadlocks") {
  constexpr std::size_t size = 8 * 1024 * 1024;
  auto start = clock_type::now();
  auto r = run(coproc::run(
      {"sh", "-c",
       "head -c 8388608 /dev/zero | tr '\\0' o & head -c 8388608 /dev/zero | tr '\\0' e >&2; wait"},
      {.capture_output = true, .timeout = 60s}));
  CHECK(r.returncode == 0);
  CHECK(r.out.size() == size);
  CHECK(r.err.size() == size);
  CHECK(r.out.find_first_not_of('o') == std::string::npos);
  CHECK(r.err.find_first_not_of('e') == std::string::npos);
  CHECK(seconds_since(start) < 30);
}

TEST_CASE("out and err go to devnull or err joins stdout") {
  auto r = run(coproc::run({"sh", "-c", "echo out; echo err >&2"},
                           {.out = coproc::stdio::devnull, .err = coproc::stdio::pipe}));
  CHECK(r.out.empty());
  CHECK(r.err == "err\n");
  auto merged = run(coproc::run({"sh", "-c", "echo out; echo err >&2; echo more"},
                                {.out = coproc::stdio::pipe, .err = coproc::stdio::to_stdout}));
  CHECK(merged.out == "out\nerr\nmore\n");
  CHECK(merged.err.empty());
  CHECK(run(coproc::run({"cat"}, {.in = coproc::stdio::devnull, .out = coproc::stdio::pipe}))
            .out.empty());
}

// ---- environment, cwd, shell ------------------------------------------------------

TEST_CASE("env replaces the environment and args[0] is found on the default PATH") {
  std::map<std::string, std::string> env{{"FOO", "bar baz"}, {"EMPTY", ""}};
  auto r = run(coproc::run({"env"}, {.env = env, .out = coproc::stdio::pipe}));
  CHECK(r.out == "EMPTY=\nFOO=bar baz\n");
}

TEST_CASE("an inherited environment reaches the child") {
  ::setenv("COPROC_SUBPROCESS_TEST", "inherited", 1);
  auto r =
      run(coproc::run({"sh", "-c", "echo $COPROC_SUBPROCESS_TEST"}, {.out = coproc::stdio::pipe}));
  ::unsetenv("COPROC_SUBPROCESS_TEST");
  CHECK(r.out == "inherited\n");
}

TEST_CASE("with env replaced args[0] is looked up on the new PATH") {
  temp_dir dir;
  dir.write("hello-from-path", "#!/bin/sh\necho found $0\n", std::filesystem::perms::owner_all);
  std::map<std::string, std::string> env{{"PATH", "/nonexistent:" + dir.path.string()}};
  auto r = run(coproc::run({"hello-from-path"}, {.env = env, .out = coproc::stdio::pipe}));
  CHECK(r.out == "found " + (dir.path / "hello-from-path").string() + "\n");
  // Not on the parent's PATH: the parent's lookup would have failed.
  auto e = thrown_by<std::system_error>(coproc::run({"hello-from-path"}));
  CHECK(e.code().value() == ENOENT);
}

TEST_CASE("cwd sets the working directory and a missing cwd names the directory") {
  temp_dir dir;
  auto r = run(coproc::run({"pwd"}, {.cwd = dir.path, .out = coproc::stdio::pipe}));
  CHECK(r.out == dir.path.string() + "\n");
  // A relative program path resolves in the new cwd, as in Python.
  dir.write("local", "#!/bin/sh\necho local\n", std::filesystem::perms::owner_all);
  CHECK(run(coproc::check_output({"./local"}, {.cwd = dir.path})) == "local\n");
  auto e = thrown_by<std::system_error>(coproc::run({"pwd"}, {.cwd = dir.path / "missing"}));
  CHECK(e.code().value() == ENOENT);
  CHECK(std::string(e.what()).find((dir.path / "missing").string()) != std::string::npos);
  CHECK(coproc_test::zombie_children().empty());
}

TEST_CASE("shell runs sh -c with the extra args as $0 and $1") {
  auto r = run(coproc::run({"echo \"$0-$1\" | tr a-z A-Z", "a", "b"},
                           {.shell = true, .out = coproc::stdio::pipe}));
  CHECK(r.out == "A-B\n");
  CHECK(r.args == std::vector<std::string>{"echo \"$0-$1\" | tr a-z A-Z", "a", "b"});
  CHECK(run(coproc::call({"exit 5"}, {.shell = true})) == 5);
}

// ---- launch failures --------------------------------------------------------------

TEST_CASE("a missing program is ENOENT naming it and leaves no zombie") {
  auto e = thrown_by<std::system_error>(coproc::run({"coproc-no-such-program", "x"}));
  CHECK(e.code() == std::errc::no_such_file_or_directory);
  CHECK(std::string(e.what()).find("coproc-no-such-program") != std::string::npos);
  auto abs = thrown_by<std::system_error>(coproc::call({"/nonexistent/prog"}));
  asio::io_context ctx;
  CHECK(abs.code() == std::errc::no_such_file_or_directory);
  CHECK(std::string(abs.what()).find("/nonexistent/prog") != std::string::npos);
  CHECK_THROWS_AS(coproc::popen(ctx.get_executor(), {"coproc-no-such-program"}), std::system_error);
  CHECK(coproc_test::zombie_children().empty());
  CHECK(coproc_test::live_children().empty());
}

TEST_CASE("a program without execute permission is EACCES naming it") {
  temp_dir dir;
  auto script = dir.write("not-executable", "#!/bin/sh\necho ran\n",
                          std::filesystem::perms::owner_read | std::filesystem::perms::owner_write);
  auto by_path = thrown_by<std::system_error>(coproc::run({script.string()}));
  CHECK(by_path.code() == std::errc::permission_denied);
  CHECK(std::string(by_path.what()).find(script.string()) != std::string::npos);
  std::map<std::string, std::string> env{{"PATH", dir.path.string()}};
  auto on_path = thrown_by<std::system_error>(coproc::run({"not-executable"}, {.env = env}));
  CHECK(on_path.code() == std::errc::permission_denied);
  CHECK(std::string(on_path.what()).find("not-executable") != std::string::npos);
  CHECK(coproc_test::zombie_children().empty());
}

TEST_CASE("a failed exec does not flush the parent's buffered output twice") {
  int fds[2];
  REQUIRE(::pipe(fds) == 0);
  int pid = coproc::fork();
  if (pid == 0) {
    ::dup2(fds[1], 1);
    ::close(fds[0]);
    ::close(fds[1]);
    std::printf("buffered once;");
    int code = 0;
    try {
      coproc::block_on(coproc::call({"coproc-no-such-program"}));
    } catch (const std::system_error&) {
      code = coproc_test::zombie_children().empty() ? 0 : 1;
    }
    std::fflush(stdout);
    ::_exit(code);
  }
  ::close(fds[1]);
  std::string out;
  char buf[256];
  ssize_t n;
  while ((n = ::read(fds[0], buf, sizeof buf)) > 0) out.append(buf, static_cast<std::size_t>(n));
  ::close(fds[0]);
  int status = 0;
  REQUIRE(::waitpid(pid, &status, 0) == pid);
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
  CHECK(out == "buffered once;");
}

// ---- invalid options --------------------------------------------------------------

TEST_CASE("invalid option combinations are invalid_argument at the call") {
  using coproc::stdio;
  // Each throws from the call itself, before anything is awaited.
  asio::io_context ctx;
  CHECK_THROWS_AS((void)coproc::run({}), std::invalid_argument);
  CHECK_THROWS_AS((void)coproc::run({std::string("a\0b", 3)}), std::invalid_argument);
  CHECK_THROWS_AS((void)coproc::run({"cat"}, {.input = "x", .in = stdio::devnull}),
                  std::invalid_argument);
  CHECK_THROWS_AS((void)coproc::run({"cat"}, {.in = stdio::to_stdout}), std::invalid_argument);
  CHECK_THROWS_AS((void)coproc::run({"cat"}, {.out = stdio::to_stdout}), std::invalid_argument);
  CHECK_THROWS_AS((void)coproc::run({"cat"}, {.capture_output = true, .out = stdio::pipe}),
                  std::invalid_argument);
  CHECK_THROWS_AS((void)coproc::run({"cat"}, {.capture_output = true, .err = stdio::to_stdout}),
                  std::invalid_argument);
  CHECK_THROWS_AS(
      (void)coproc::call({"env"}, {.env = std::map<std::string, std::string>{{"A=B", "c"}}}),
      std::invalid_argument);
  CHECK_THROWS_AS(
      (void)coproc::check_call({"env"}, {.env = std::map<std::string, std::string>{{"", "c"}}}),
      std::invalid_argument);
  CHECK_THROWS_AS((void)coproc::check_output({"echo"}, {.out = stdio::devnull}),
                  std::invalid_argument);
  CHECK_THROWS_AS(coproc::popen(ctx.get_executor(), {"cat"}, {.in = stdio::to_stdout}),
                  std::invalid_argument);
  CHECK_THROWS_AS(coproc::popen(ctx.get_executor(), {"cat"}, {.out = stdio::to_stdout}),
                  std::invalid_argument);
  CHECK_THROWS_AS(coproc::popen(ctx.get_executor(), {}), std::invalid_argument);
  CHECK_THROWS_WITH_AS((void)coproc::run({"cat"}, {.input = "x", .in = stdio::devnull}),
                       doctest::Contains("input"), std::invalid_argument);
  CHECK(coproc_test::live_children().empty());
}

// ---- timeout and cancellation -------------------------------------------------------

TEST_CASE("a timeout kills and reaps sleep 10 well under 2 s") {
  auto start = clock_type::now();
  auto e = thrown_by<coproc::timeout_expired>(coproc::run({"sleep", "10"}, {.timeout = 200ms}));
  CHECK(seconds_since(start) < 2.0);
  CHECK(e.cmd() == std::vector<std::string>{"sleep", "10"});
  CHECK(e.timeout() == 200ms);
  CHECK(std::string(e.what()) == "command 'sleep 10' timed out after 0.2 seconds");
  CHECK(coproc_test::zombie_children().empty());
  CHECK(coproc_test::live_children().empty());
}

TEST_CASE("a command that finishes within its timeout returns normally") {
  auto start = clock_type::now();
  auto r = run(
      coproc::run({"sh", "-c", "echo in time; exit 2"}, {.capture_output = true, .timeout = 10s}));
  CHECK(r.returncode == 2);
  CHECK(r.out == "in time\n");
  CHECK(run(coproc::check_output({"tr", "a-z", "A-Z"}, {.input = "abc", .timeout = 10s})) == "ABC");
  CHECK(seconds_since(start) < 5.0); // the timer does not hold the call until it expires
}

TEST_CASE("timeout_expired carries the output captured so far") {
  auto e = thrown_by<coproc::timeout_expired>(
      coproc::check_output({"sh", "-c", "echo partial; echo oops >&2; exec sleep 10"},
                           {.capture_output = true, .timeout = 300ms}));
  CHECK(e.output() == "partial\n");
  CHECK(e.errors() == "oops\n");
  CHECK(coproc_test::live_children().empty());
}

TEST_CASE("a timeout with start_new_session kills the grandchildren too") {
  auto start = clock_type::now();
  auto e = thrown_by<coproc::timeout_expired>(
      coproc::run({"sh", "-c", "sleep 30 & echo $!; wait"},
                  {.start_new_session = true, .capture_output = true, .timeout = 1s}));
  CHECK(seconds_since(start) < 5.0);
  int grandchild = std::atoi(e.output().c_str());
  REQUIRE(grandchild > 0);
  CHECK(dies_within(grandchild, 2s));
  CHECK(coproc_test::live_children().empty());
}

TEST_CASE("cancelling the awaiting coroutine kills and reaps the child") {
  using namespace asio::experimental::awaitable_operators;
  auto start = clock_type::now();
  auto which = run([]() -> coproc::awaitable<std::size_t> {
    auto result = co_await (coproc::run({"sleep", "10"}) || sleep_for(100ms));
    // The child is already reaped when the cancelled run completes.
    CHECK(coproc_test::live_children().empty());
    CHECK(coproc_test::zombie_children().empty());
    co_return result.index();
  }());
  CHECK(which == 1);
  CHECK(seconds_since(start) < 2.0);
}

TEST_CASE("cancelling a run with start_new_session kills the whole group") {
  using namespace asio::experimental::awaitable_operators;
  temp_dir dir;
  auto pidfile = dir.path / "pid";
  auto result = run([&]() -> coproc::awaitable<std::variant<coproc::completed_process, int>> {
    // Cancelled as soon as the grandchild is running.
    co_return co_await (
        coproc::run({"sh", "-c", "sleep 30 & echo $! > " + pidfile.string() + "; wait"},
                    {.start_new_session = true}) ||
        pid_written_to(pidfile));
  }());
  REQUIRE(result.index() == 1);
  int grandchild = std::get<1>(result);
  CHECK(dies_within(grandchild, 2s));
  CHECK(coproc_test::live_children().empty());
}

TEST_CASE("destroying the io_context mid-run kills the child and closes its pipes") {
  temp_dir dir;
  auto pidfile = dir.path / "pid";
  int fds = coproc_test::count_fds();
  {
    asio::io_context ctx;
    asio::co_spawn(ctx,
                   coproc::run({"sh", "-c", "echo $$ > " + pidfile.string() + "; exec sleep 10"},
                               {.input = std::string(1 << 20, 'x'), .capture_output = true}),
                   asio::detached);
    auto deadline = clock_type::now() + 5s;
    while (read_pid(pidfile) <= 0 && clock_type::now() < deadline) ctx.run_for(10ms);
  }
  int pid = read_pid(pidfile);
  REQUIRE(pid > 0);
  CHECK(dies_within(pid, 2s));
  CHECK(coproc_test::settle(fds)); // reaped in the background, every descriptor closed
}

// ---- inheritance ----------------------------------------------------------------------

TEST_CASE("only stdin stdout and stderr are inherited") {
  temp_dir dir;
  auto marker = dir.path / "open-in-parent";
  // Deliberately without O_CLOEXEC: the spawn itself must close it.
  int file = ::open(marker.c_str(), O_CREAT | O_RDWR, 0600);
  REQUIRE(file >= 0);
  int fds[2];
  REQUIRE(::pipe(fds) == 0);
  auto r = run(coproc::run({"ls", "-l", "/proc/self/fd"}, {.capture_output = true}));
  ::close(file);
  ::close(fds[0]);
  ::close(fds[1]);
  CHECK(r.returncode == 0);
  CHECK(r.out.find(marker.string()) == std::string::npos);
  CHECK(r.out.find("pipe:") != std::string::npos); // its own stdout and stderr
  // 0, 1, 2 and the directory ls is reading.
  std::istringstream lines(r.out);
  std::string line;
  std::vector<int> open_fds;
  while (std::getline(lines, line)) {
    auto arrow = line.find(" -> ");
    if (arrow == std::string::npos) continue;
    auto space = line.rfind(' ', arrow - 1);
    open_fds.push_back(std::stoi(line.substr(space + 1, arrow - space - 1)));
  }
  CHECK(open_fds == std::vector<int>{0, 1, 2, 3});
}

// ---- concurrency ----------------------------------------------------------------------

namespace {
// Counts io_context::notify_fork calls: Boost.Process 1.81's launcher makes one per
// spawn, re-registering every descriptor the context holds (O(N^2) for N children).
struct fork_counter : asio::execution_context::service {
  using key_type = fork_counter;
  static inline asio::execution_context::id id;
  explicit fork_counter(asio::execution_context& ctx) : service(ctx) {}
  void shutdown() override {}
  void notify_fork(asio::execution_context::fork_event) override { ++count; }
  int count = 0;
};
} // namespace

TEST_CASE("spawning does not notify the io_context of a fork") {
  asio::io_context ctx;
  auto& counter = asio::use_service<fork_counter>(ctx);
  std::vector<int> codes;
  asio::co_spawn(
      ctx,
      []() -> coproc::awaitable<std::vector<int>> {
        std::vector<coproc::awaitable<int>> calls;
        for (int i = 0; i < 50; ++i)
          calls.push_back(coproc::call({"true"}, {.capture_output = true}));
        co_return co_await coproc::gather(std::move(calls));
      }(),
      [&](std::exception_ptr e, std::vector<int> r) {
        CHECK_FALSE(e);
        codes = std::move(r);
      });
  ctx.run();
  CHECK(codes == std::vector<int>(50, 0));
  CHECK(counter.count == 0);
}

namespace {
// Ticks until done; after 10 ticks it creates `flag`.
coproc::awaitable<void> tick_until(int& ticks, const bool& done, std::filesystem::path flag) {
  while (!done) {
    co_await sleep_for(10ms);
    if (++ticks == 10) std::ofstream{flag};
  }
}
} // namespace

TEST_CASE("the io_context keeps running while a child is awaited") {
  temp_dir dir;
  auto flag = dir.path / "ticked";
  int ticks = 0;
  bool done = false;
  run([&]() -> coproc::awaitable<void> {
    auto ex = co_await asio::this_coro::executor;
    asio::co_spawn(ex, tick_until(ticks, done, flag), asio::detached);
    // The child ends once the loop has ticked 10 times while it was awaited (a loop
    // blocked in waitpid never would: exit 1 after 60 s).
    CHECK(co_await coproc::call(
              {"sh", "-c",
               "for i in $(seq 6000); do [ -e \"$0\" ] && exit 0; sleep 0.01; done; exit 1",
               flag.string()}) == 0);
    done = true;
  }());
  CHECK(ticks >= 10);
}

TEST_CASE("200 concurrent true via gather all exit 0") {
  auto start = clock_type::now();
  auto codes = run([]() -> coproc::awaitable<std::vector<int>> {
    std::vector<coproc::awaitable<int>> calls;
    for (int i = 0; i < 200; ++i) calls.push_back(coproc::call({"true"}));
    co_return co_await coproc::gather(std::move(calls));
  }());
  CHECK(codes.size() == 200);
  CHECK(std::count(codes.begin(), codes.end(), 0) == 200);
  CHECK(seconds_since(start) < 20);
  CHECK(coproc_test::zombie_children().empty());
}

TEST_CASE("concurrent runs capture their own output") {
  auto outs = run([]() -> coproc::awaitable<std::vector<std::string>> {
    std::vector<coproc::awaitable<std::string>> calls;
    for (int i = 0; i < 20; ++i)
      calls.push_back(
          coproc::check_output({"sh", "-c", "sleep 0.0$0; echo $0", std::to_string(i % 10)}));
    co_return co_await coproc::gather(std::move(calls));
  }());
  for (int i = 0; i < 20; ++i) CHECK(outs[i] == std::to_string(i % 10) + "\n");
}

// ---- popen ----------------------------------------------------------------------------

TEST_CASE("popen streams stdout lines as they arrive") {
  auto lines = run([]() -> coproc::awaitable<std::vector<std::string>> {
    auto ex = co_await asio::this_coro::executor;
    // The child writes each line, then waits for the test to have read it.
    temp_dir dir;
    auto flag = (dir.path / "read").string();
    coproc::popen p(
        ex,
        {"sh", "-c",
         "for i in 1 2 3; do echo line$i; while [ ! -e \"$0.$i\" ]; do sleep 0.01; done; done",
         flag},
        {.out = coproc::stdio::pipe});
    std::vector<std::string> got;
    std::string buffer;
    for (;;) {
      auto [ec, n] = co_await asio::async_read_until(p.stdout_pipe(), asio::dynamic_buffer(buffer),
                                                     '\n', asio::as_tuple(asio::use_awaitable));
      if (ec) break;
      got.push_back(buffer.substr(0, n - 1));
      buffer.erase(0, n);
      // Each line is read while the child waits for it to be read: streaming, not
      // buffering to EOF.
      CHECK_FALSE(p.poll().has_value());
      std::ofstream{flag + "." + std::to_string(got.size())};
    }
    CHECK(co_await p.wait() == 0);
    CHECK(p.returncode() == 0);
    co_return got;
  }());
  CHECK(lines == std::vector<std::string>{"line1", "line2", "line3"});
}

TEST_CASE("popen writes stdin and reads stdout through its pipes") {
  auto out = run([]() -> coproc::awaitable<std::string> {
    auto ex = co_await asio::this_coro::executor;
    coproc::popen p(ex, {"tr", "a-z", "A-Z"},
                    {.in = coproc::stdio::pipe, .out = coproc::stdio::pipe});
    co_await asio::async_write(p.stdin_pipe(), asio::buffer(std::string_view("shout\n")),
                               asio::use_awaitable);
    p.stdin_pipe().close();
    std::string text;
    auto [ec, n] = co_await asio::async_read(p.stdout_pipe(), asio::dynamic_buffer(text),
                                             asio::as_tuple(asio::use_awaitable));
    CHECK(ec == asio::error::eof);
    CHECK(co_await p.wait() == 0);
    co_return text;
  }());
  CHECK(out == "SHOUT\n");
}

TEST_CASE("popen communicate sends input and collects both streams") {
  auto [out, err] = run([]() -> coproc::awaitable<std::pair<std::string, std::string>> {
    auto ex = co_await asio::this_coro::executor;
    coproc::popen p(
        ex, {"sh", "-c", "cat; echo done >&2"},
        {.in = coproc::stdio::pipe, .out = coproc::stdio::pipe, .err = coproc::stdio::pipe});
    auto result = co_await p.communicate("payload");
    CHECK(p.returncode() == 0);
    co_return result;
  }());
  CHECK(out == "payload");
  CHECK(err == "done\n");
}

TEST_CASE("popen communicate with a timeout keeps the output for the next call") {
  run([]() -> coproc::awaitable<void> {
    auto ex = co_await asio::this_coro::executor;
    temp_dir dir;
    auto started = dir.path / "started", go = dir.path / "go";
    coproc::popen p(
        ex,
        {"sh", "-c",
         "echo first; touch \"$0\"; while [ ! -e \"$1\" ]; do sleep 0.01; done; echo second",
         started.string(), go.string()},
        {.out = coproc::stdio::pipe});
    while (!std::filesystem::exists(started)) co_await sleep_for(5ms); // "first" is in the pipe
    try {
      co_await p.communicate("", 100ms);
      FAIL("no timeout");
    } catch (const coproc::timeout_expired& e) {
      CHECK(e.output() == "first\n");
      CHECK(e.timeout() == 100ms);
      CHECK(std::string(e.what()).find("sh -c") != std::string::npos);
    }
    CHECK_FALSE(p.poll().has_value()); // left alone
    CHECK_THROWS_AS(co_await p.communicate("late input"), std::invalid_argument);
    std::ofstream{go};
    auto [out, err] = co_await p.communicate();
    CHECK(out == "first\nsecond\n");
    CHECK(err.empty());
    CHECK(p.returncode() == 0);
  }());
}

TEST_CASE("popen wait with a timeout leaves the child alone and terminate ends it") {
  run([]() -> coproc::awaitable<void> {
    auto ex = co_await asio::this_coro::executor;
    coproc::popen p(ex, {"sleep", "10"});
    CHECK(p.pid() > 0);
    auto start = clock_type::now();
    CHECK_FALSE((co_await p.wait(50ms)).has_value());
    CHECK(seconds_since(start) < 1.0);
    CHECK_FALSE(p.poll().has_value());
    CHECK_FALSE(p.returncode().has_value());
    p.terminate();
    CHECK(co_await p.wait() == -SIGTERM);
    CHECK(p.returncode() == -SIGTERM);
    p.kill(); // no-op once reaped
    CHECK(co_await p.wait(1s) == -SIGTERM);
  }());
}

TEST_CASE("popen send_signal and kill reach the whole group with start_new_session") {
  temp_dir dir;
  auto pidfile = dir.path / "pid";
  run([&]() -> coproc::awaitable<void> {
    auto ex = co_await asio::this_coro::executor;
    coproc::popen p(ex, {"sh", "-c", "sleep 30 & echo $! > " + pidfile.string() + "; wait"},
                    {.start_new_session = true});
    co_await pid_written_to(pidfile);
    p.kill();
    CHECK(co_await p.wait() == -SIGKILL);
  }());
  int grandchild = read_pid(pidfile);
  REQUIRE(grandchild > 0);
  CHECK(dies_within(grandchild, 2s));
}

TEST_CASE("popen send_signal delivers any signal and the code is minus its number") {
  run([]() -> coproc::awaitable<void> {
    auto ex = co_await asio::this_coro::executor;
    coproc::popen p(ex, {"sleep", "10"});
    p.send_signal(SIGUSR1);
    CHECK(co_await p.wait() == -SIGUSR1);
    p.send_signal(SIGUSR1); // reaped: a no-op, the pid may be someone else's now
    coproc::popen t(ex, {"true"});
    CHECK_THROWS_AS(t.send_signal(12345), std::system_error);
    CHECK(co_await t.wait() == 0);
  }());
}

TEST_CASE("popen pipes that were not requested are a logic_error naming the pid") {
  run([]() -> coproc::awaitable<void> {
    auto ex = co_await asio::this_coro::executor;
    coproc::popen p(ex, {"true"}, {.out = coproc::stdio::devnull});
    auto pid = std::to_string(p.pid());
    CHECK_THROWS_WITH_AS(p.stdout_pipe(), doctest::Contains(pid.c_str()), std::logic_error);
    CHECK_THROWS_AS(p.stdin_pipe(), std::logic_error);
    CHECK_THROWS_AS(p.stderr_pipe(), std::logic_error);
    CHECK_THROWS_AS(co_await p.communicate("input"), std::invalid_argument);
    auto [out, err] = co_await p.communicate();
    CHECK(out.empty());
    CHECK(p.returncode() == 0);
  }());
}

TEST_CASE("a destroyed popen leaves its child running and it is reaped when it exits") {
  temp_dir dir;
  auto done = dir.path / "done";
  // Children of earlier tests that the background reaper still holds would be
  // reaped during this one, changing the count.
  auto quiet = clock_type::now() + 5s;
  while ((!coproc_test::live_children().empty() || !coproc_test::zombie_children().empty()) &&
         clock_type::now() < quiet)
    std::this_thread::sleep_for(10ms);
  std::this_thread::sleep_for(20ms);
  int fds = coproc_test::count_fds();
  {
    asio::io_context ctx;
    coproc::popen p(ctx.get_executor(), {"sh", "-c", "sleep 0.2; touch " + done.string()},
                    {.out = coproc::stdio::pipe});
  }
  auto deadline = clock_type::now() + 5s;
  while (!std::filesystem::exists(done) && clock_type::now() < deadline)
    std::this_thread::sleep_for(10ms);
  CHECK(std::filesystem::exists(done));
  CHECK(coproc_test::settle(fds));
}

// ---- redirection ------------------------------------------------------------------------

namespace {

std::string file_text(const std::filesystem::path& p) {
  std::ifstream in(p);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// A field of /proc/self/status as the child printed it: "Umask:\t0027" -> "0027".
std::string status_field(const std::string& status, const std::string& name) {
  auto at = status.find(name + ":\t");
  REQUIRE(at != std::string::npos);
  auto begin = at + name.size() + 2;
  return status.substr(begin, status.find('\n', begin) - begin);
}

} // namespace

TEST_CASE("to_file truncates or appends and err can join out in the file") {
  temp_dir dir;
  auto log = dir.path / "log";
  std::ofstream(log) << "old contents that must go\n";
  run(coproc::check_call({"echo", "first"}, {.out = coproc::to_file(log)}));
  CHECK(file_text(log) == "first\n");
  run(coproc::check_call(
      {"sh", "-c", "echo out; echo err >&2"},
      {.out = coproc::to_file(log, coproc::file_mode::append), .err = coproc::stdio::to_stdout}));
  CHECK(file_text(log) == "first\nout\nerr\n");
  // A file that does not exist yet is created.
  run(coproc::check_call({"echo", "new"}, {.err = coproc::to_file(dir.path / "err")}));
  CHECK(file_text(dir.path / "err").empty());
}

TEST_CASE(
    "from_file feeds stdin and a missing file is a system_error naming it before any child runs") {
  temp_dir dir;
  auto in = dir.write("in", "b\na\n", std::filesystem::perms::owner_read);
  CHECK(run(coproc::check_output({"sort"}, {.in = coproc::from_file(in)})) == "a\nb\n");
  auto missing = (dir.path / "missing").string();
  auto e = thrown_by<std::system_error>(coproc::call({"cat"}, {.in = coproc::from_file(missing)}));
  CHECK(e.code().value() == ENOENT);
  CHECK(std::string(e.what()).find(missing) != std::string::npos);
  CHECK(std::string(e.what()).find("stdin of 'cat'") != std::string::npos);
  CHECK(coproc_test::live_children().empty());
  // Directions are checked at the call.
  CHECK_THROWS_AS((void)coproc::run({"cat"}, {.in = coproc::to_file(in)}), std::invalid_argument);
  CHECK_THROWS_AS((void)coproc::run({"cat"}, {.out = coproc::from_file(in)}),
                  std::invalid_argument);
  CHECK_THROWS_AS((void)coproc::run({"cat"}, {.input = "x", .in = coproc::from_file(in)}),
                  std::invalid_argument);
}

TEST_CASE("descriptor hands the child a duplicate of a descriptor the caller keeps") {
  int fds[2];
  REQUIRE(::pipe2(fds, O_CLOEXEC) == 0);
  run(coproc::check_call({"echo", "through the caller's pipe"},
                         {.out = coproc::descriptor(fds[1])}));
  // Still the caller's: open, and writable after the child has gone.
  CHECK(::write(fds[1], "mine\n", 5) == 5);
  ::close(fds[1]);
  std::string got(128, '\0');
  std::size_t n = 0;
  for (ssize_t r; (r = ::read(fds[0], got.data() + n, got.size() - n)) > 0;)
    n += static_cast<std::size_t>(r);
  ::close(fds[0]);
  got.resize(n);
  CHECK(got == "through the caller's pipe\nmine\n");
  // err = descriptor(1) is this process's stdout even though out is redirected first.
  temp_dir dir;
  auto e = thrown_by<std::system_error>(coproc::call({"true"}, {.out = coproc::descriptor(987)}));
  CHECK(e.code().value() == EBADF);
  CHECK(std::string(e.what()).find("descriptor 987") != std::string::npos);
}

TEST_CASE("stdout_of one popen feeds another and no byte passes through this process") {
  auto out = run([]() -> coproc::awaitable<std::string> {
    auto ex = co_await asio::this_coro::executor;
    coproc::popen producer(ex, {"printf", "c\\nb\\na\\n"}, {.out = coproc::stdio::pipe});
    coproc::popen sorter(ex, {"sort"},
                         {.in = coproc::stdout_of(producer), .out = coproc::stdio::pipe});
    // The producer's pipe now belongs to the sorter alone.
    CHECK_FALSE(producer.stdout_pipe().is_open());
    CHECK_THROWS_AS(coproc::stdout_of(producer), std::logic_error);
    auto [sorted, err] = co_await sorter.communicate();
    CHECK(co_await producer.wait() == 0);
    co_return sorted;
  }());
  CHECK(out == "a\nb\nc\n");
}

TEST_CASE("stdin_of one popen takes another's output") {
  auto out = run([]() -> coproc::awaitable<std::string> {
    auto ex = co_await asio::this_coro::executor;
    coproc::popen consumer(ex, {"tr", "a-z", "A-Z"},
                           {.in = coproc::stdio::pipe, .out = coproc::stdio::pipe});
    CHECK(co_await coproc::call({"echo", "shout"}, {.out = coproc::stdin_of(consumer)}) == 0);
    auto [upper, err] = co_await consumer.communicate();
    co_return upper;
  }());
  CHECK(out == "SHOUT\n");
}

// ---- options ----------------------------------------------------------------------------

TEST_CASE("umask reaches the child and signals stay default on the clone path") {
  struct sigaction ignore {
  }, old{};
  ignore.sa_handler = SIG_IGN;
  ::sigaction(SIGPIPE, &ignore, &old);
  auto r =
      run(coproc::run({"cat", "/proc/self/status"}, {.out = coproc::stdio::pipe, .umask = 027}));
  ::sigaction(SIGPIPE, &old, nullptr);
  CHECK(status_field(r.out, "Umask") == "0027");
  CHECK(status_field(r.out, "SigIgn") == "0000000000000000");
  CHECK(status_field(r.out, "SigBlk") == "0000000000000000");
  // A file the child creates gets the umask.
  temp_dir dir;
  run(coproc::check_call({"touch", (dir.path / "f").string()}, {.umask = 077}));
  CHECK((std::filesystem::status(dir.path / "f").permissions() & std::filesystem::perms::all) ==
        (std::filesystem::perms::owner_read | std::filesystem::perms::owner_write));
}

TEST_CASE("restore_signals false keeps what this process ignores and blocks") {
  struct sigaction ignore {
  }, old{};
  ignore.sa_handler = SIG_IGN;
  ::sigaction(SIGPIPE, &ignore, &old);
  sigset_t usr1, old_mask;
  sigemptyset(&usr1);
  sigaddset(&usr1, SIGUSR1);
  ::pthread_sigmask(SIG_BLOCK, &usr1, &old_mask);
  // What this thread ignores and blocks now (a shell's background job also ignores
  // SIGINT and SIGQUIT, so not just what this test set).
  std::ifstream own_file("/proc/thread-self/status");
  std::string own((std::istreambuf_iterator<char>(own_file)), std::istreambuf_iterator<char>());
  auto ignored = std::stoull(status_field(own, "SigIgn"), nullptr, 16);
  auto blocked = std::stoull(status_field(own, "SigBlk"), nullptr, 16);
  REQUIRE((ignored & (1ull << (SIGPIPE - 1))) != 0);
  REQUIRE((blocked & (1ull << (SIGUSR1 - 1))) != 0);
  auto spawned = run(coproc::run({"cat", "/proc/self/status"},
                                 {.out = coproc::stdio::pipe, .restore_signals = false}));
  auto cloned =
      run(coproc::run({"cat", "/proc/self/status"},
                      {.out = coproc::stdio::pipe, .umask = 022, .restore_signals = false}));
  ::pthread_sigmask(SIG_SETMASK, &old_mask, nullptr);
  ::sigaction(SIGPIPE, &old, nullptr);
  for (auto* r : {&spawned, &cloned}) {
    // Exactly what this thread ignores and blocks (glibc's 32/33 not ignored).
    CHECK(std::stoull(status_field(r->out, "SigIgn"), nullptr, 16) == ignored);
    CHECK(std::stoull(status_field(r->out, "SigBlk"), nullptr, 16) == blocked);
  }
}

TEST_CASE("user group and extra_groups by name and by id") {
  REQUIRE(::getuid() == 0); // the tests run as root
  CHECK(run(coproc::check_output({"id", "-u"}, {.user = "nobody"})) == "65534\n");
  CHECK(run(coproc::check_output({"id", "-u"}, {.user = 65534})) == "65534\n");
  CHECK(run(coproc::check_output({"id", "-g"}, {.group = 65534})) == "65534\n");
  CHECK(run(coproc::check_output(
            {"id", "-G"}, {.user = 65534, .group = "nogroup", .extra_groups = {{"users", 4}}})) ==
        "65534 4 100\n");
  CHECK(run(coproc::check_output(
            {"id", "-G"}, {.user = 65534, .group = 65534, .extra_groups = {{}}})) == "65534\n");
  // The user can no longer do what root can.
  CHECK(run(coproc::call({"sh", "-c", "echo x > /root/coproc-user-test"},
                         {.err = coproc::stdio::devnull, .user = 65534})) != 0);
  auto e =
      thrown_by<std::invalid_argument>(coproc::call({"true"}, {.user = "no-such-user-coproc"}));
  CHECK(std::string(e.what()).find("no-such-user-coproc") != std::string::npos);
  auto g =
      thrown_by<std::invalid_argument>(coproc::call({"true"}, {.group = "no-such-group-coproc"}));
  CHECK(std::string(g.what()).find("no-such-group-coproc") != std::string::npos);
  CHECK(coproc_test::live_children().empty());
}

TEST_CASE("pass_fds keeps exactly those descriptors under their numbers") {
  int fds[2];
  REQUIRE(::pipe(fds) == 0); // not close-on-exec: only pass_fds may let it through
  int passed = ::fcntl(fds[1], F_DUPFD_CLOEXEC, 50);
  int other = ::fcntl(fds[1], F_DUPFD, 60);
  REQUIRE(passed >= 50);
  REQUIRE(other >= 60);
  auto listing = run(coproc::check_output({"sh", "-c", "ls /proc/$$/fd"}, {.pass_fds = {passed}}));
  std::vector<std::string> names;
  std::istringstream in(listing);
  for (std::string n; in >> n;) names.push_back(n);
  CHECK(names == std::vector<std::string>{"0", "1", "2", std::to_string(passed)});
  // The child can write to it (dash's >&N takes one digit only).
  run(coproc::check_call({"sh", "-c", "echo hi > /dev/fd/$0", std::to_string(passed)},
                         {.pass_fds = {passed}}));
  for (int fd : {fds[1], passed, other}) ::close(fd);
  char buf[8] = {};
  CHECK(::read(fds[0], buf, sizeof buf) == 3);
  CHECK(std::string(buf) == "hi\n");
  ::close(fds[0]);
  auto e = thrown_by<std::system_error>(coproc::call({"true"}, {.pass_fds = {777}}));
  CHECK(e.code().value() == EBADF);
  CHECK(std::string(e.what()).find("descriptor 777") != std::string::npos);
}

namespace {
// The process group; 0 once the process is gone.
int pgid_of(int pid) {
  auto stat = coproc_test::read_proc_stat(pid);
  return stat ? stat->pgrp : 0;
}
} // namespace

TEST_CASE("process_group 0 leads a new group another child can join and kill reaches both") {
  run([]() -> coproc::awaitable<void> {
    auto ex = co_await asio::this_coro::executor;
    coproc::popen leader(ex, {"sleep", "30"}, {.process_group = 0});
    coproc::popen member(ex, {"sleep", "30"}, {.process_group = leader.pid()});
    CHECK(pgid_of(leader.pid()) == leader.pid());
    CHECK(pgid_of(member.pid()) == leader.pid());
    CHECK(::getpgrp() != leader.pid());
    leader.kill(); // the group it leads
    CHECK(co_await member.wait() == -SIGKILL);
    CHECK(co_await leader.wait() == -SIGKILL);
    CHECK_THROWS_AS((void)coproc::run({"true"}, {.start_new_session = true, .process_group = 0}),
                    std::invalid_argument);
  }());
}

TEST_CASE("executable is run while args[0] is what the child sees") {
  CHECK(run(coproc::check_output({"my-shell", "-c", "echo $0"}, {.executable = "/bin/sh"})) ==
        "my-shell\n");
  CHECK(run(coproc::check_output({"also-mine", "-c", "echo $0"}, {.executable = "sh"})) ==
        "also-mine\n");
  auto e =
      thrown_by<std::system_error>(coproc::call({"x"}, {.executable = "no-such-program-coproc"}));
  CHECK(std::string(e.what()).find("no-such-program-coproc") != std::string::npos);
}

TEST_CASE("kill_on_destroy kills the child of a destroyed popen and the runtime reaps it") {
  int pid = 0;
  {
    asio::io_context ctx;
    coproc::popen p(ctx.get_executor(), {"sleep", "30"}, {.kill_on_destroy = true});
    pid = p.pid();
  }
  CHECK(dies_within(pid, 5000ms));
  int group_pid = 0;
  {
    asio::io_context ctx;
    coproc::popen p(
        ctx.get_executor(), {"sh", "-c", "sleep 30 & wait"},
        {.start_new_session = true, .out = coproc::stdio::pipe, .kill_on_destroy = true});
    group_pid = p.pid();
  }
  CHECK(dies_within(group_pid, 5000ms));
}

// ---- lines, getoutput ------------------------------------------------------------------

TEST_CASE("line_reader yields lines as they arrive") {
  auto lines = run([]() -> coproc::awaitable<std::vector<std::string>> {
    auto ex = co_await asio::this_coro::executor;
    // Each line waits for the test to answer the one before: nothing arrives early.
    coproc::popen p(ex, {"sh", "-c", "echo one; read a; echo two; read b; printf three"},
                    {.in = coproc::stdio::pipe, .out = coproc::stdio::pipe});
    auto reader = p.stdout_lines();
    std::vector<std::string> got;
    while (auto line = co_await reader.next()) {
      got.push_back(*line);
      if (got.size() < 3) {
        CHECK_FALSE(p.poll().has_value());
        co_await asio::async_write(p.stdin_pipe(), asio::buffer("\n", 1), asio::use_awaitable);
      }
    }
    CHECK(co_await p.wait() == 0);
    co_return got;
  }());
  CHECK(lines == std::vector<std::string>{"one", "two", "three"});
}

TEST_CASE("a line over the bound is line_too_long and the next line follows") {
  auto got = run([]() -> coproc::awaitable<std::vector<std::string>> {
    auto ex = co_await asio::this_coro::executor;
    coproc::popen p(ex,
                    {"sh", "-c",
                     "echo short; head -c 300000 /dev/zero | tr '\\0' a; echo; echo after; head -c "
                     "5000 /dev/zero"},
                    {.out = coproc::stdio::pipe});
    auto reader = p.stdout_lines(1000);
    std::vector<std::string> lines;
    lines.push_back(*co_await reader.next());
    try {
      co_await reader.next();
      FAIL("no line_too_long");
    } catch (const coproc::line_too_long& e) {
      CHECK(std::string(e.what()).find("1000 bytes") != std::string::npos);
    }
    lines.push_back(*co_await reader.next());
    // The last, unterminated line is too long as well.
    CHECK_THROWS_AS(co_await reader.next(), coproc::line_too_long);
    CHECK_FALSE((co_await reader.next()).has_value());
    CHECK(co_await p.wait() == 0);
    co_return lines;
  }());
  CHECK(got == std::vector<std::string>{"short", "after"});
}

TEST_CASE("getoutput and getstatusoutput strip one newline and join stderr") {
  CHECK(run(coproc::getoutput("echo out; echo err >&2")) == "out\nerr");
  CHECK(run(coproc::getoutput("printf 'a\\n\\n'")) == "a\n");
  auto [status, out] = run(coproc::getstatusoutput("echo failing; exit 3"));
  CHECK(status == 3);
  CHECK(out == "failing");
  auto [killed, none] = run(coproc::getstatusoutput("kill -9 $$"));
  CHECK(killed == -9);
  CHECK(none.empty());
}
