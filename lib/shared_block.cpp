#include <coproc/detail/fd_wait.hpp>
#include <coproc/detail/shared_block.hpp>
#include <coproc/detail/travel.hpp>
#include <coproc/errors.hpp>
#include <coproc/wire.hpp>

#include "os.hpp"

#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <string>

namespace coproc::detail {

shared_block::shared_block(std::size_t bytes, unsigned events, const char* what)
    : size_(bytes), events_(events), what_(what) {
  try {
    // A memfd rather than an anonymous mapping: its descriptor can travel to a fresh image.
    memfd_ = ::memfd_create(what, MFD_CLOEXEC);
    if (memfd_ < 0) throw_errno(errno, std::string(what) + ": memfd_create");
    if (::ftruncate(memfd_, static_cast<off_t>(size_)) != 0)
      throw_errno(errno, std::string(what) + ": sizing its shared memory to " +
                             std::to_string(size_) + " bytes");
    map();
    for (unsigned i = 0; i < events_; ++i) {
      event_fd_[i] = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC | EFD_SEMAPHORE);
      if (event_fd_[i] < 0) throw_errno(errno, std::string(what) + ": eventfd");
    }
  } catch (...) {
    release();
    throw;
  }
}

shared_block::shared_block(const description& d, fd_arrival& fds, std::size_t bytes,
                           unsigned events, const char* what)
    : size_(static_cast<std::size_t>(d.size)), what_(what) {
  try {
    memfd_ = fds.fd(d.memfd);
    if (d.events != events || (bytes != 0 && d.size != bytes))
      throw coproc::error(std::string(what) + ": what arrived with this child is a block of " +
                          std::to_string(d.size) + " bytes and " + std::to_string(d.events) +
                          " eventfds, not of " + std::to_string(bytes) + " and " +
                          std::to_string(events));
    for (unsigned i = 0; i < events; ++i) {
      event_fd_[i] = fds.fd(d.event_fd[i]);
      events_ = i + 1;
    }
    struct stat st;
    if (::fstat(memfd_, &st) != 0 || static_cast<std::uint64_t>(st.st_size) != d.size)
      throw coproc::error(std::string(what) +
                          ": the shared memory that arrived with this child "
                          "is not the block of " +
                          std::to_string(d.size) + " bytes it was sent as");
    map();
  } catch (...) {
    release();
    throw;
  }
}

void shared_block::map() {
  void* p = ::mmap(nullptr, size_, PROT_READ | PROT_WRITE, MAP_SHARED, memfd_, 0);
  if (p == MAP_FAILED)
    throw_errno(errno, std::string(what_) + ": mmap of " + std::to_string(size_) + " bytes");
  base_ = p;
}

shared_block::~shared_block() { release(); }

void shared_block::release() noexcept {
  for (unsigned i = 0; i < events_; ++i) {
    if (event_fd_[i] < 0) continue;
    forget_fd(event_fd_[i]);
    ::close(event_fd_[i]);
  }
  // Whatever lives in the memory stays: other processes may still use it.
  if (base_) ::munmap(base_, size_);
  if (memfd_ >= 0) ::close(memfd_);
}

// The eventfds count wake tokens (EFD_SEMAPHORE): a wake-up adds one per counted sleeper
// and each sleeper that wakes takes one, so sleepers in other processes still find theirs
// (Asio looks at an fd's readiness again when a wait starts, so an eventfd that stayed
// readable would never let a wait sleep).
void shared_block::signal(unsigned i, std::uint64_t tokens) noexcept {
  (void)!::write(event_fd_[i], &tokens, sizeof tokens);
}

void shared_block::take_token(unsigned i) noexcept {
  std::uint64_t token;
  (void)!::read(event_fd_[i], &token, sizeof token); // EAGAIN: another sleeper took it
}

void shared_block::travel(wire::output_archive& ar, fd_departure& fds) const {
  description d;
  d.memfd = fds.add(memfd_);
  d.events = events_;
  for (unsigned i = 0; i < events_; ++i) d.event_fd[i] = fds.add(event_fd_[i]);
  d.size = size_;
  ar(d.memfd, d.events, d.event_fd[0], d.event_fd[1], d.size);
}

shared_block::description shared_block::read(wire::input_archive& ar) {
  description d;
  ar(d.memfd, d.events, d.event_fd[0], d.event_fd[1], d.size);
  if (d.events > max_events)
    throw coproc::error("coproc: a shared block arrived with " + std::to_string(d.events) +
                        " eventfds");
  return d;
}

} // namespace coproc::detail
