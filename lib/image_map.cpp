// Where a task's code lies in another image of this program (lib/image_map.hpp).
#include "image_map.hpp"

#include <coproc/detail/pool_task.hpp>
#include <coproc/wire.hpp>

#include <dlfcn.h>
#include <link.h>

#include <stdexcept>
#include <tuple>
#include <utility>

namespace coproc::detail {

namespace {

// A loaded object: its name ("" for the executable), where it is loaded as an offset from
// the anchor, and each executable segment's place in it and size (p_vaddr, p_memsz).
using segment_layout = std::pair<std::uint64_t, std::uint64_t>;
using object_layout = std::tuple<std::string, std::int64_t, std::vector<segment_layout>>;

std::vector<object_layout> loaded_objects() {
  struct walk {
    std::uintptr_t anchor;
    std::vector<object_layout> objects;
  } w{static_cast<std::uintptr_t>(pool_anchor_address()), {}};
  ::dl_iterate_phdr(
      [](dl_phdr_info* info, std::size_t, void* data) -> int {
        auto& w = *static_cast<walk*>(data);
        std::vector<segment_layout> code;
        for (int i = 0; i < info->dlpi_phnum; ++i) {
          const auto& ph = info->dlpi_phdr[i];
          if (ph.p_type == PT_LOAD && (ph.p_flags & PF_X))
            code.emplace_back(ph.p_vaddr, ph.p_memsz);
        }
        if (!code.empty())
          w.objects.emplace_back(info->dlpi_name ? info->dlpi_name : "",
                                 static_cast<std::int64_t>(info->dlpi_addr - w.anchor),
                                 std::move(code));
        return 0;
      },
      &w);
  return std::move(w.objects);
}

// Whether `offset` lies in one of the object's executable segments (the subtraction
// wraps for an offset before it, so one comparison covers both ends).
bool holds(const object_layout& object, std::intptr_t offset) {
  auto& [name, base, code] = object;
  for (auto& [at, size] : code)
    if (static_cast<std::uint64_t>(offset) - static_cast<std::uint64_t>(base) - at < size)
      return true;
  return false;
}

// Written once in main_guard, before guard_ran is released; read after it is acquired.
std::vector<object_layout> startup_objects;
std::string startup_layout;

} // namespace

void record_startup_image() {
  startup_objects = loaded_objects();
  startup_layout = wire::encode(startup_objects);
}

const std::string& startup_image_layout() { return startup_layout; }

void check_reaches_fresh_image(std::intptr_t offset, const std::string& who) {
  for (auto& object : startup_objects)
    if (holds(object, offset)) return;
  Dl_info info{};
  auto* code = reinterpret_cast<void*>(offset + pool_anchor_address());
  for (auto& object : loaded_objects())
    if (holds(object, offset) && ::dladdr(code, &info) != 0 && info.dli_fname)
      throw std::invalid_argument(who + " is in " + info.dli_fname +
                                  ", loaded after main_guard, which a fresh image does not "
                                  "load; link it to the program, or use start_method::fork");
  throw std::invalid_argument(who + " is not code in any loaded object");
}

code_map::code_map(std::string_view layout) : moved_(true) {
  auto sender = wire::decode<std::vector<object_layout>>(layout);
  auto here = loaded_objects();
  std::vector<bool> taken(here.size());
  // The same name and segments: the same file (a name alone may be another build of it).
  for (auto& [name, base, code] : sender)
    for (std::size_t i = 0; i < here.size(); ++i) {
      auto& [local_name, local_base, local_code] = here[i];
      if (taken[i] || local_name != name || local_code != code) continue;
      taken[i] = true;
      for (auto& [at, size] : code)
        segments_.push_back({static_cast<std::intptr_t>(static_cast<std::uint64_t>(base) + at),
                             static_cast<std::intptr_t>(size),
                             static_cast<std::intptr_t>(local_base - base)});
      break;
    }
}

std::optional<std::intptr_t> code_map::local(std::intptr_t offset) {
  for (auto& h : recent_)
    if (h.known && h.offset == offset) return h.local;
  if (auto it = known_.find(offset); it != known_.end()) {
    recent_[next_ ^= 1] = {offset, it->second, true};
    return it->second;
  }
  std::optional<std::intptr_t> found;
  if (moved_) {
    for (auto& s : segments_)
      if (static_cast<std::uint64_t>(offset) - static_cast<std::uint64_t>(s.start) <
          static_cast<std::uint64_t>(s.size))
        found = offset + s.shift;
  } else {
    for (auto& object : loaded_objects())
      if (holds(object, offset)) found = offset;
  }
  if (found) {
    known_.emplace(offset, *found);
    recent_[next_ ^= 1] = {offset, *found, true};
  }
  return found;
}

} // namespace coproc::detail
