#include "os.hpp"

#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <system_error>

namespace coproc::detail {

void flush_stdio() {
  std::cout.flush();
  std::cerr.flush();
  std::clog.flush();
  std::fflush(nullptr);
}

void exit_child(int code) {
  flush_stdio();
  for (;;) ::syscall(SYS_exit_group, code);
}

void die_with_parent(int parent) {
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (::getppid() != parent) ::_exit(1);
}

void print_process_error(const std::string& name, const std::string& error) {
  std::cerr << "Process " << name << ":\n" << error << std::endl;
}

sigset_t every_signal() noexcept {
  sigset_t all;
  std::memset(&all, 0xff, sizeof all);
  return all;
}

void throw_errno(int err, const std::string& what) {
  throw std::system_error(err, std::generic_category(), what);
}

} // namespace coproc::detail
