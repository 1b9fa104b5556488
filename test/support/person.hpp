// A user type with a cereal serialize member (not trivially copyable), for the wire
// format and the queues.
#pragma once

#include <string>
#include <vector>

namespace coproc_test {

struct person {
  std::string name;
  int age = 0;
  std::vector<std::string> tags;
  template <class Archive> void serialize(Archive& ar) { ar(name, age, tags); }
  bool operator==(const person&) const = default;
};

} // namespace coproc_test
