#include <coproc/start_method.hpp>

#include "start_method.hpp"

#include <atomic>
#include <stdexcept>

namespace coproc {

namespace {
std::atomic<start_method> default_method{start_method::fork};
std::atomic<bool> started{false};
} // namespace

void set_start_method(start_method method) {
  if (started.load())
    throw std::logic_error("coproc::set_start_method: a process or pool has already started; set "
                           "the start method before the first start");
  default_method.store(method);
}

start_method get_start_method() noexcept { return default_method.load(); }

namespace detail {
start_method resolve_start_method(std::optional<start_method> chosen) noexcept {
  return chosen.value_or(default_method.load());
}

void note_started() noexcept { started.store(true); }

void inherit_start_method(start_method method) {
  default_method.store(method);
  started.store(true);
}
} // namespace detail

} // namespace coproc
