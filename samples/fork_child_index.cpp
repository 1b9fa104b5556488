// Seed 001, "fork()": each process has its own copy of `index`, so both print 1.
#include <coproc/coproc.hpp>

#include <sys/wait.h>

#include <cstdio>

int main() {
  int id = coproc::fork(); // a failed fork throws std::system_error instead of returning < 0
  int index = 0;
  if (id == 0) {
    index += 1;
    std::printf("我是子进程（%d），我的父进程是：%d,index=%d\n", coproc::getpid(),
                coproc::getppid(), index);
    return 0;
  }
  index += 1;
  std::printf("我是父进程：%d，我的子进程是：%d,index=%d\n", coproc::getpid(), id, index);
  ::waitpid(id, nullptr, 0);
}
