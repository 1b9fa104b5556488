// The fresh-image entry (coproc/main_guard.hpp) and what only a process started with
// start_method::spawn does: its targets, arguments and statics, classes and subclasses,
// shared libcoproc. What spawn and forkserver children both do (every behaviour a forked
// one has) is in test_fresh_children.cpp.
#include <coproc/main_guard.hpp>
#include <coproc/process.hpp>
#include <coproc/subprocess.hpp>

#include <doctest/doctest.h>

#include "support/checks.hpp"
#include "support/daemon.hpp"
#include "support/fresh_image.hpp"

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <iostream>
#include <map>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

using namespace std::chrono_literals;
using coproc_test::run;
using namespace coproc_test::fresh_image;

extern char** environ;

namespace {

constexpr auto spawn = coproc::start_method::spawn;

int g_parent_state = 0; // set at run time by the parent: a fresh image never sees it
int parent_state() { return g_parent_state; }

// A static object with a constructor: built in the fresh image before its target runs.
struct constructed {
  int value = 0;
  constructed() : value(42) {}
};
constructed g_constructed;
int read_static() { return g_constructed.value; }

std::string self_exe() { return std::filesystem::read_symlink("/proc/self/exe").string(); }

std::map<std::string, std::string> environment_with(const std::string& name,
                                                    const std::string& value) {
  std::map<std::string, std::string> env;
  for (char** e = environ; *e; ++e) {
    std::string entry(*e);
    auto eq = entry.find('=');
    if (eq != std::string::npos) env[entry.substr(0, eq)] = entry.substr(eq + 1);
  }
  env[name] = value;
  return env;
}

// A function object with state and a serialize: it travels as its encoding.
struct scaled {
  int factor = 0;
  int operator()(int x) const { return factor * x; }
  template <class Archive> void serialize(Archive& ar) { ar(factor); }
};
// With state and no serialize: cannot be told from a closure.
struct opaque_functor {
  int factor = 3;
  int operator()() const { return factor; }
};

class unregistered : public coproc::process {
public:
  unregistered()
      : coproc::process(coproc::process_options{.method = coproc::start_method::spawn}) {}
  template <class Archive> void serialize(Archive&) {}

protected:
  void run() override {}
};

} // namespace

namespace app {
// A subclass that may start with spawn: registered below, its state in serialize.
class greeter : public coproc::process {
public:
  greeter() = default;
  greeter(std::string greeting, int times)
      : coproc::process(coproc::process_options{.method = coproc::start_method::spawn}),
        greeting_(std::move(greeting)), times_(times) {}
  template <class Archive> void serialize(Archive& ar) { ar(greeting_, times_); }

protected:
  void run() override {
    for (int i = 0; i < times_; ++i) std::cout << greeting_ << " from " << name() << '\n';
    if (coproc::this_process::name() != name()) throw std::logic_error("the names differ");
  }

private:
  std::string greeting_;
  int times_ = 0;
};
} // namespace app

COPROC_REGISTER_PROCESS(app::greeter);

TEST_CASE("spawn: targets may return int, awaitable<void> or awaitable<int>") {
  coproc::process i({.method = spawn}, [] { return 3; });
  coproc::process av({.method = spawn},
                     []() -> coproc::awaitable<void> { co_await coproc::sleep(1ms); });
  coproc::process ai(
      {.method = spawn},
      [](int x) -> coproc::awaitable<int> {
        co_await coproc::sleep(1ms);
        co_return x + 1;
      },
      4);
  for (auto* p : {&i, &av, &ai}) p->start();
  CHECK(join(i) == 3);
  CHECK(join(av) == 0);
  CHECK(join(ai) == 5);
}

TEST_CASE("spawn: arguments cross in the wire format") {
  coproc::process p(
      {.method = spawn},
      [](std::string s, std::vector<int> v, std::map<std::string, int> m, double d) {
        return s == "text" && v == std::vector<int>{1, 2, 3} && m.at("k") == 9 && d == 2.5 ? 0 : 1;
      },
      std::string("text"), std::vector<int>{1, 2, 3}, std::map<std::string, int>{{"k", 9}}, 2.5);
  p.start();
  CHECK(join(p) == 0);
}

namespace {
std::string own_command_line() {
  std::ifstream in("/proc/self/cmdline");
  return {std::istreambuf_iterator<char>(in), {}};
}
} // namespace

// ctest runs each case with arguments (--test-case=...), which the child then has too.
TEST_CASE("spawn: the child has main's argv, as a fork child has, for ps and pkill -f") {
  coproc::process p(
      {.method = spawn}, [](std::string parent) { return own_command_line() == parent ? 0 : 1; },
      own_command_line());
  p.start();
  CHECK(join(p) == 0);
}

TEST_CASE("main_guard refuses an argc and argv that are not main's") {
  for (auto [argc, argv] : {std::pair<int, char**>{-1, nullptr}, {2, nullptr}}) {
    std::string what;
    try {
      coproc::main_guard(argc, argv);
    } catch (const std::invalid_argument& e) {
      what = e.what();
    }
    CHECK(what.find("coproc::main_guard(argc, argv): argc " + std::to_string(argc)) !=
          std::string::npos);
  }
}

