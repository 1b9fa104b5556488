// coproc/detail/pool_protocol.hpp — the bytes between the pool's parent and a worker.
//
// Each worker has one Unix stream socket to the parent. The parent sends one frame per
// chunk (a task_frame_header, then the items), and the worker answers with records: once
// `started` when its initializer returned (or `start_failed` with the initializer's
// error), then one value or error record per item, in order, and, before each batch of
// answers leaves and whenever the function changes, a timing record. Every length is 64
// bits and must agree exactly with the bytes that carry it: a frame or record whose
// lengths disagree, or whose code offsets do not name code, is a protocol error that ends
// that worker's link, never a call. Many frames go out in one write and many records come
// back in one, so small tasks do not cost a syscall each.
//
// Items are numbered per worker in the order sent (from 1), and a worker claims each one
// before running it by advancing the counter of a page shared with the parent
// (worker_page, a compare-and-swap, no syscall); the parent may claim unstarted items the
// same way to send them elsewhere. For items with a timeout the worker also publishes
// there when each started, which the parent reads when a timeout may be due.
//
// A local worker's argument or result of shared_payload_bytes or more does not cross the
// socket: it is copied into a region of memory that parent and worker share (after the
// worker_page, in the same memfd), and the frame or record carries only where it lies
// (shared_payload). How the regions are used, and why: lib/pool_payload.hpp. A remote
// worker shares no memory with the pool: its links never carry a shared item or record.
//
// This header is the layout that both sides (and the tests that forge frames) share; the
// encoding, the parsing and the receive buffer are the library's (lib/pool_protocol.hpp).
#pragma once

#include <atomic>
#include <csignal>
#include <cstddef>
#include <cstdint>

namespace coproc::detail {

// parent -> worker, one frame per chunk: the header, then `count` items, each
// [u64 length][argument bytes]; `length` counts every byte after the header. An item whose
// length word has item_shared set is a shared_payload in the arguments region instead
// (the rest of the word is then sizeof(shared_payload)).
struct task_frame_header {
  std::uint64_t length;
  std::int64_t trampoline; // offset from the anchor
  std::int64_t target;     // the function's offset from the anchor, 0 for a function object
  std::uint64_t count;
  std::uint64_t flags = 0;     // frame_timed, frame_cancel
  std::int64_t timeout_ns = 0; // coroutine tasks: each item's timeout, kept by the worker
};
// The items have a timeout: the worker publishes when each starts (worker_page) and sends
// every answer as soon as it is ready, so a kill at the timeout loses no finished answer.
constexpr std::uint64_t frame_timed = 1;
constexpr std::uint64_t item_shared = std::uint64_t(1) << 63;

// Where a shared argument or result lies: `length` bytes at `offset` into its region.
struct shared_payload {
  std::uint64_t offset;
  std::uint64_t length;
};
// Arguments and results from this size on go through the shared regions (local workers).
constexpr std::size_t shared_payload_bytes = 256 * 1024;
// Each direction's region: the largest argument or result that can be shared, with those
// in flight before it; a larger one crosses the socket (up to max_message_bytes). The
// regions are sparse: only the pages used take memory.
constexpr std::size_t payload_region_bytes = std::size_t(2) << 30;
// Not a task: its one item is the u64 number of a running coroutine task that the worker
// is to cancel (the parent cancelled its result). No code offsets.
constexpr std::uint64_t frame_cancel = 2;
// A coroutine task cancelled in its worker (at its timeout, or by a frame_cancel) has this
// long to end; then the parent kills the worker as it kills one running a late sync task.
constexpr std::int64_t coroutine_stop_grace_ns = 200'000'000;

// worker -> parent: records, each a header and `length` bytes.
enum class record_kind : std::uint32_t {
  value = 0,        // the next item's encoded result
  error = 1,        // the next item's exception: parts (type name, message)
  timing = 2,       // a timing_record
  started = 3,      // the initializer returned: the worker takes tasks (no bytes)
  start_failed = 4, // the initializer threw: parts (type name, message); the worker exits
  // Remote workers only (lib/pool_remote.cpp), which share no worker_page with the pool:
  claimed = 5,   // u64: the last item number the worker claimed, sent before it runs them
  heartbeat = 6, // no bytes: the worker lives (sent every heartbeat interval, busy or not)
  timed_out = 7, // no bytes: the next item, a coroutine task, was cancelled at its timeout
  // Local workers only:
  shared_value = 8, // a shared_payload: the next item's encoded result, in the results region
};
struct record_header {
  std::uint64_t length;
  record_kind kind;
  std::uint32_t reserved = 0;
};
// What the items run since the previous timing record cost, for the parent's estimates.
struct timing_record {
  std::int64_t trampoline;
  std::uint64_t items;
  std::uint64_t nanoseconds;
};

// What a worker tells its parent without a syscall.
struct worker_page {
  // The last item number claimed, by the worker (to run it) or by the parent (to take
  // it back). Both only ever advance it.
  std::atomic<std::uint64_t> claimed{0};
  // The last item the worker itself claimed (it runs it, or has just finished it), stored
  // with release after running_since: a reader that sees item n there reads n's start or
  // a later one, never an earlier (a timeout never fires early).
  std::atomic<std::uint64_t> running{0};
  // steady_clock nanoseconds when that item started; written for timed frames only.
  std::atomic<std::int64_t> running_since{0};
  // How many shared arguments the worker, and shared results the parent, are done with,
  // in the order sent (stored with release once the bytes are no longer read).
  std::atomic<std::uint64_t> arguments_released{0};
  std::atomic<std::uint64_t> results_released{0};
  // Coroutine tasks, which run side by side and keep their own timeouts: the soonest
  // moment (steady_clock ns, 0: none) by which one of them must have ended (its timeout
  // plus the grace, or its cancellation plus the grace), and its item number. Written by
  // the worker's thread between two tasks' steps, so a thread a task blocks leaves it
  // standing, and the parent kills the worker once it has passed.
  std::atomic<std::int64_t> stop_due{0};
  std::atomic<std::uint64_t> stop_seq{0};
};
constexpr std::size_t worker_page_size = 4096;
static_assert(sizeof(worker_page) <= worker_page_size);
// A local worker's shared memory: the page, the arguments region, the results region.
constexpr std::size_t worker_link_bytes = worker_page_size + 2 * payload_region_bytes;

// Sent by the parent to a worker's main thread before it kills the worker for a
// cancelled sync task: the worker sends the answers it had batched (SIGURG: ignored by
// default, so a worker that has not installed its handler yet is not hurt).
constexpr int worker_flush_signal = SIGURG;
// The exit code of a worker that received a bad frame (EX_SOFTWARE).
constexpr int pool_protocol_error_exit = 70;
// A larger chunk travels as several frames (each one task for maxtasksperchild), so no
// single step of the parent's loop encodes or decodes more than about 0.2 ms of items.
constexpr std::size_t max_frame_items = 16384;

} // namespace coproc::detail
