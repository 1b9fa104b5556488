// Shared by the test programs: what every test must leave behind, and small helpers.
#pragma once

#include <coproc/run.hpp>
#include <coproc/this_process.hpp>

#include <chrono>
#include <string>
#include <vector>

namespace coproc_test {

// Open descriptors of this process.
int count_fds();
// Children of this process that have exited and not been reaped.
std::vector<int> zombie_children();
// Live (non-zombie) children of this process.
std::vector<int> live_children();
// Polls until no zombie child is left and the fd count is back to `fds`, or the
// deadline passes (background reaping may lag by a moment). True if clean.
bool settle(int fds, std::chrono::milliseconds limit = std::chrono::seconds(3));
// Whether a process with this pid exists (a zombie counts).
bool pid_exists(int pid);

template <class T> T run(coproc::awaitable<T> main) { return coproc::block_on(std::move(main)); }

} // namespace coproc_test
