// Seed 000, "os.fork()": both processes run the code after fork; fork returns 0 in
// the child and the child's pid in the parent. Prints "2" (parent) and "1" (child).
#include <coproc/coproc.hpp>

#include <sys/wait.h>

#include <cstdio>

int main() {
  int pid = coproc::fork();

  // Both the parent and the child run what follows.
  if (pid == 0) {
    std::printf("1\n");
    return 0;
  }
  std::printf("2\n");
  ::waitpid(pid, nullptr, 0); // a raw fork's child is reaped by hand, as in Python
}
