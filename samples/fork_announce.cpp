// Seed 004, "fork()系统调用": announce, fork, and both sides say who they are.
#include <coproc/coproc.hpp>

#include <sys/wait.h>

#include <cstdio>

void test_fork() {
  std::printf("Prosess %d started...\n", coproc::getpid());
  int pid = coproc::fork();
  std::printf("%d\n", pid);
  if (pid == 0) {
    std::printf("I am the child prosess(%d) and my parent is %d\n", coproc::getpid(),
                coproc::getppid());
    return;
  }
  std::printf("I(%d) just created the child prosess(%d)\n", coproc::getpid(), pid);
  ::waitpid(pid, nullptr, 0);
}

int main() { test_fork(); }
