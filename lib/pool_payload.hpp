// lib/pool_payload.hpp — large arguments and results of a local pool worker through shared
// memory (the layout: coproc/detail/pool_protocol.hpp). Private: not installed.
//
// Why this shape. A 64 MiB value through the socket costs two kernel copies and, worse on
// these VMs, first-touch faults on every buffer it lands in (about 1.5 s per GiB of fresh
// 4 KiB pages: 100 ms per 64 MiB, five times a warm memcpy). So each direction of a link
// has one region that both processes keep mapped for the worker's life, and a message is
// placed from the region's start whenever the receiver is done with every earlier one:
// the same pages are reused, faulted once per worker rather than once per task.
// - One memfd per worker, made before the worker starts, holds the worker_page and both
//   regions (sparse, so the reserve costs address space only). A forked worker inherits
//   the mapping, a spawned or fork-server one maps the memfd it is given: no descriptor
//   ever travels with a task (no SCM_RIGHTS, no per-message mmap/munmap, nothing to leak
//   when a worker dies mid-transfer: its mapping goes with it and the parent unmaps its
//   own when it reaps it). Memfds have no /dev/shm entry.
// - The sender places messages one after another (a bump allocator) and starts again at
//   offset 0 once the receiver has released every message sent; the receiver releases
//   in order by advancing a counter on the worker_page (no syscall). Messages never
//   overlap one that is still unread. A message that does not fit in what is left falls
//   back to the socket: nothing waits for room, so the two sides cannot deadlock.
// - The receiver decodes straight from the region (no copy into a receive buffer).
// - Pages used beyond keep_bytes are given back (MADV_REMOVE) once the region is empty
//   again, so a 1 GiB transfer does not pin 1 GiB of shared memory for the worker's life
//   (the sender trims: the parent when answers come, the worker when it next sends).
//   What stays is the price of the reuse: up to keep_bytes per direction and per worker.
// - A large value is encoded straight into the region (payload_spill: the output_buffer
//   starts in the frame's string and moves to the region once the item passes the
//   threshold), so the copies one way are: encode into the region, decode from it (into
//   the receiver's value, on huge pages: coproc/wire.hpp). Through an encode buffer it
//   was three, through the socket four, three of them on fresh 4 KiB pages
//   (docs/platform.md, stop 20).
// - A remote worker has no region: its sender is null and a shared item or record on its
//   link is a protocol error.
#pragma once

#include <coproc/detail/pool_protocol.hpp>
#include <coproc/wire.hpp>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace coproc::detail {

// One direction's sending side.
class payload_sender {
public:
  // The region is `bytes` long at `base`; the receiver counts what it released in `released`.
  payload_sender(char* base, std::size_t bytes, const std::atomic<std::uint64_t>* released)
      : base_(base), bytes_(bytes), released_(released) {}

  // Room for an encoded message of n bytes (n >= shared_payload_bytes), or nullopt when it
  // must take the socket. The caller copies the bytes to at(offset) and sends the
  // shared_payload; the message counts as sent.
  std::optional<shared_payload> place(std::size_t n);
  char* at(std::uint64_t offset) const { return base_ + offset; }
  // For a message encoded in place (payload_spill): where the next one goes and the room
  // there. Until commit(n) sends the n bytes written there or release() gives up, the
  // room is the encoding's alone: place() says nullopt.
  struct room_type {
    std::uint64_t offset;
    std::size_t bytes;
  };
  room_type reserve();
  shared_payload commit(std::size_t n);
  void release() { reserved_ = false; }
  // Undoes the place() calls since mark() (a frame whose encoding failed is not sent).
  struct mark_type {
    std::uint64_t sent;
    std::size_t head;
  };
  mark_type mark() const { return {sent_, head_}; }
  void rollback(mark_type m) {
    sent_ = m.sent;
    head_ = m.head;
  }
  // Gives back the pages beyond keep_bytes if every message was released.
  void trim();

  // What stays faulted in between large transfers.
  static constexpr std::size_t keep_bytes = std::size_t(80) << 20;

private:
  bool empty() const { return released_->load(std::memory_order_acquire) == sent_; }

  char* base_;
  std::size_t bytes_;
  const std::atomic<std::uint64_t>* released_;
  std::uint64_t sent_ = 0;
  std::size_t head_ = 0; // where the next message goes
  std::size_t high_ = 0; // the end of the pages used since the last trim
  bool reserved_ = false;
};

// An encoding appended to a string from its current end that goes straight into a
// sender's region once it reaches shared_payload_bytes (the output_buffer's spill area),
// saving the copy from an encode buffer. Without a sender (a remote link) it only appends.
class payload_spill : wire::output_buffer::spill_area {
public:
  payload_spill(payload_sender* sender, std::string& bytes)
      : sender_(sender), bytes_(bytes), buffer_(bytes) {
    if (sender_) buffer_.spill_to(*this, bytes.size(), shared_payload_bytes - 1);
  }
  payload_spill(const payload_spill&) = delete;
  payload_spill& operator=(const payload_spill&) = delete;
  ~payload_spill() { abandon(); }
  wire::output_buffer& buffer() { return buffer_; }
  // Once the encoding is complete: if it went to the region, it is sent and the string
  // ends with its shared_payload instead. Whether it did.
  bool finish() {
    if (buffer_.spilled() == 0) {
      abandon(); // the room, if it was asked for, is free for place() again
      return false;
    }
    send();
    return true;
  }
  // An encoding that failed: whatever reached the region is forgotten.
  void abandon() noexcept {
    buffer_.drop_spill();
    if (reserved_) sender_->release();
    reserved_ = false;
  }

private:
  std::pair<char*, std::size_t> room() noexcept override;
  void send();

  payload_sender* sender_;
  bool reserved_ = false;
  std::string& bytes_;
  wire::output_buffer buffer_;
};

// A received shared_payload, or nullopt if it is not one that lies in a region of `bytes`.
std::optional<shared_payload> shared_descriptor(std::size_t bytes, std::string_view descriptor);
// The bytes it names in the region at `base`.
std::optional<std::string_view> shared_bytes(const char* base, std::size_t bytes,
                                             std::string_view descriptor);

// Moves an encoded message to the region when it is large and fits: `out` holds it from
// `at` on; it is replaced by the shared_payload. Whether it moved.
bool share_tail(payload_sender& sender, std::string& out, std::size_t at);

// A worker's view of its link's regions (null for a remote worker).
struct worker_regions {
  char* arguments;
  payload_sender results;
};

} // namespace coproc::detail
