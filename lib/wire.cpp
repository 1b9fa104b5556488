#include <coproc/wire.hpp>

#include <boost/core/demangle.hpp>

#include <sys/mman.h>

#include <cstdint>

namespace coproc::wire {

void input_archive::fail(const std::string& why) const {
  throw coproc::error("coproc::wire: malformed " + boost::core::demangle(type_.name()) +
                      " frame of " + std::to_string(bytes_.size()) + " bytes: " + why);
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
