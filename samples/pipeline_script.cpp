// A shell script, written with coproc the way its author would write it in sh:
//
//   seq 1 2000 | grep 7 | wc -l > "$dir/sevens.txt"       # a 3-stage pipeline into a file
//   sh -c 'for i in 1 2 3; do echo step $i; done' | while read line; do ...; done
//   setsid-like worker: its own process group, killed with its children on Ctrl-C
//
// Ctrl-C (SIGINT) while the worker runs kills its whole group and reaps it; run without a
// terminal, or without pressing Ctrl-C, the script just completes. Output is the same on
// every run.
#include <coproc/pipeline.hpp>
#include <coproc/run.hpp>
#include <coproc/subprocess.hpp>

#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/signal_set.hpp>

#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

namespace asio = boost::asio;
using namespace asio::experimental::awaitable_operators;

coproc::awaitable<int> script() {
  auto ex = co_await asio::this_coro::executor;
  // From the start, so that a Ctrl-C is never the default action (death) for the script;
  // the commands of the first steps, in the terminal's group, get it from the terminal.
  asio::signal_set interrupt(ex, SIGINT);
  char name[] = "/tmp/pipeline-script-XXXXXX";
  std::filesystem::path dir = ::mkdtemp(name);

  // seq 1 2000 | grep 7 | wc -l > sevens.txt
  std::printf("$ seq 1 2000 | grep 7 | wc -l > sevens.txt\n");
  auto counted =
      co_await coproc::run_pipeline({{"seq", "1", "2000"}, {"grep", "7"}, {"wc", "-l"}},
                                    {.check = true, .out = coproc::to_file(dir / "sevens.txt")});
  std::string sevens;
  std::ifstream(dir / "sevens.txt") >> sevens;
  std::printf("sevens.txt: %s (stage codes %d %d %d)\n", sevens.c_str(), counted.returncodes[0],
              counted.returncodes[1], counted.returncodes[2]);

  // Lines as they arrive, not once the command has ended.
  std::printf("$ sh -c 'for i in 1 2 3; do echo step $i; sleep 0.1; done'\n");
  coproc::popen steps(ex, {"sh", "-c", "for i in 1 2 3; do echo step $i; sleep 0.1; done"},
                      {.out = coproc::stdio::pipe});
  auto lines = steps.stdout_lines();
  while (auto line = co_await lines.next()) std::printf("  got: %s\n", line->c_str());
  std::printf("exit code %d\n", co_await steps.wait());

  // A worker with children of its own, in its own process group: Ctrl-C kills them all.
  std::printf("$ worker (its own process group; Ctrl-C kills it and its children)\n");
  coproc::popen worker(ex, {"sh", "-c", "sleep 1 & sleep 1 & wait; echo worker done"},
                       {.out = coproc::stdio::pipe, .process_group = 0});
  auto output = worker.stdout_lines();
  auto outcome = co_await (output.next() || interrupt.async_wait(asio::use_awaitable));
  if (outcome.index() == 0) {
    auto line = std::get<0>(outcome);
    std::printf("  %s\n", line ? line->c_str() : "(no output)");
  } else {
    worker.kill(); // SIGKILL to the whole group: the sleeps too
    std::printf("  interrupted: worker group killed\n");
  }
  int code = co_await worker.wait();
  std::printf("worker exit code %d\n", code);

  std::filesystem::remove_all(dir);
  co_return 0;
}

int main() { return coproc::block_on(script()); }