TEST_CASE("spawn: the child is a fresh image with the program's statics constructed") {
  g_parent_state = 7;
  coproc::process forked(parent_state);
  coproc::process fresh({.method = spawn}, parent_state);
  coproc::process statics({.method = spawn}, read_static);
  for (auto* p : {&forked, &fresh, &statics}) p->start();
  CHECK(join(forked) == 7);
  CHECK(join(fresh) == 0);
  CHECK(join(statics) == 42);
  g_parent_state = 0;

  // Nothing of coproc's start-up is left in it: no COPROC_FRESH_IMAGE for its own
  // children, no descriptor of the parent but 0-2.
  int fds[2];
  REQUIRE(::pipe(fds) == 0); // not close-on-exec
  coproc::process clean(
      {.method = spawn},
      [](int a, int b) {
        bool env = std::getenv("COPROC_FRESH_IMAGE") == nullptr;
        bool closed = ::fcntl(a, F_GETFD) < 0 && ::fcntl(b, F_GETFD) < 0;
        return env && closed ? 0 : 1;
      },
      fds[0], fds[1]);
  clean.start();
  CHECK(join(clean) == 0);
  ::close(fds[0]);
  ::close(fds[1]);
}

TEST_CASE("spawn: a class with a serialize is a target, a class without one is refused") {
  coproc::process p({.method = spawn}, scaled{3}, 5);
  p.start();
  CHECK(join(p) == 15);
  coproc::process opaque({.name = "opaque", .method = spawn}, opaque_functor{});
  CHECK_THROWS_WITH_AS(opaque.start(), doctest::Contains("without a cereal serialize"),
                       std::invalid_argument);
  coproc::process forked({.method = coproc::start_method::fork}, opaque_functor{});
  forked.start();
  CHECK(join(forked) == 3);
}

TEST_CASE(
    "spawn: a registered subclass is rebuilt from its serialize, an unregistered one is refused") {
  auto out = capture(1, [] {
    app::greeter g("hello", 2);
    g.name("greeter");
    g.start();
    CHECK(join(g) == 0);
  });
  CHECK(out == "hello from greeter\nhello from greeter\n");
  unregistered u;
  u.name("plain");
  CHECK_THROWS_WITH_AS(u.start(), doctest::Contains("COPROC_REGISTER_PROCESS"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(u.start(), doctest::Contains("process 'plain'"), std::invalid_argument);
}

TEST_CASE("a program without main_guard gets a logic_error naming the missing line") {
  auto r = run(coproc::run({COPROC_NO_MAIN_GUARD}, {.capture_output = true, .timeout = 60s}));
  CHECK(r.returncode == 0);
  CHECK(r.out.find("process: process 'unguarded': ") != std::string::npos);
  CHECK(r.out.find("pool: coproc::pool: ") != std::string::npos);
  CHECK(r.out.find("served process: process 'unserved': ") != std::string::npos);
  CHECK(r.out.find("served pool: coproc::pool: ") != std::string::npos);
  CHECK(r.out.find("preload: coproc::forkserver_preload: ") != std::string::npos);
  CHECK(r.out.find("coproc::main_guard(argc, argv) as the first statement of main()") !=
        std::string::npos);
  CHECK(r.out.find("started") == std::string::npos);
  CHECK(r.out.find("made") == std::string::npos);
  CHECK(r.out.find("preloaded") == std::string::npos);
  CHECK(r.out.find("fork: 3") != std::string::npos);
}

TEST_CASE("a fresh image started by hand with a garbage coproc environment fails clearly") {
  temp_dir dir;
  {
    std::ofstream garbage(dir.file("garbage"));
    garbage << "this is not a payload";
  }
  struct attempt {
    std::string value;
    std::string redirect; // the shell's redirection of descriptor 3
    std::string says;
  };
  std::vector<attempt> attempts{
      {"garbage", "", "names no kind"},
      {"process", "", "descriptor 3"},
      {"pool_worker", "", "descriptor 3"},
      {"process", "3</dev/zero", "descriptor 3"}, // never ends: must not be read
      {"process", "3<\"$1\"", "does not decode"},
  };
  for (const auto& a : attempts) {
    CAPTURE(a.value);
    CAPTURE(a.redirect);
    auto r = run(coproc::run({"exec \"$0\" " + a.redirect, self_exe(), dir.file("garbage")},
                             {.env = environment_with("COPROC_FRESH_IMAGE", a.value),
                              .shell = true,
                              .capture_output = true,
                              .timeout = 60s}));
    CHECK(r.returncode == 70);
    CHECK(r.err.find("COPROC_FRESH_IMAGE=" + a.value) != std::string::npos);
    CHECK(r.err.find(a.says) != std::string::npos);
    CHECK(r.out.empty()); // no test ran
  }
}

// What support/spawn_helper.cpp prints, linked with libcoproc either way.
const std::string helper_output = "process: 42\n"
                                  "spawn pool: 42 42 43 A\n"
                                  "forkserver pool: 42 42 43 A\n"
                                  "remote pool: 42 B\n"
                                  "plugin by spawn: refused, naming it\n"
                                  "plugin by fork: 9\n";

TEST_CASE("a spawned target finds the statics of a library linked after libcoproc constructed") {
  auto r = run(coproc::run({COPROC_SPAWN_STATIC}, {.capture_output = true, .timeout = 60s}));
  CHECK(r.returncode == 0);
  CHECK(r.out == helper_output);
  CHECK(r.err.empty());
}

TEST_CASE("spawn, forkserver and remote pools work through a shared libcoproc") {
  auto r = run(coproc::run({COPROC_SPAWN_SHARED}, {.capture_output = true, .timeout = 60s}));
  CHECK(r.returncode == 0);
  CHECK(r.out == helper_output);
  CHECK(r.err.empty());
}
