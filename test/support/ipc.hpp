// Shared by test_queue and test_pipe: memory a killed child can still report through, and
// a type whose frames never decode.
#pragma once

#include <doctest/doctest.h>

#include <sys/mman.h>

#include <chrono>
#include <cstddef>
#include <string>

namespace coproc_test {

using clock_type = std::chrono::steady_clock;

// Memory shared with children, for what a killed child cannot report itself.
template <class T> struct shared_array {
  explicit shared_array(std::size_t n) : size(n) {
    void* p =
        ::mmap(nullptr, n * sizeof(T), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    REQUIRE(p != MAP_FAILED);
    data = static_cast<T*>(p);
  }
  ~shared_array() { ::munmap(data, size * sizeof(T)); }
  shared_array(const shared_array&) = delete;
  T* data;
  std::size_t size;
};

// Saved with one field, loaded with two: every frame it reads is malformed (as when two
// programs disagree on a type's layout).
struct skewed {
  std::string a;
  int b = 0;
  template <class Archive> void save(Archive& ar) const { ar(a); }
  template <class Archive> void load(Archive& ar) { ar(a, b); }
};

} // namespace coproc_test
