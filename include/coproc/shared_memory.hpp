// coproc/shared_memory.hpp — multiprocessing.shared_memory.SharedMemory.
//
//   coproc::shared_memory block("frames", 1 << 20);       // creates /dev/shm/frames
//   auto other = coproc::shared_memory::attach("frames");  // in any process, by name
//   std::span<std::byte> bytes = other.buf();
//
// A named POSIX shared-memory object (shm_open), mapped MAP_SHARED: any process that knows
// the name can attach, also one that was not forked from the creator. The handle is a cheap
// copy: copies share one mapping, which is unmapped when the last copy in this process goes.
//
// Who unlinks the name: with `track` (the default, Python 3.13's track=True), the creating
// process unlinks it when the last handle of that block in that process is destroyed, so a
// program that forgets unlink() leaves nothing in /dev/shm. Forked children hold copies
// of the creator's handle, but only the creating process (by pid) unlinks. With
// track = false the name stays until someone calls unlink(), as a block meant to outlive
// its creator must. Attaching never unlinks by itself.
//
// Errors: creating a name that exists is std::system_error(EEXIST), attaching a missing
// one std::system_error(ENOENT), each naming the block; a size of 0 or a name holding '/'
// is std::invalid_argument.
#pragma once

#include <cstddef>
#include <memory>
#include <span>
#include <string>

namespace coproc {

struct shared_memory_options {
  bool track = true; // the creating process unlinks the name when its last handle goes
};

class shared_memory {
public:
  // Creates a block of exactly `size` bytes, zero-filled. name "" → a generated, unused
  // name (see name()). The name is given without a leading '/'.
  shared_memory(std::string name, std::size_t size, shared_memory_options options = {});
  // Maps an existing block; buf() is the block's size (the creator's size).
  static shared_memory attach(std::string name);

  std::span<std::byte> buf() const noexcept;
  std::size_t size() const noexcept { return buf().size(); }
  // As given, or the generated one; without the leading '/'.
  const std::string& name() const noexcept;
  // Removes the name now (the mapping stays usable until the handles go): later attaches
  // fail with ENOENT. std::system_error(ENOENT) if the name is already gone.
  void unlink();

private:
  struct mapping;
  explicit shared_memory(std::shared_ptr<mapping> m) : m_(std::move(m)) {}
  std::shared_ptr<mapping> m_;
};

} // namespace coproc
