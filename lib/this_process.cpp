#include <coproc/this_process.hpp>

#include <coproc/detail/child.hpp>

#include <unistd.h>

namespace coproc {

int getpid() { return ::getpid(); }
int getppid() { return ::getppid(); }

int fork() { return detail::fork_flushed("coproc::fork: fork() failed"); }

unsigned cpu_count() {
  long n = ::sysconf(_SC_NPROCESSORS_ONLN);
  return n > 0 ? static_cast<unsigned>(n) : 1u;
}

std::string this_process::name() { return detail::process_name(); }

} // namespace coproc
