#include <coproc/detail/travel.hpp>

#include <fcntl.h>

#include <cerrno>
#include <cstring>

namespace coproc::detail {

int fd_arrival::fd(std::uint32_t index) const {
  if (index >= count_)
    throw coproc::error("coproc: an argument names descriptor " + std::to_string(index) +
                        " of the " + std::to_string(count_) + " that travelled with this child");
  const int fd = first_ + static_cast<int>(index);
  // Close-on-exec, as the parent's handle was: a program this child execs does not hold
  // the queue or the pipe end open.
  if (::fcntl(fd, F_SETFD, FD_CLOEXEC) != 0)
    throw coproc::error("coproc: descriptor " + std::to_string(fd) +
                        " did not arrive with this child: " + std::strerror(errno));
  return fd;
}

} // namespace coproc::detail
