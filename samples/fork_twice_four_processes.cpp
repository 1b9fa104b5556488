// Seed 000, "多次fork": two forks in a row make four processes, so ---11--- and
// ---22--- are each printed twice.
#include <coproc/coproc.hpp>

#include <sys/wait.h>

#include <cstdio>

int main() {
  int first = coproc::fork();
  std::printf(first == 0 ? "---1---\n" : "---2---\n");

  int second = coproc::fork();
  std::printf(second == 0 ? "---11---\n" : "---22---\n");

  // Each process reaps the children it made, so the sample ends after all four print.
  if (second != 0) ::waitpid(second, nullptr, 0);
  if (first != 0) ::waitpid(first, nullptr, 0);
}
