// Shared payloads of local pool workers (lib/pool_payload.hpp).
#include "pool_payload.hpp"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

namespace coproc::detail {

namespace {
constexpr std::size_t payload_alignment = 64;
constexpr std::size_t page_bytes = 4096;
} // namespace

payload_sender::room_type payload_sender::reserve() {
  if (empty()) head_ = 0; // nothing is read any more: reuse the pages already faulted
  reserved_ = true;
  return {head_, bytes_ - head_};
}

shared_payload payload_sender::commit(std::size_t n) {
  reserved_ = false;
  shared_payload p{head_, n};
  head_ += (n + payload_alignment - 1) & ~(payload_alignment - 1);
  high_ = std::max(high_, head_);
  ++sent_;
  return p;
}

std::optional<shared_payload> payload_sender::place(std::size_t n) {
  if (reserved_) return std::nullopt;
  if (n > reserve().bytes) {
    release();
    return std::nullopt;
  }
  return commit(n);
}

std::pair<char*, std::size_t> payload_spill::room() noexcept {
  auto room = sender_->reserve();
  reserved_ = true;
  return {sender_->at(room.offset), room.bytes};
}

void payload_spill::send() {
  shared_payload p = sender_->commit(buffer_.spilled());
  reserved_ = false;
  buffer_.drop_spill();
  bytes_.append(reinterpret_cast<const char*>(&p), sizeof p);
}

void payload_sender::trim() {
  if (high_ <= keep_bytes || !empty()) return;
  std::size_t end = (high_ + page_bytes - 1) & ~(page_bytes - 1);
  // Frees the memfd's pages for both processes; they read as zeros if touched again.
  ::madvise(base_ + keep_bytes, end - keep_bytes, MADV_REMOVE);
  high_ = keep_bytes;
}

std::optional<shared_payload> shared_descriptor(std::size_t bytes, std::string_view descriptor) {
  if (descriptor.size() != sizeof(shared_payload)) return std::nullopt;
  shared_payload p;
  std::memcpy(&p, descriptor.data(), sizeof p);
  if (p.offset > bytes || p.length > bytes - p.offset) return std::nullopt;
  return p;
}

std::optional<std::string_view> shared_bytes(const char* base, std::size_t bytes,
                                             std::string_view descriptor) {
  auto p = shared_descriptor(bytes, descriptor);
  if (!p) return std::nullopt;
  return std::string_view(base + p->offset, static_cast<std::size_t>(p->length));
}

bool share_tail(payload_sender& sender, std::string& out, std::size_t at) {
  std::size_t n = out.size() - at;
  if (n < shared_payload_bytes) return false;
  auto p = sender.place(n);
  if (!p) return false;
  std::memcpy(sender.at(p->offset), out.data() + at, n);
  out.resize(at);
  out.append(reinterpret_cast<const char*>(&*p), sizeof *p);
  return true;
}

} // namespace coproc::detail
