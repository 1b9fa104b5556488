#include <coproc/wire.hpp>

#include <boost/core/demangle.hpp>

#include <sys/mman.h>

#include <cstdint>
#include <cstring>
#include <tuple>

namespace coproc::wire {

void input_archive::fail(const std::string& why) const {
  throw coproc::error("coproc::wire: malformed " + boost::core::demangle(type_.name()) +
                      " frame of " + std::to_string(bytes_.size()) + " bytes: " + why);
}

bool output_buffer::spill(std::size_t n) noexcept {
  if (!area_) std::tie(area_, room_) = source_->room();
  used_ = bytes_.size() - from_;
  if (!area_ || used_ > room_ || n > room_ - used_) {
    drop_spill();
    return false;
  }
  std::memcpy(area_, bytes_.data() + from_, used_);
  bytes_.resize(from_);
  spilled_ = true;
  return true;
}

void output_buffer::append_slow(const void* data, std::size_t n) {
  // Not past the threshold (or no longer spilling), or an area that cannot take it: the
  // string takes it.
  if (!spilled_ && (n <= spill_at_ - bytes_.size() || !spill(n))) {
    if (data) bytes_.append(static_cast<const char*>(data), n);
    else bytes_.append(n, '\0');
    return;
  }
  if (n > room_ - used_) { // outgrown: back to the string, which takes any size
    bytes_.append(area_, used_);
    drop_spill();
    return append_slow(data, n);
  }
  if (data) std::memcpy(area_ + used_, data, n);
  else std::memset(area_ + used_, 0, n);
  used_ += n;
}

namespace detail {

void advise_fresh(void* data, std::size_t n) noexcept {
  constexpr std::uintptr_t huge = std::uintptr_t(2) << 20;
  if (n < 2 * huge) return;
  auto at = reinterpret_cast<std::uintptr_t>(data);
  std::uintptr_t begin = (at + huge - 1) & ~(huge - 1), end = (at + n) & ~(huge - 1);
  // Only a hint: where it is refused (THP off) the pages come as before.
  if (end > begin) ::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
}

} // namespace detail

} // namespace coproc::wire
