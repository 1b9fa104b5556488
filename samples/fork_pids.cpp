// Seed 000: fork's return value is the child's pid in the parent; getpid/getppid.
#include <coproc/coproc.hpp>

#include <sys/wait.h>

#include <cstdio>

int main() {
  int res = coproc::fork();
  std::printf("%d\n", res);
  if (res == 0) {
    std::printf("子进程pid：%d   以及其父进程的pid：%d\n", coproc::getpid(), coproc::getppid());
    return 0;
  }
  std::printf("父进程的pid：%d\n", coproc::getpid());
  ::waitpid(res, nullptr, 0);
}
