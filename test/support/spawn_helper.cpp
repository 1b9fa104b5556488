// Spawns targets that read a static of a library linked after libcoproc; built against a
// static and against a shared libcoproc (test_main_guard runs both).
#include <coproc/main_guard.hpp>
#include <coproc/pool.hpp>
#include <coproc/process.hpp>
#include <coproc/run.hpp>

#include "late_static.hpp"

#include <cstdio>

int main(int argc, char** argv) {
  coproc::main_guard(argc, argv);
  coproc::process p({.method = coproc::start_method::spawn}, late_static_value);
  p.start();
  std::printf("process: %d\n", coproc::block_on(p.join()));
#ifdef COPROC_HELPER_POOL
  // A pool's tasks must lie in libcoproc's image: the static build only.
  std::printf("pool: %d\n", coproc::block_on([]() -> coproc::awaitable<int> {
                coproc::pool pool(co_await boost::asio::this_coro::executor,
                                  {.processes = 1, .method = coproc::start_method::spawn});
                int value = co_await pool.apply(late_static_value);
                pool.close();
                co_await pool.join();
                co_return value;
              }()));
#endif
}
