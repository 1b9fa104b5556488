// lib/image_map.hpp — where a task's code lies in another image of this program
// (lib/image_map.cpp).
//
// Task code travels as offsets from the anchor (coproc/detail/pool_task.hpp). A forked
// worker has its parent's layout, so an offset holds there as it is. A fresh image (spawn,
// forkserver, a remote worker) loads the same objects, the executable and the libraries
// loaded before main_guard, but the loader places each one independently: an offset holds
// only within the anchor's own object, and a shared libcoproc is not the program's. So
// main_guard records the layout (each object's name, its place from the anchor and its
// executable segments), a pool sends it to its fresh workers, and a worker moves each
// offset into the object of the same name and segments in its own image.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace coproc::detail {

// Records the objects loaded now, once (main_guard).
void record_startup_image();

// The layout that record_startup_image recorded, encoded for a fresh worker's payload.
const std::string& startup_image_layout();

// Whether the code at `offset` from the anchor lies in an executable segment of an object
// that main_guard recorded, which a fresh image loads too. Otherwise std::invalid_argument
// saying where the code is, after `who` ("coproc::pool: with spawn the task").
void check_reaches_fresh_image(std::intptr_t offset, const std::string& who);

// Offsets of one image's code, moved into this image.
class code_map {
public:
  // This image's own offsets (a forked worker): any code in an executable segment.
  code_map() = default;
  // The offsets of the image that recorded `layout`; std::invalid_argument if it does not
  // decode.
  explicit code_map(std::string_view layout);

  // This image's offset of the code at `offset`; nullopt if that is no code in an object
  // both images have.
  std::optional<std::intptr_t> local(std::intptr_t offset);

private:
  struct segment {
    std::intptr_t start, size, shift; // start and size in the sender's offsets
  };
  struct hit {
    std::intptr_t offset = 0, local = 0;
    bool known = false;
  };
  bool moved_ = false;
  std::vector<segment> segments_;
  std::unordered_map<std::intptr_t, std::intptr_t> known_; // each offset costs one search
  // A frame's trampoline and target, asked for twice a frame: cheaper than the map.
  hit recent_[2];
  unsigned next_ = 0;
};

} // namespace coproc::detail
