// Seed 002, "使用Process创建子进程": the child prints its pid and its parent's.
#include <coproc/coproc.hpp>

#include <cstdio>
#include <string>

void test(std::string name) {
  (void)name; // passed as in the seed, unused there too
  std::printf("Process ID： %d\n", coproc::getpid());
  std::printf("Parent Process ID： %d\n", coproc::getppid());
}

int main() {
  coproc::process proc(test, std::string("nmask"));
  proc.start();
  coproc::block_on(proc.join());
}
