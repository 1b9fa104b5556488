// coproc/detail/shared_block.hpp — the shared memory and the wake-up descriptors of one
// queue or synchronization object (lib/shared_block.cpp).
//
// A block is one memfd, mapped MAP_SHARED, and one or two eventfds that count wake tokens
// (EFD_SEMAPHORE, non-blocking): a forked child inherits all three, and a fresh image
// (spawn, forkserver) gets them as a process argument (detail/travel.hpp) and maps the same
// memory, at another address, so nothing in it is a pointer. What lives in the memory and
// who sleeps on which eventfd is the owner's business (detail/queue_ring.hpp,
// lib/sync_block.hpp).
#pragma once

#include <cstddef>
#include <cstdint>

namespace coproc::wire {
class output_archive;
class input_archive;
} // namespace coproc::wire

namespace coproc::detail {

class fd_departure;
class fd_arrival;

class shared_block {
public:
  static constexpr unsigned max_events = 2;

  // How a block travelled: its descriptors' indices in the arrival and its size. Read
  // first, so that an owner already rebuilt from an earlier argument adopts nothing twice.
  struct description {
    std::uint32_t memfd = 0;
    std::uint32_t events = 0;
    std::uint32_t event_fd[max_events] = {};
    std::uint64_t size = 0;
  };

  // `bytes` zeroed bytes and `events` eventfds; `what` names the owner in errors
  // ("coproc::queue"). std::system_error if one of them cannot be made.
  shared_block(std::size_t bytes, unsigned events, const char* what);
  // Adopts the descriptors that arrived; coproc::error if they are not a block of
  // `bytes` bytes (0: any size) with that many eventfds.
  shared_block(const description& d, fd_arrival& fds, std::size_t bytes, unsigned events,
               const char* what);
  shared_block(const shared_block&) = delete;
  shared_block& operator=(const shared_block&) = delete;
  ~shared_block();

  void* base() const noexcept { return base_; }
  std::size_t size() const noexcept { return size_; }
  int event_fd(unsigned i) const noexcept { return event_fd_[i]; }
  const char* what() const noexcept { return what_; }

  // Adds tokens to eventfd i (a full counter, EAGAIN, is left as it is: sleepers are due
  // to wake anyway).
  void signal(unsigned i, std::uint64_t tokens) noexcept;
  // Takes one token of eventfd i if there is one (another sleeper may have taken it).
  void take_token(unsigned i) noexcept;

  // The descriptors go into the departure, their indices and the size into the archive.
  void travel(wire::output_archive& ar, fd_departure& fds) const;
  static description read(wire::input_archive& ar);

private:
  void map();
  void release() noexcept;

  void* base_ = nullptr;
  std::size_t size_ = 0;
  int memfd_ = -1;
  unsigned events_ = 0;
  int event_fd_[max_events] = {-1, -1};
  const char* what_;
};

} // namespace coproc::detail
