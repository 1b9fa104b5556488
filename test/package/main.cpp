// Starts a child through an installed coproc and checks its exit code.
#include <coproc/coproc.hpp>

#include <cstdio>

int main() {
  coproc::process p([] { return 42; });
  p.start();
  int code = coproc::block_on(p.join());
  std::printf("consumer: child exited with %d\n", code);
  return code == 42 ? 0 : 1;
}
