// lib/pool_protocol.hpp — the pool's frames and records as bytes (their layout:
// coproc/detail/pool_protocol.hpp): encoding, parsing and the receive buffer of the
// parent and the worker (private: not installed). Their home is lib/pool_protocol.cpp.
#pragma once

#include <coproc/detail/pool_protocol.hpp>

#include "pool_payload.hpp"

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>

namespace coproc::detail {

// No frame or record is believed beyond this (64 TiB): a length above it is corrupt.
constexpr std::uint64_t max_message_bytes = std::uint64_t(1) << 46;
// What one read asks for while no large message is announced.
constexpr std::size_t plain_read_bytes = 64 * 1024;
// The size a receive buffer starts at and shrinks back to.
constexpr std::size_t base_buffer_bytes = 256 * 1024;
// Buffers above this are given back once what they held is used.
constexpr std::size_t large_buffer_bytes = 1 << 20;
// A worker sends its answers once this many bytes or this much time has gathered.
constexpr std::size_t answer_flush_bytes = 64 * 1024;
constexpr std::chrono::nanoseconds answer_flush_interval = std::chrono::milliseconds(1);

// Bytes that do not add up as a frame or a record; what() says how.
class pool_protocol_violation : public std::runtime_error {
public:
  using std::runtime_error::runtime_error;
};

template <class T> T load(const char* p) {
  T v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

inline void release_if_large(std::string& s) {
  if (s.capacity() > large_buffer_bytes) std::string().swap(s);
  else s.clear();
}

// Appends one frame: `count` items, item(i, out) appending the argument bytes of the
// i-th; `flags` as in task_frame_header. With a sender (a local worker's link) a large
// item is encoded straight into the arguments region (payload_spill). On an exception
// from item() nothing of the frame stays in `out` or the region.
template <class EncodeItem>
void encode_frame(std::string& out, std::int64_t trampoline, std::int64_t target, std::size_t count,
                  std::uint64_t flags, EncodeItem&& item, payload_sender* shared = nullptr) {
  std::size_t at = out.size();
  std::optional<payload_sender::mark_type> mark;
  if (shared) mark = shared->mark();
  try {
    out.append(sizeof(task_frame_header), '\0');
    for (std::size_t i = 0; i < count; ++i) {
      std::size_t item_at = out.size();
      out.append(sizeof(std::uint64_t), '\0');
      payload_spill spill(shared, out);
      item(i, spill.buffer());
      bool moved = spill.finish();
      std::uint64_t n = out.size() - item_at - sizeof(std::uint64_t);
      if (moved) n |= item_shared;
      std::memcpy(out.data() + item_at, &n, sizeof n);
    }
  } catch (...) {
    out.resize(at);
    if (mark) shared->rollback(*mark);
    throw;
  }
  task_frame_header header{out.size() - at - sizeof header, trampoline, target, count, flags};
  std::memcpy(out.data() + at, &header, sizeof header);
}

// Appends one record.
void encode_record(std::string& out, record_kind kind, std::string_view bytes = {});
void encode_timing(std::string& out, const timing_record& timing);

// A record being written in place (a result encoded straight into `out`): begin, append
// the bytes, end.
std::size_t begin_record(std::string& out);
void end_record(std::string& out, std::size_t at, record_kind kind);

struct frame_view {
  task_frame_header header;
  const char* items; // header.length bytes
  std::size_t size;  // with the header
};
// The complete frame at the front of `in`, nullopt while it is incomplete. Every length
// must add up to exactly what the header announced, and a shared item must lie in a
// region of `shared_region` bytes (0: the link has none) (pool_protocol_violation
// otherwise); the code offsets are the caller's to check.
std::optional<frame_view> parse_frame(std::string_view in, std::size_t shared_region = 0);

struct record_view {
  record_kind kind;
  std::string_view bytes;
  std::size_t size; // with the header
};
// The complete record at the front of `in`, nullopt while it is incomplete;
// pool_protocol_violation for a length beyond reason. The kind is the caller's to check.
inline std::optional<record_view> parse_record(std::string_view in) {
  if (in.size() < sizeof(record_header)) return std::nullopt;
  auto header = load<record_header>(in.data());
  if (header.length > max_message_bytes)
    throw pool_protocol_violation("a record longer than 64 TiB");
  if (in.size() - sizeof header < header.length) return std::nullopt;
  auto length = static_cast<std::size_t>(header.length);
  return record_view{header.kind, in.substr(sizeof header, length), sizeof header + length};
}
// The bytes of a timing record; pool_protocol_violation if they are not one.
timing_record parse_timing(std::string_view bytes);

// How many more bytes complete the message at the front of `in` whose header is H, or a
// plain read's worth while the header itself is incomplete or the message is complete.
template <class H> std::size_t bytes_wanted(std::string_view in) {
  if (in.size() < sizeof(H)) return plain_read_bytes;
  auto length = load<H>(in.data()).length;
  if (length > max_message_bytes) return plain_read_bytes; // refused when parsed
  std::size_t total = sizeof(H) + static_cast<std::size_t>(length);
  return in.size() < total ? total - in.size() : plain_read_bytes;
}

// Received bytes: read straight into, consumed from the front. A message announced as
// large gets exactly its size in one allocation (no doubling, no zero-filling), and the
// memory goes back once it is consumed.
class byte_buffer {
public:
  std::string_view data() const { return {buf_.get() + begin_, end_ - begin_}; }
  void consume(std::size_t n) {
    begin_ += n;
    if (begin_ == end_) begin_ = end_ = 0;
  }
  // Room for n more bytes at the end (std::bad_alloc when there is no memory for it).
  std::span<char> room(std::size_t n);
  void commit(std::size_t n) { end_ += n; }
  // Gives a large allocation back when what is left of it is small.
  void trim();

private:
  std::unique_ptr<char[]> buf_;
  std::size_t cap_ = 0, begin_ = 0, end_ = 0;
};

} // namespace coproc::detail
