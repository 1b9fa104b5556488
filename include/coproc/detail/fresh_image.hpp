// coproc/detail/fresh_image.hpp — how code is named across images of one program
// (start_method::spawn). A fresh image loads the same objects (the executable, the shared
// libraries it was linked with) at other addresses, so code is named by its object and
// its offset from that object's load address, never by a pointer.
#pragma once

#include <cereal/types/string.hpp>

#include <cstdint>
#include <optional>
#include <string>

namespace coproc::detail {

struct code_ref {
  std::string object;       // the loaded object's path; "" for the executable
  std::uint64_t offset = 0; // from its load address
  template <class Archive> void serialize(Archive& ar) { ar(object, offset); }
};

// Where the code at this address lies; nullopt if it is in no executable segment of a
// loaded object.
std::optional<code_ref> locate_code(std::uintptr_t address);
// The address of that code in this image; coproc::error if the object is not loaded here
// or the offset names no code in it.
std::uintptr_t resolve_code(const code_ref& ref);

} // namespace coproc::detail
