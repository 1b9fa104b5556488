// lib/fresh_image.hpp — starting a fresh image of this program and entering it
// (lib/fresh_image.cpp; the public entry is coproc/main_guard.hpp).
//
// The parent posix_spawns /proc/self/exe with COPROC_FRESH_IMAGE naming the kind of child
// and descriptor 3 a memfd holding the payload: who the child is (its identity, its
// parent, whether it dies with it, the parent's default start method) and the kind's own
// bytes. The kind's descriptors follow from 4 on (a pool worker's two; a process's, those
// of the queues and connections among its arguments, detail/travel.hpp); nothing else is
// inherited but 0-2.
// Signals start at their defaults with an empty mask.
//
// start_method::forkserver starts one fresh image of the kind forkserver per requesting
// process (lib/forkserver.cpp); it forks each child, which finds the same payload at 3 and
// the same descriptors from 4 and enters the same way, without an exec.
#pragma once

#include <coproc/detail/child.hpp>

#include <span>
#include <string>
#include <string_view>

namespace coproc::detail {

enum class image_kind : std::uint8_t { process = 1, pool_worker = 2, forkserver = 3 };

// The first descriptor of a kind's own descriptors in the child.
constexpr int fresh_image_first_fd = 4;

struct fresh_image_spec {
  image_kind kind;
  identity id;
  bool dies_with_parent = false; // PR_SET_PDEATHSIG, then a getppid() check
  std::string body;              // the kind's bytes
  // Every symbol resolved as the image starts (LD_BIND_NOW, gone from its environment once
  // it runs): the fork server's, so that no child it forks pays a lazy binding (a symbol
  // lookup and page faults) for each function it calls first.
  bool bind_now = false;
};

// How many descriptors of its own a kind takes (from fresh_image_first_fd).
int kind_descriptors(image_kind kind) noexcept;

// The payload's bytes: what a fresh image reads at descriptor 3, or a fork server passes
// its child in memory.
std::string fresh_image_payload_bytes(const fresh_image_spec& spec);
// The payload as a close-on-exec memfd: descriptor 3 of the child. std::system_error
// naming `who` if it cannot be made.
int fresh_image_payload(const fresh_image_spec& spec, const std::string& who);

// Starts the image; its pid. std::system_error naming `who` if it cannot start.
int spawn_fresh_image(const fresh_image_spec& spec, std::span<const int> fds,
                      const std::string& who);

// In a child the fork server `server` just forked, with its descriptors in place (the
// payload at 3 unless `payload` holds it, the kind's from 4, nothing else above 2):
// becomes the child as a fresh image does in main_guard.
[[noreturn]] void enter_served_image(image_kind kind, int server,
                                     const std::string* payload = nullptr);

// std::logic_error naming `who` unless main_guard ran in this program.
void require_main_guard(const std::string& who);

// The entries of the kinds, run by main_guard once the identity is taken.
[[noreturn]] void run_fresh_process(std::string_view body); // lib/process.cpp
[[noreturn]] void run_spawned_worker(std::string_view body, int fd,
                                     int memfd); // lib/pool_worker.cpp
[[noreturn]] void run_fork_server(int fd);       // lib/forkserver.cpp

} // namespace coproc::detail
