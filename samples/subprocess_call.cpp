// Seed 004, "subprocess创建进程": print the command, run it, print its exit code.
//
// The seed runs `nslookup www.python.org`. nslookup is not installed on a bare Debian
// machine and the lookup needs a network, so this twin runs `uname -a`, which every
// POSIX system has; the structure is the seed's.
#include <coproc/run.hpp>
#include <coproc/subprocess.hpp>

#include <cstdio>

coproc::awaitable<void> main_coroutine() {
  std::printf("$ uname -a\n");
  // The child writes to the same stdout: flush ours first so the lines keep their
  // order when stdout is a pipe (Python has the same trap with print).
  std::fflush(stdout);
  int r = co_await coproc::call({"uname", "-a"});
  std::printf("Exit code: %d\n", r);
}

int main() { coproc::block_on(main_coroutine()); }
