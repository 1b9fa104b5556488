// coproc/detail/deadline.hpp — the point in time at which a timed wait gives up.
//
// Every timed wait of coproc (queue, pipe, pool, child) takes one of these, so a timeout
// is turned into a time point in one place, and that place saturates: a huge timeout
// (duration::max()) means never, a zero or negative one means now. Adding a timeout to
// now() directly overflows the signed tick count (undefined behaviour) for such values.
#pragma once

#include <chrono>

namespace coproc::detail {

class deadline {
public:
  using clock = std::chrono::steady_clock;

  // Never passes.
  constexpr deadline() noexcept = default;
  static constexpr deadline never() noexcept { return {}; }
  static constexpr deadline at(clock::time_point when) noexcept { return deadline(when); }
  static deadline after(clock::duration timeout) noexcept {
    auto now = clock::now();
    if (timeout <= clock::duration::zero()) return deadline(now);
    if (timeout >= clock::time_point::max() - now) return never();
    return deadline(now + timeout);
  }

  constexpr bool is_never() const noexcept { return when_ == clock::time_point::max(); }
  bool passed() const noexcept { return !is_never() && clock::now() >= when_; }
  // time_point::max() for never (an Asio timer set to it never fires).
  constexpr clock::time_point when() const noexcept { return when_; }

private:
  explicit constexpr deadline(clock::time_point when) noexcept : when_(when) {}
  clock::time_point when_ = clock::time_point::max();
};

} // namespace coproc::detail
