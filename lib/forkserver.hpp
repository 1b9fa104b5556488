// lib/forkserver.hpp — start_method::forkserver: the requester's side (lib/forkserver.cpp;
// the server's side is run_fork_server, lib/fresh_image.hpp).
#pragma once

#include <coproc/detail/process_child.hpp>

#include "fresh_image.hpp"

#include <memory>
#include <span>
#include <string>

namespace coproc::detail {

// Starts the fork server of this process unless it runs. std::logic_error without
// main_guard; std::system_error naming `who` if it cannot start.
void preload_fork_server(const std::string& who);

// Has this process's fork server fork the child `spec` describes, with this process's
// descriptors 0-2 as they are now and `fds` at fresh_image_first_fd + i (as
// spawn_fresh_image). std::system_error naming `who` and the server's pid if the server
// cannot start, fails the fork or dies.
std::shared_ptr<process_child> start_served_child(const fresh_image_spec& spec,
                                                  std::span<const int> fds, const std::string& who);

} // namespace coproc::detail
