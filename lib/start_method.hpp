// lib/start_method.hpp — the library's side of the program's default start method
// (lib/start_method.cpp).
#pragma once

#include <coproc/start_method.hpp>

#include <optional>

namespace coproc::detail {

// The method a start uses: the chosen one, or the default.
start_method resolve_start_method(std::optional<start_method> chosen) noexcept;
// A process or pool has started: set_start_method is refused from now on.
void note_started() noexcept;

// In a fresh image: the parent's default, fixed as it is in a forked child.
void inherit_start_method(start_method method);

} // namespace coproc::detail
