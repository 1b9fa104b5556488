// A program that forgets coproc::main_guard: test_main_guard runs it and reads what a
// spawn start and a spawn pool say.
#include <coproc/pool.hpp>
#include <coproc/process.hpp>
#include <coproc/run.hpp>

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
  // fork needs no guard.
  coproc::process forked([] { return 3; });
  forked.start();
  std::printf("fork: %d\n", coproc::block_on(forked.join()));
}
