// A program that forgets coproc::main_guard: test_main_guard runs it and reads what a
// spawn start, a spawn pool, a forkserver start, a forkserver pool and forkserver_preload
// say.
#include <coproc/pool.hpp>
#include <coproc/process.hpp>
#include <coproc/run.hpp>
#include <coproc/start_method.hpp>

#include <boost/asio/io_context.hpp>

#include <cstdio>
#include <stdexcept>

int main() {
  try {
    coproc::process p({.name = "unguarded", .method = coproc::start_method::spawn}, [] {});
    p.start();
    std::puts("process started");
  } catch (const std::logic_error& e) {
    std::printf("process: %s\n", e.what());
  }
  try {
    boost::asio::io_context ctx;
    coproc::pool pool(ctx.get_executor(), {.processes = 1, .method = coproc::start_method::spawn});
    std::puts("pool made");
  } catch (const std::logic_error& e) {
    std::printf("pool: %s\n", e.what());
  }
  try {
    coproc::process p({.name = "unserved", .method = coproc::start_method::forkserver}, [] {});
    p.start();
    std::puts("served process started");
  } catch (const std::logic_error& e) {
    std::printf("served process: %s\n", e.what());
  }
  try {
    boost::asio::io_context ctx;
    coproc::pool pool(ctx.get_executor(),
                      {.processes = 1, .method = coproc::start_method::forkserver});
    std::puts("served pool made");
  } catch (const std::logic_error& e) {
    std::printf("served pool: %s\n", e.what());
  }
  try {
    coproc::forkserver_preload();
    std::puts("server preloaded");
  } catch (const std::logic_error& e) {
    std::printf("preload: %s\n", e.what());
  }
  // fork needs no guard.
  coproc::process forked([] { return 3; });
  forked.start();
  std::printf("fork: %d\n", coproc::block_on(forked.join()));
}
