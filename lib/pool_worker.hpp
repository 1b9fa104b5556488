// The worker side of coproc::pool: how a worker process starts and what it runs
// (lib/pool_worker.cpp). The parent's side is lib/pool_core.cpp.
#pragma once

#include <coproc/detail/child.hpp>
#include <coproc/detail/process_child.hpp>
#include <coproc/start_method.hpp>
#include <coproc/detail/pool_task.hpp>

#include "image_map.hpp"
#include "pool_protocol.hpp"

#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>

namespace coproc::detail {

// In a child just forked by `parent`: becomes worker `id` on its end of the socket and
// the shared page (runs the initializer, then tasks until the parent closes the link).
[[noreturn]] void run_forked_worker(int parent, int fd, worker_page* page, identity id,
                                    const std::function<void()>& initializer,
                                    unsigned maxtasksperchild, unsigned concurrency);

// A remote worker (lib/pool_remote_worker.cpp), connected and accepted on fd: runs the
// initializer (an offset from the anchor, 0 for none), then tasks, announcing its claims
// by records; `code` moves the pool's offsets into this image; every write holds
// write_lock (its heartbeat thread writes on fd too).
[[noreturn]] void run_remote_work(int fd, std::intptr_t initializer_offset,
                                  unsigned maxtasksperchild, code_map code, std::mutex& write_lock);

// start_method::spawn or forkserver: starts a fresh image of this executable (or has the
// fork server fork one) as worker `id` on its end of the socket and the memfd of the
// shared page; the initializer as the image rebuilds it (no trampoline for none).
// std::system_error if it cannot start.
std::shared_ptr<process_child> start_worker_image(start_method method, int fd, int memfd,
                                                  unsigned maxtasksperchild, unsigned concurrency,
                                                  const pool_initializer::travel_form& initializer,
                                                  const identity& id);

} // namespace coproc::detail
