// The pool's wire protocol (lib/pool_protocol.hpp): record encoding, frame and
// record parsing and the receive buffer.
#include "pool_protocol.hpp"

#include <coproc/detail/pool_task.hpp>

#include <algorithm>

namespace coproc::detail {

void pool_image_anchor() noexcept {
  // Distinct code, so identical-code folding never merges the anchor with another function.
  asm volatile("" ::: "memory");
}

void encode_record(std::string& out, record_kind kind, std::string_view bytes) {
  record_header header{bytes.size(), kind};
  out.append(reinterpret_cast<const char*>(&header), sizeof header);
  out.append(bytes);
}

void encode_timing(std::string& out, const timing_record& timing) {
  encode_record(out, record_kind::timing,
                std::string_view(reinterpret_cast<const char*>(&timing), sizeof timing));
}

std::size_t begin_record(std::string& out) {
  std::size_t at = out.size();
  out.append(sizeof(record_header), '\0');
  return at;
}

void end_record(std::string& out, std::size_t at, record_kind kind) {
  record_header header{out.size() - at - sizeof header, kind};
  std::memcpy(out.data() + at, &header, sizeof header);
}

std::optional<frame_view> parse_frame(std::string_view in, std::size_t shared_region) {
  if (in.size() < sizeof(task_frame_header)) return std::nullopt;
  auto header = load<task_frame_header>(in.data());
  if (header.length > max_message_bytes)
    throw pool_protocol_violation("a frame longer than 64 TiB");
  if (in.size() - sizeof header < header.length) return std::nullopt;
  if (header.count == 0 || header.count > max_frame_items)
    throw pool_protocol_violation("a frame item count out of range");
  if ((header.flags & ~(frame_timed | frame_cancel)) != 0)
    throw pool_protocol_violation("unknown frame flags");
  const char* items = in.data() + sizeof header;
  std::uint64_t left = header.length;
  for (std::uint64_t i = 0; i < header.count; ++i) {
    if (left < sizeof(std::uint64_t))
      throw pool_protocol_violation("a frame shorter than its items");
    const char* at = items + (header.length - left);
    auto n = load<std::uint64_t>(at);
    left -= sizeof n;
    bool shared = (n & item_shared) != 0;
    n &= ~item_shared;
    if (n > left) throw pool_protocol_violation("an item longer than its frame");
    if (shared) {
      if (shared_region == 0) throw pool_protocol_violation("a shared item on a link without one");
      if (!shared_descriptor(shared_region,
                             std::string_view(at + sizeof n, static_cast<std::size_t>(n))))
        throw pool_protocol_violation("a shared item outside its region");
    }
    left -= n;
  }
  if (left != 0) throw pool_protocol_violation("bytes after a frame's last item");
  return frame_view{header, items, sizeof header + static_cast<std::size_t>(header.length)};
}

timing_record parse_timing(std::string_view bytes) {
  if (bytes.size() != sizeof(timing_record))
    throw pool_protocol_violation("a timing record of the wrong size");
  return load<timing_record>(bytes.data());
}

std::span<char> byte_buffer::room(std::size_t n) {
  std::size_t size = end_ - begin_;
  if (cap_ - end_ < n) {
    if (cap_ - size >= n && size <= large_buffer_bytes) {
      std::memmove(buf_.get(), buf_.get() + begin_, size);
    } else {
      std::size_t cap = std::max(size + n, base_buffer_bytes);
      std::unique_ptr<char[]> bigger(new char[cap]);
      if (size != 0) std::memcpy(bigger.get(), buf_.get() + begin_, size); // buf_ may be null
      buf_ = std::move(bigger);
      cap_ = cap;
    }
    begin_ = 0;
    end_ = size;
  }
  return {buf_.get() + end_, cap_ - end_};
}

void byte_buffer::trim() {
  std::size_t size = end_ - begin_;
  if (cap_ <= large_buffer_bytes || size > base_buffer_bytes) return;
  std::unique_ptr<char[]> smaller(new char[base_buffer_bytes]);
  std::memcpy(smaller.get(), buf_.get() + begin_, size);
  buf_ = std::move(smaller);
  cap_ = base_buffer_bytes;
  begin_ = 0;
  end_ = size;
}

} // namespace coproc::detail
