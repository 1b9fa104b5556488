// Seed 000, "全局变量在多任务中的情况": the child changes a global, the parent's copy
// stays 100 — processes do not share variables.
#include <coproc/coproc.hpp>

#include <sys/wait.h>

#include <chrono>
#include <cstdio>
#include <thread>

int num = 100;

int main() {
  int ret = coproc::fork();
  if (ret == 0) {
    std::printf("---子进程---\n");
    num += 1;
    std::printf("子进程:%d\n", num);
    return 0;
  }
  // The seed sleeps 3 s so the child prints first; 1 s shows the same.
  std::this_thread::sleep_for(std::chrono::seconds(1));
  std::printf("---父进程---\n");
  std::printf("父进程:%d\n", num);
  ::waitpid(ret, nullptr, 0);
}
