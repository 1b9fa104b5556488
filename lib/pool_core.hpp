// The parent's side of coproc::pool (lib/pool_core.cpp): the worker processes, their
// sockets, and the pool_scheduler's decisions carried out on them.
#pragma once

#include <coproc/detail/process_child.hpp>
#include <coproc/detail/pool_scheduler.hpp>
#include <coproc/detail/pool_state.hpp>
#include <coproc/pool.hpp>

#include "pool_protocol.hpp"

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/steady_timer.hpp>

#include <cstddef>
#include <cstdint>
#include <exception>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_set>
#include <vector>

namespace coproc::detail {

class pool_core final : public std::enable_shared_from_this<pool_core>, public pool_canceller {
public:
  // Starts options.processes workers (resolved: not 0). std::invalid_argument for a
  // spawn initializer that a fresh image cannot call, std::system_error if a worker
  // cannot start.
  static std::shared_ptr<pool_core> start(boost::asio::any_io_executor ex, pool_options options);

  pool_core(boost::asio::any_io_executor ex, pool_options options);

  // std::logic_error once the pool is closed or terminated; for a lazy stream's items
  // (from_stream) only once it is terminated. std::invalid_argument for a timeout of zero
  // or less. nullopt: the pool's task_timeout.
  void submit(std::shared_ptr<pool_job> job, std::optional<duration> timeout,
              bool from_stream = false);
  bool cancel(pool_sink& sink) override;
  // A lazy stream that may still submit items: close() does not end the workers while
  // one is open. stream_opened is std::logic_error once the pool is closed.
  void stream_opened();
  void stream_closed() noexcept;
  void close();
  void terminate() noexcept;
  // (The coroutine holds the core: the wait may outlive the pool object.)
  static awaitable<void> join(std::shared_ptr<pool_core> self);
  std::size_t size() const noexcept { return options_.processes; }

private:
  struct worker : scheduled_worker, std::enable_shared_from_this<worker> {
    explicit worker(const boost::asio::any_io_executor& ex, worker_page* page)
        : scheduled_worker(&page->claimed), socket(ex), page(page),
          arguments(reinterpret_cast<char*>(page) + worker_page_size, payload_region_bytes,
                    &page->arguments_released),
          results(reinterpret_cast<char*>(page) + worker_page_size + payload_region_bytes) {}
    boost::asio::local::stream_protocol::socket socket;
    std::shared_ptr<process_child> proc;
    worker_page* page; // then its payload regions (lib/pool_payload.hpp)
    payload_sender arguments;
    const char* results;
    std::string out, writing; // frames to send, frames being sent
    std::string start_error;  // what its initializer threw
    // Made when it is first sent a timed chunk; armed while timer_due != 0.
    std::unique_ptr<boost::asio::steady_timer> timeout_timer;
    std::int64_t timer_due = 0;
    // Coroutine tasks it was told to cancel: item number, and when to kill the worker if
    // that item is still unanswered then (it may never have read the cancel frame).
    std::vector<std::pair<std::uint64_t, std::int64_t>> cancels;
    std::int64_t stop_by = 0; // stopping: when to kill it whether its answers came or not
  };
  // A worker's end of its link, before the worker starts on it.
  struct link {
    int parent_fd = -1, worker_fd = -1;
    int memfd = -1; // spawn, forkserver: the shared page's memory
    worker_page* page = nullptr;
    void close_worker_side() noexcept;
    void close_all() noexcept;
  };

  // spawn or forkserver: workers are fresh images, which share no memory or code
  // addresses with this process but those of libcoproc's own image.
  bool spawning() const { return options_.method != start_method::fork; }
  void spawn_locked();
  link make_link() const;
  std::shared_ptr<process_child> start_worker(link& l);
  void adopt_locked(const link& l, std::shared_ptr<process_child> proc);

  static awaitable<void> read_loop(std::shared_ptr<pool_core> self, std::shared_ptr<worker> w);
  static awaitable<void> replace_after(std::shared_ptr<pool_core> self, bool slow);
  bool needs_worker_locked() const;
  bool take_results_locked(worker& w, byte_buffer& in);
  void deliver_locked(worker& w, bool failed, std::string_view bytes);

  void check_reaches_workers_locked(const pool_job& job);
  void schedule_dispatch_locked();
  void dispatch_locked();
  bool encode_chunk(worker& w, const pool_chunk& c);
  void start_write(const std::shared_ptr<worker>& w);

  void arm_timeout_locked(worker& w, std::int64_t due);
  void check_timeouts_locked(worker& w);
  // The coroutine task of w that must have ended by now and has not, if any (0 if none);
  // otherwise when to look again (0: nothing to watch).
  std::pair<std::uint64_t, std::int64_t> overdue_coroutine_locked(worker& w, std::int64_t now);
  std::exception_ptr timeout_error_of(const worker& w, const pool_job& job) const;
  // Kills w with its process group for item `seq`, which then fails with `error` (null:
  // worker_lost); its unstarted items go back to the queue first.
  void kill_locked(worker& w, std::uint64_t seq, std::exception_ptr error) noexcept;
  // Kills w for a cancelled sync task, once the answers it batched before it have come.
  void stop_locked(worker& w) noexcept;
  // A stopping worker whose answers came (or whose time is up) is killed now.
  void stop_if_due_locked(worker& w, std::int64_t now) noexcept;

  static void kill_group(worker& w) noexcept;
  bool worker_gone_locked(worker& w, int code);
  void kill_workers_locked() noexcept;
  void terminate_locked() noexcept;
  std::exception_ptr start_failure(const worker& w, int code) const;
  void fail_pool_locked(std::exception_ptr error) noexcept;

  std::mutex mutex_;
  boost::asio::any_io_executor ex_;
  const pool_options options_;
  pool_initializer::travel_form initializer_; // spawn: the initializer as a fresh image rebuilds it
  pool_scheduler scheduler_;
  std::vector<std::shared_ptr<worker>> workers_;
  std::unordered_set<std::intptr_t> checked_offsets_; // spawn: code known to reach a fresh image
  std::size_t live_ = 0;                              // worker processes not reaped yet
  std::size_t open_streams_ = 0;                      // lazy streams that may still submit
  std::exception_ptr failed_;                         // why every task fails (fail_pool_locked)
  waiter_list join_waiters_;
  boost::asio::steady_timer rebalance_timer_{ex_};
  bool closed_ = false, terminated_ = false, dispatch_posted_ = false, rebalance_armed_ = false;
};

// What a timeout's message calls the task: the function's symbol where the dynamic symbol
// table has it, else the callable's type.
std::string task_name(const pool_job& job);

} // namespace coproc::detail
