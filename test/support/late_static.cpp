#include "late_static.hpp"

#include <vector>

namespace {
std::vector<int> make() { return {42}; }
const std::vector<int> late = make(); // dynamic initialization: empty until it runs
} // namespace

int late_static_value() { return late.empty() ? 1 : late[0]; }
