// Spawns targets that read a static of a library linked after libcoproc, and runs pools
// of every start method beyond fork; built against a static and against a shared
// libcoproc (test_main_guard runs both, and expects the same output of each).
#include <coproc/main_guard.hpp>
#include <coproc/pool.hpp>
#include <coproc/process.hpp>
#include <coproc/run.hpp>

#include "late_static.hpp"
#include "plugin.hpp"

#include <cctype>
#include <cstdio>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

int ready = 0;
void make_ready() { ready = 1; }
int add_ready(int x) { return x + ready; }

// What a pool of `method` answers: the late static, the initializer's mark on two items,
// and a task that is libc's code, not the program's or libcoproc's.
coproc::awaitable<void> pool_answers(coproc::start_method method, const char* name) {
  coproc::pool pool(co_await boost::asio::this_coro::executor,
                    {.processes = 2, .initializer = make_ready, .method = method});
  int value = co_await pool.apply(late_static_value);
  std::vector<int> marked = co_await pool.map(add_ready, std::vector<int>{41, 42});
  int upper = co_await pool.apply(::toupper, 'a');
  std::printf("%s pool: %d %d %d %c\n", name, value, marked[0], marked[1], upper);
  pool.close();
  co_await pool.join();
}

coproc::awaitable<void> remote_pool_answers() {
  coproc::pool pool(co_await boost::asio::this_coro::executor,
                    {.remote = coproc::remote_workers{
                         .launcher = {"env"}, .processes = 1, .listen = "127.0.0.1:0"}});
  std::printf("remote pool: %d %c\n", co_await pool.apply(late_static_value),
              co_await pool.apply(::toupper, 'b'));
  pool.close();
  co_await pool.join();
}

// A plugin loaded after main_guard is in no fresh image: refused, but fork runs it.
coproc::awaitable<void> plugin_answers() {
  auto ex = co_await boost::asio::this_coro::executor;
  auto* triple = coproc_test::plugin_function<int(int)>("coproc_test_plugin_triple");
  coproc::pool spawned(ex, {.processes = 1, .method = coproc::start_method::spawn});
  try {
    co_await spawned.apply(triple, 3);
    std::printf("plugin by spawn: ran\n");
  } catch (const std::invalid_argument& e) {
    bool named = std::string(e.what()).find(COPROC_TEST_PLUGIN) != std::string::npos;
    std::printf("plugin by spawn: refused%s\n", named ? ", naming it" : "");
  }
  spawned.close();
  co_await spawned.join();
  coproc::pool forked(ex, {.processes = 1, .method = coproc::start_method::fork});
  std::printf("plugin by fork: %d\n", co_await forked.apply(triple, 3));
  forked.close();
  co_await forked.join();
}

} // namespace

int main(int argc, char** argv) {
  coproc::main_guard(argc, argv);
  coproc::process p({.method = coproc::start_method::spawn}, late_static_value);
  p.start();
  std::printf("process: %d\n", coproc::block_on(p.join()));
  coproc::block_on(pool_answers(coproc::start_method::spawn, "spawn"));
  coproc::block_on(pool_answers(coproc::start_method::forkserver, "forkserver"));
  coproc::block_on(remote_pool_answers());
  coproc::block_on(plugin_answers());
}
