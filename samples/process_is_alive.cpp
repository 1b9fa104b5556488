// Seed 004, "multiprocessing的Process": is_alive and pid before start, while running
// and after join.
#include <coproc/coproc.hpp>

#include <cstdio>
#include <string>

void hello(const std::string& name) { std::printf("Hello, %s\n", name.c_str()); }

const char* yes_no(bool b) { return b ? "True" : "False"; }

coproc::awaitable<void> main_process() {
  std::printf("Process(%d) started...\n", coproc::getpid());
  coproc::process pid(hello, std::string("cara"));
  std::printf("Child process is alive? %s!\n", yes_no(pid.is_alive()));
  // Python prints None for the pid of an unstarted process; coproc's pid() is 0.
  std::printf("Child process(%d)is starting ..\n", pid.pid());
  pid.start();
  std::printf("Child process is alive? %s!\n", yes_no(pid.is_alive()));
  co_await pid.join();
  std::printf("Child process is alive? %s!\n", yes_no(pid.is_alive()));
  std::printf("Child process(%d) has been stopped ..\n", pid.pid());
  std::printf("Process(%d) completed...\n", coproc::getpid());
}

int main() { coproc::block_on(main_process()); }
