// coproc/detail/travel.hpp — handles whose descriptors travel with a process's arguments
// to a fresh image (start_method::spawn, forkserver): queue, connection and the objects of
// coproc/sync.hpp.
//
// A fork child inherits a handle's descriptors and memory. A fresh image inherits
// nothing, so a handle among the arguments of a process is encoded as indices into the
// list of descriptors that travel with this one encode (a departure, made by the
// encoding process::start, never shared between threads); whoever launches the child
// makes the i-th of them descriptor `first + i` there, and the child's decode (an
// arrival) rebuilds the handle on those descriptors: the same shared memory, eventfds,
// socket. The same descriptor added twice travels once, and in the child both handles
// share one rebuilt object, as a fork child's copies do.
//
// Only a process argument travels so: such a handle is not wire-serializable
// (wire::detail::process_argument_only), so putting one in a queue, a message or a pool
// task does not compile.
#pragma once

#include <coproc/errors.hpp>
#include <coproc/wire.hpp>

#include <algorithm>
#include <cstdint>
#include <map>
#include <memory>
#include <new>
#include <string>
#include <typeindex>
#include <typeinfo>
#include <utility>
#include <vector>

namespace coproc::detail {

// The parent's side: the descriptors of one encode, in index order (borrowed from the
// handles, which outlive the launch).
class fd_departure {
public:
  std::uint32_t add(int fd) {
    auto it = std::find(fds_.begin(), fds_.end(), fd);
    if (it != fds_.end()) return static_cast<std::uint32_t>(it - fds_.begin());
    fds_.push_back(fd);
    return static_cast<std::uint32_t>(fds_.size() - 1);
  }
  const std::vector<int>& fds() const noexcept { return fds_; }

private:
  std::vector<int> fds_;
};

// The child's side: `count` descriptors from `first` on, and the objects rebuilt on them.
class fd_arrival {
public:
  fd_arrival(int first, std::uint32_t count) noexcept : first_(first), count_(count) {}

  // Descriptor `index`, set close-on-exec as the parent's was; coproc::error if no such
  // descriptor arrived.
  int fd(std::uint32_t index) const;
  // The T rebuilt on descriptor `index` (its first), made by make() on first use: objects
  // of several types may stand on one descriptor (a value's storage and its lock).
  template <class T, class Make> std::shared_ptr<T> object(std::uint32_t index, Make make) {
    auto& slot = objects_[{index, std::type_index(typeid(T))}];
    if (!slot) slot = make();
    return std::static_pointer_cast<T>(slot);
  }

private:
  int first_;
  std::uint32_t count_;
  std::map<std::pair<std::uint32_t, std::type_index>, std::shared_ptr<void>> objects_;
};

// What queue and connection befriend: their encoding as a process argument.
struct travel_access {
  template <class H>
  static void save(wire::output_archive& ar, fd_departure& fds, const H& handle) {
    handle.travel(ar, fds);
  }
  template <class H> static H load(wire::input_archive& ar, fd_arrival& fds) {
    return H::arrive(ar, fds);
  }
};

template <class T>
concept travelling_handle = wire::detail::process_argument_only<T>;

// One argument of a process, into / out of the arguments' archive.
template <class A> void save_argument(wire::output_archive& ar, fd_departure& fds, const A& arg) {
  if constexpr (travelling_handle<A>) travel_access::save(ar, fds, arg);
  else if constexpr (wire::trivially_encoded<A>) ar.save_binary(&arg, sizeof(A));
  else ar(arg);
}

template <class A> A load_argument(wire::input_archive& ar, fd_arrival& fds) {
  if constexpr (travelling_handle<A>) {
    return travel_access::load<A>(ar, fds);
  } else if constexpr (wire::trivially_encoded<A>) {
    alignas(A) unsigned char storage[sizeof(A)];
    ar.load_binary(storage, sizeof(A));
    return *std::launder(reinterpret_cast<A*>(storage));
  } else {
    A value{};
    ar(value);
    return value;
  }
}

} // namespace coproc::detail
