// Seed 003, "multiprocessing": start one child with an argument and wait for it.
#include <coproc/coproc.hpp>

#include <cstdio>
#include <string>

void run_proc(const std::string& name) {
  std::printf("子进程运行中，name= %s ,pid=%d...\n", name.c_str(), coproc::getpid());
}

int main() {
  std::printf("父进程 %d.\n", coproc::getpid());
  coproc::process p(run_proc, std::string("test"));
  std::printf("子进程将要执行\n");
  p.start();
  coproc::block_on(p.join());
  std::printf("子进程已结束\n");
}
