// coproc/pool.hpp — multiprocessing.Pool, awaitable.
//
//   coproc::pool pool(co_await boost::asio::this_coro::executor, 4);
//   int nine = co_await pool.apply(square, 3);
//   std::vector<int> squares = co_await pool.map(square, items);
//   pool.close();
//   co_await pool.join();
//
// Workers start when the pool is made (forked, or fresh images with start_method::spawn)
// and talk to it over one socket each; many small tasks and results travel batched, and
// the parent's io_context only ever does short steps, so it stays responsive while the
// pool is saturated. Work queued behind a slow task is taken back for an idle worker.
// A task is a callable plus arguments; arguments and results cross in the wire format
// (coproc/wire.hpp), of any size: lengths are 64 bits, and a frame or record is refused
// only above 64 TiB (a protocol error); below that the cap is memory, the value and its
// encoding on each side (no memory for one fails that task with std::bad_alloc, or its
// worker with worker_lost). Small ones cross through the worker's socket, batched; one of
// 256 KiB or more (encoded) goes through memory the worker shares with the pool, encoded
// straight into it and decoded straight from there, up to 2 GiB in flight each way per
// worker (a larger one, or one that finds the region full, takes the socket: no other cap).
// Arguments are values: apply and map copy an lvalue (a large string or vector of numbers
// onto huge pages) and move an rvalue, and apply and map move their results out, so
// `data = co_await pool.apply(f, std::move(data))` copies the value only into and out of
// the shared memory. Remote workers use their socket for everything. At gigabytes per
// second the cost is page faults in the result's fresh memory (about 2.4 us per 4 KiB on
// the VMs we measure on): a program that moves large values keeps glibc from giving its
// freed heap back with mallopt(M_TOP_PAD, ...), which the pool leaves to the program.
// The callable is a function pointer or a captureless lambda / empty function object (it
// crosses as an offset in the executable's image, never as a pointer into this heap), a
// function object with a cereal serialize (default constructible and copyable: its state
// is encoded once per submission and travels with every task), or coproc::partial(f,
// bound...) of one (coproc/partial.hpp: the bound arguments travel the same way). A lambda
// with captures is a compile-time error that says why: its state cannot travel.
//
// A callable returning awaitable<R> is a coroutine task: the caller gets R, and a worker
// runs up to pool_options::concurrency of them at once on its own io_context (a task may
// await timers, sockets, coproc::run). A worker is sent that many at most; answers leave
// in item order, so a long one holds back the answers of the shorter ones started after
// it in the same worker. Each coroutine task keeps its own timeout in its worker: at the
// timeout the worker cancels it (terminal cancellation: the operation it awaits fails
// with operation_aborted, a coproc::run it awaits kills its child) and it fails with
// task_timeout once it has ended, its siblings untouched. cancel() stops a running
// coroutine task the same way. One that has not ended 0.2 s after its cancellation (it
// swallows the cancellation, or blocks the worker's thread) is stopped as a late sync
// task is: its worker is killed with its process group and replaced, and the worker's
// other started, unanswered tasks fail with worker_lost.
//
// imap / imap_unordered take their range by value. With pool_options::buffersize they
// pull it lazily (any input range, an endless one too), with at most buffersize results
// pulled and not yet taken; destroying the stream's last handle stops the pulling and
// withdraws its items not yet sent to a worker.
//
// A task that throws fails with remote_error. A worker that dies (signal, _exit, OOM)
// fails exactly the tasks it had started and not answered with worker_lost, tasks it
// had not started go to the other workers, and a replacement worker starts (running
// the initializer). Workers that fail to start 3 times in a row (an initializer that
// throws, a crash before it returns) fail every unfinished and later task with a
// coproc::error naming the initializer's error and the exit code. terminate() kills the
// workers with SIGKILL.
//
// Timeouts (task_options, pool_options::task_timeout): the clock of an apply starts when
// its task starts in a worker, that of a map/imap/starmap item when that item starts (the
// items of a chunk run one after another in one worker, each with its own clock). A task
// still running at its timeout fails with task_timeout; its worker is killed with its
// whole process group (every worker leads its own; a task that calls setsid or setpgid
// escapes), a replacement starts, the worker's unstarted items go to the other workers,
// and every other task is unaffected (in a timed chunk each item's answer leaves the
// worker as soon as it is ready, so none that finished is lost). The cost without a
// timeout is nil; with one, a timer per worker and a clock read per item.
//
// Cancellation: async_result::cancel() withdraws a task that has not started and stops a
// running one as a timeout does; the result then fails with operation_aborted. For a
// map_async result every unfinished item is withdrawn or stopped. A running item whose
// answer was already on its way when cancel() came is not killed (the worker has moved
// on); its answer is ignored. Before a worker is killed for a cancelled sync task it is
// asked for the answers it had batched (a signal, SIGURG, to its main thread; up to
// 0.5 s), so the tasks that finished before that one in the same worker keep their
// results; a task that installs its own SIGURG handler in the worker gives this up. A
// coroutine task is cancelled inside its worker, its siblings untouched.
//
// Every await of the pool (apply, map, starmap, get, wait, next, join) honours Asio
// cancellation, e.g. `co_await (pool.apply(f, x) || timer)`: the await ends at once with
// boost::system::system_error (operation_aborted), as use_awaitable reports it. apply, map
// and starmap own their task, so terminal cancellation cancels it too, as cancel() does.
// For get, wait and next only that wait is abandoned: the task goes on in its worker, a
// later get() of the same result still returns it, and a cancelled next() takes no item.
//
// A pool may be used from any thread, also when its io_context runs on several threads
// (test/test_threaded_server.cpp); in a threaded program, start its workers with
// start_method::spawn (coproc/start_method.hpp).
#pragma once

#include <coproc/awaitable.hpp>
#include <coproc/detail/pool_state.hpp>
#include <coproc/detail/pool_task.hpp>
#include <coproc/remote_workers.hpp>
#include <coproc/start_method.hpp>

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/error.hpp>
#include <boost/system/system_error.hpp>

#include <atomic>
#include <cstddef>
#include <functional>
#include <iterator>
#include <limits>
#include <exception>
#include <memory>
#include <mutex>
#include <optional>
#include <ranges>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <typeinfo>
#include <utility>
#include <vector>

namespace coproc {

struct pool_options {
  unsigned processes = 0; // 0 → cpu_count()
  // Run once in every worker, replacements too: any callable with fork; with spawn and
  // forkserver one that can travel to a fresh image (below).
  detail::pool_initializer initializer{};
  unsigned maxtasksperchild = 0; // 0 → unlimited; else a worker is replaced after N tasks
                                 // (one apply, or one chunk of a map, is one task;
                                 // a chunk above 16384 items counts as several)
  // fork: workers are copies of this process now (Python's fork). spawn: fresh images of
  // this executable (posix_spawn of /proc/self/exe, named SpawnPoolWorker-N): start cost
  // does not grow with this process's memory, workers see the program's initial globals,
  // and the initializer must be a plain function (noexcept or not); it and the tasks must
  // be in the executable or a library loaded before main_guard (a fresh image has no
  // library dlopened later): std::invalid_argument at construction or submission
  // otherwise; main must call coproc::main_guard (std::logic_error otherwise).
  // forkserver: as spawn (the same rules, named ForkServerPoolWorker-N), but each worker is
  // forked by this process's fork server (coproc/start_method.hpp), so a worker's start
  // costs the fork of a small process. nullopt: get_start_method() when the pool is made.
  std::optional<start_method> method{};
  // Set: the workers run on other hosts, started by a launcher (coproc/remote_workers.hpp);
  // processes and method are then unused (remote_workers::processes says how many), and
  // the initializer must be a plain function, as with spawn. Task timeouts and cancel()
  // stop a remote task on its host (coproc/remote_workers.hpp).
  std::optional<remote_workers> remote{};
  // Coroutine tasks (F returns awaitable<R>) one worker runs at once on its io_context.
  unsigned concurrency = 1;
  // imap / imap_unordered: results pulled and not yet taken by next() at most; the input
  // is then pulled lazily (0: a sized input is copied at the call, an unsized one is
  // std::invalid_argument).
  std::size_t buffersize = 0;
  // The timeout of every task that sets none (task_options); nullopt: none. Zero or
  // negative: std::invalid_argument at construction.
  std::optional<duration> task_timeout{};
};

// Per submission: for apply_async/apply the task, for map/imap/starmap each item.
struct task_options {
  // From the task's start in a worker; nullopt: pool_options::task_timeout. Zero or
  // negative: std::invalid_argument at the call.
  std::optional<duration> timeout{};
};

template <class T> class async_result;
template <class T> class result_stream;
// Each result as it finishes, with its index in `results` (concurrent.futures.as_completed).
// A result that is ready already comes at once; the stream ends after the last.
template <class T>
result_stream<std::pair<std::size_t, async_result<T>>>
as_completed(std::vector<async_result<T>> results);

namespace detail {
template <class T> constexpr bool pool_decoded<std::pair<std::size_t, async_result<T>>> = false;
} // namespace detail

// multiprocessing.pool.AsyncResult.
template <class T> class async_result {
public:
  // The value, or the task's error (remote_error, worker_lost, pool_closed). May be
  // awaited more than once, also from several coroutines.
  awaitable<T> get() { return get_until(state_, detail::deadline::never()); }
  // timeout_error when the result is not ready in time (the task goes on).
  awaitable<T> get(duration timeout) { return get_until(state_, detail::deadline::after(timeout)); }
  awaitable<void> wait() { return wait_until(state_); }
  // Whether it became ready in time.
  awaitable<bool> wait(duration timeout) {
    return ready_by(state_, detail::deadline::after(timeout));
  }
  bool ready() const { return state_->ready(); }
  // std::logic_error while not ready.
  bool successful() const { return state_->successful(); }
  // Withdraws the task if it has not started, stops it if it runs (its worker is killed
  // with its process group and replaced); for a map_async result, every unfinished item.
  // Then ready() is true, successful() false, and get() throws system_error
  // (operation_aborted). True unless it had finished already (a second call: false).
  bool cancel() { return state_->cancel(); }

private:
  friend class pool;
  template <class U>
  friend result_stream<std::pair<std::size_t, async_result<U>>>
  as_completed(std::vector<async_result<U>> results);
  explicit async_result(std::shared_ptr<detail::result_state<T>> state)
      : state_(std::move(state)) {}

  // (Awaitables named first: g++ 12 mishandles them inside a co_await expression.)
  static awaitable<T> get_until(std::shared_ptr<detail::result_state<T>> state,
                                detail::deadline until) {
    auto wait = state->wait(until);
    bool ready = co_await std::move(wait);
    if (!ready)
      throw timeout_error("coproc::async_result::get: the pool task did not finish in time");
    co_return state->result();
  }
  // get() for pool::apply, map and starmap, whose await is the result's only reader.
  static awaitable<T> take(std::shared_ptr<detail::result_state<T>> state) {
    auto wait = state->wait(detail::deadline::never());
    co_await std::move(wait);
    co_return state->take_result();
  }
  static awaitable<void> wait_until(std::shared_ptr<detail::result_state<T>> state) {
    auto wait = state->wait(detail::deadline::never());
    co_await std::move(wait);
  }
  // (The state is held by the coroutine: the wait may outlive this async_result.)
  static awaitable<bool> ready_by(std::shared_ptr<detail::result_state<T>> state,
                                  detail::deadline until) {
    auto wait = state->wait(until);
    bool ready = co_await std::move(wait);
    co_return ready;
  }

  std::shared_ptr<detail::result_state<T>> state_;
};

// The results of imap / imap_unordered.
template <class T> class result_stream {
public:
  // The next result (in item order for imap, as they finish for imap_unordered);
  // nullopt after the last. An item that failed throws its error here, and the next
  // call goes on with the following item.
  awaitable<std::optional<T>> next() { return next_of(reader_); }

private:
  friend class pool;
  template <class U>
  friend result_stream<std::pair<std::size_t, async_result<U>>>
  as_completed(std::vector<async_result<U>> results);

  // What the copies of a stream and their next() calls share; the last of them to go
  // (a copy, or a next() still waiting) stops a lazy input.
  struct reader {
    std::shared_ptr<detail::stream_state<T>> state;
    std::shared_ptr<detail::stream_feeder> feeder; // a lazy input's
    reader(std::shared_ptr<detail::stream_state<T>> s, std::shared_ptr<detail::stream_feeder> f)
        : state(std::move(s)), feeder(std::move(f)) {}
    reader(const reader&) = delete;
    reader& operator=(const reader&) = delete;
    // A result was taken (or a wait abandoned): a lazy input may pull more.
    void taken() {
      if (feeder) feeder->taken(state->handed());
    }
    ~reader() {
      if (feeder) feeder->stop();
    }
  };

  explicit result_stream(std::shared_ptr<detail::stream_state<T>> state,
                         std::shared_ptr<detail::stream_feeder> feeder = nullptr)
      : reader_(std::make_shared<reader>(std::move(state), std::move(feeder))) {}

  // (The coroutine holds the reader: the wait may outlive this handle.)
  static awaitable<std::optional<T>> next_of(std::shared_ptr<reader> r) {
    using state_type = detail::stream_state<T>;
    std::optional<typename state_type::slot> ready;
    // A ready item is taken at once; only an empty stream costs a wait.
    if (r->state->poll(ready) != state_type::poll_result::empty) {
      r->taken();
      co_return state_type::unwrap(ready);
    }
    std::optional<T> item;
    std::exception_ptr error;
    try {
      auto next = r->state->next();
      item = co_await std::move(next);
    } catch (...) {
      error = std::current_exception();
    }
    r->taken();
    if (error) std::rethrow_exception(error);
    co_return item;
  }

  std::shared_ptr<reader> reader_;
};

namespace detail {
class pool_core;   // lib/pool_core.hpp
class remote_core; // lib/pool_remote.hpp

template <class Range> using pool_item_t = std::ranges::range_value_t<Range>;

// The items a submission keeps: moved out of a container passed as an rvalue (it is the
// pool's now), copied from anything else (a view may refer to the caller's container).
template <class Range> auto copy_items(Range&& items) {
  std::vector<pool_item_t<Range>> out;
  if constexpr (std::ranges::sized_range<Range>) out.reserve(std::ranges::size(items));
  constexpr bool owned = std::is_rvalue_reference_v<Range&&> &&
                         !std::ranges::view<std::remove_cvref_t<Range>> &&
                         std::is_lvalue_reference_v<std::ranges::range_reference_t<Range>>;
  for (auto&& item : items) {
    if constexpr (owned) out.push_back(std::move(item));
    else out.push_back(held_copy(item));
  }
  return out;
}

// A lazy stream's hold on its pool (lib/pool.cpp): while it may still pull items, close()
// lets the workers go on, and its items may be submitted after close().
class stream_port {
public:
  // One of core and remote is set. std::logic_error if the pool is closed or terminated.
  stream_port(std::shared_ptr<pool_core> core, std::shared_ptr<remote_core> remote,
              std::optional<duration> timeout, const std::type_info& callable);
  stream_port(stream_port&&) = default;
  ~stream_port();
  // std::logic_error once the pool is terminated.
  void submit(std::shared_ptr<pool_job> job);
  // The stream pulls nothing more (also at destruction).
  void done() noexcept;

private:
  std::shared_ptr<pool_core> core_;
  std::shared_ptr<remote_core> remote_;
  std::optional<duration> timeout_;
  const std::type_info* callable_;
};

// Pulls items of `range` as results are taken: at most `buffersize` in flight (pulled,
// not yet handed to a reader), submitted a chunk at a time.
template <class Range, class R> class range_feeder final : public stream_feeder {
public:
  using item_type = std::ranges::range_value_t<Range>;

  range_feeder(pool_trampoline fn, pool_callable_info callable, Range range, std::size_t chunksize,
               std::size_t buffersize, std::shared_ptr<stream_state<R>> stream, stream_port port)
      : fn_(fn), callable_(std::move(callable)), step_(std::min(chunksize, buffersize)),
        chunksize_(chunksize), buffersize_(buffersize), stream_(std::move(stream)),
        port_(std::move(port)), range_(std::move(range)), it_(std::ranges::begin(range_)) {}

  // The first fill, at the call: what submit throws (a closed pool, a spawn task in a
  // library dlopened after main_guard) reaches the caller.
  void start() {
    std::lock_guard lock(mutex_);
    fill(true);
    mark_room();
  }
  void stop() noexcept override {
    std::lock_guard lock(mutex_);
    stream_->abandon();
    if (!done_) {
      done_ = true;
      port_.done();
    }
  }

private:
  void refill() override {
    std::lock_guard lock(mutex_);
    fill(false);
    mark_room();
  }
  // Caller holds mutex_.
  void fill(bool first) {
    if (done_) return;
    std::size_t handed = stream_->handed();
    while (!done_ && pulled_ - handed + step_ <= buffersize_) {
      std::vector<item_type> items;
      items.reserve(step_);
      std::exception_ptr range_error;
      try {
        for (; items.size() < step_ && it_ != std::ranges::end(range_); ++it_)
          items.push_back(*it_);
      } catch (...) {
        range_error = std::current_exception();
      }
      std::size_t base = pulled_;
      pulled_ += items.size();
      if (!items.empty()) {
        try {
          port_.submit(std::make_shared<stream_chunk_job<item_type, R>>(
              fn_, callable_, std::move(items), chunksize_, stream_, base));
        } catch (...) {
          if (first) {
            done_ = true;
            port_.done();
            throw;
          }
          // The pool was terminated meanwhile: these items fail as unfinished ones do.
          for (std::size_t i = base; i < pulled_; ++i)
            stream_->fail(i, std::make_exception_ptr(pool_closed()));
          return finish();
        }
      }
      if (range_error) {
        stream_->fail(pulled_++, range_error); // the input's own error ends the stream
        return finish();
      }
      if (it_ == std::ranges::end(range_)) return finish();
    }
  }
  // Caller holds mutex_. The next step fits once this many items are handed
  // (pulled_ - handed + step_ <= buffersize_); none does once the input is done.
  void mark_room() {
    std::size_t need = pulled_ + step_;
    room_at(done_                ? std::numeric_limits<std::size_t>::max()
            : need > buffersize_ ? need - buffersize_
                                 : 0);
  }
  void finish() {
    stream_->set_total(pulled_);
    done_ = true;
    port_.done();
  }

  std::mutex mutex_;
  const pool_trampoline fn_;
  const pool_callable_info callable_;
  const std::size_t step_, chunksize_, buffersize_;
  const std::shared_ptr<stream_state<R>> stream_;
  stream_port port_;
  Range range_;
  std::ranges::iterator_t<Range> it_;
  std::size_t pulled_ = 0;
  bool done_ = false;
};
} // namespace detail

class pool {
public:
  // Starts the workers now (forked, fresh images with spawn, forked by the fork server with
  // forkserver). std::system_error if that fails; std::invalid_argument for a spawn or
  // forkserver initializer that cannot travel; std::logic_error for spawn or forkserver in
  // a program whose main did not call coproc::main_guard.
  pool(boost::asio::any_io_executor ex, pool_options options = {});
  pool(boost::asio::any_io_executor ex, unsigned processes);
  pool(const pool&) = delete;
  pool& operator=(const pool&) = delete;
  // terminate(): unfinished results and streams fail with pool_closed.
  ~pool();

  // Result of f(args...), computed in a worker. Cancelling the await cancels the task.
  // The arguments are taken as values (API.md's `A... args`), copied or moved at the call;
  // they are forwarding references only so that the pool makes the copy itself (a large
  // one on huge pages: detail::held_copy).
  template <class F, class... A>
    requires(!std::is_same_v<F, task_options>)
  auto apply(F f, A&&... args) {
    return apply(task_options{}, f, std::forward<A>(args)...);
  }
  template <class F, class... A> auto apply(task_options options, F f, A&&... args) {
    return owned(apply_async(std::move(options), f, std::forward<A>(args)...));
  }

  template <class F, class... A>
    requires(!std::is_same_v<F, task_options>)
  auto apply_async(F f, A&&... args) {
    return apply_async(task_options{}, f, std::forward<A>(args)...);
  }
  template <class F, class... A> auto apply_async(task_options options, F f, A&&... args) {
    return apply_values<F, std::decay_t<A>...>(std::move(options), f, std::forward<A>(args)...);
  }

  // f(item) for every item, results in item order. chunksize 0 picks one as Python
  // does: ceil(len / (4 * processes)). The first failing item's error (in item order)
  // is rethrown once every item has ended. Cancelling the await of map or starmap
  // cancels every unfinished item.
  template <class F, class Range>
    requires(!std::is_same_v<F, task_options>)
  auto map(F f, Range&& items, std::size_t chunksize = 0) {
    return map(task_options{}, f, std::forward<Range>(items), chunksize);
  }
  template <class F, class Range>
  auto map(task_options options, F f, Range&& items, std::size_t chunksize = 0) {
    return owned(map_async(std::move(options), f, std::forward<Range>(items), chunksize));
  }
  template <class F, class Range>
    requires(!std::is_same_v<F, task_options>)
  auto map_async(F f, Range&& items, std::size_t chunksize = 0) {
    return map_async(task_options{}, f, std::forward<Range>(items), chunksize);
  }
  template <class F, class Range>
  auto map_async(task_options options, F f, Range&& items, std::size_t chunksize = 0) {
    detail::check_pool_callable<F>();
    using T = detail::pool_item_t<Range>;
    return submit_map<F, T>(&detail::item_trampoline<F, T>, f,
                            detail::copy_items(std::forward<Range>(items)), chunksize, options);
  }

  // f(args...) for every tuple of args.
  template <class F, class Range>
    requires(!std::is_same_v<F, task_options>)
  auto starmap(F f, Range&& tuples, std::size_t chunksize = 0) {
    return starmap(task_options{}, f, std::forward<Range>(tuples), chunksize);
  }
  template <class F, class Range>
  auto starmap(task_options options, F f, Range&& tuples, std::size_t chunksize = 0) {
    using T = detail::pool_item_t<Range>;
    detail::check_pool_callable<F>();
    using Raw = decltype(std::apply(std::declval<F&>(), std::declval<T&>()));
    static_assert(!std::is_void_v<detail::task_value_t<Raw>>,
                  "coproc::pool::starmap: f must return a value (a vector of "
                  "results is returned); use apply_async for void tasks");
    return owned(submit_map<F, T, Raw, true>(&detail::star_trampoline<F, T>, f,
                                             detail::copy_items(std::forward<Range>(tuples)),
                                             chunksize, options));
  }

  // Results as a stream, in item order. The range is taken by value. With
  // pool_options::buffersize > 0 its items are pulled lazily, any input range (an endless
  // one too: std::views::iota(0)), at most buffersize in flight; destroying the last
  // handle of the stream withdraws its unsent items and pulls no more, and until then
  // close() lets the stream finish. Without buffersize a sized range is copied at the
  // call and an unsized one is std::invalid_argument.
  template <class F, class Range>
    requires(!std::is_same_v<F, task_options>)
  auto imap(F f, Range items, std::size_t chunksize = 1) {
    return submit_stream<F>(f, std::move(items), chunksize, true, task_options{});
  }
  template <class F, class Range>
  auto imap(task_options options, F f, Range items, std::size_t chunksize = 1) {
    return submit_stream<F>(f, std::move(items), chunksize, true, options);
  }
  // As imap, results as they finish.
  template <class F, class Range>
    requires(!std::is_same_v<F, task_options>)
  auto imap_unordered(F f, Range items, std::size_t chunksize = 1) {
    return submit_stream<F>(f, std::move(items), chunksize, false, task_options{});
  }
  template <class F, class Range>
  auto imap_unordered(task_options options, F f, Range items, std::size_t chunksize = 1) {
    return submit_stream<F>(f, std::move(items), chunksize, false, options);
  }

  // No new tasks; queued ones still run, then the workers exit.
  void close();
  // Kills the workers now; every unfinished result fails with pool_closed.
  void terminate();
  // After close() or terminate() (std::logic_error before): until every worker has exited.
  awaitable<void> join();
  // The number of worker processes.
  std::size_t size() const;

private:
  // std::invalid_argument for a timeout of zero or less.
  void submit(std::shared_ptr<detail::pool_job> job, const task_options& options,
              const std::type_info& callable);
  std::size_t default_chunksize(std::size_t n) const;

  // apply_async with the argument types V (the values it keeps).
  template <class F, class... V, class... A>
  auto apply_values(task_options options, F f, A&&... args) {
    detail::check_pool_callable<F>();
    static_assert(std::is_invocable_v<F&, V&...>,
                  "coproc::pool::apply: f cannot be called with these arguments");
    using Raw = std::invoke_result_t<F&, V&...>;
    using R = detail::task_value_t<Raw>;
    auto state = std::make_shared<detail::result_state<R>>();
    // The arguments are kept as they are and encoded straight into the frame when sent:
    // a large argument is held once, plus its encoding while it is being written.
    std::vector<std::tuple<V...>> item;
    item.emplace_back(detail::held_copy(std::forward<A>(args))...);
    submit(std::make_shared<detail::items_job<std::tuple<V...>, true>>(
               &detail::apply_trampoline<F, V...>, detail::callable_info<F, Raw>(f),
               std::move(item), 1, state),
           options, typeid(F));
    return async_result<R>(std::move(state));
  }

  // The await of a task that only this await sees: cancelling it cancels the task.
  // (Nothing is awaited inside the handler; the awaitable is named first for g++ 12.)
  template <class R> static awaitable<R> owned(async_result<R> result) {
    try {
      auto get = async_result<R>::take(result.state_);
      if constexpr (std::is_void_v<R>) {
        co_await std::move(get);
        co_return;
      } else {
        co_return co_await std::move(get);
      }
    } catch (const boost::system::system_error& e) {
      if (e.code() != boost::asio::error::operation_aborted) throw;
    }
    result.cancel();
    throw boost::system::system_error(boost::asio::error::operation_aborted);
  }

  template <class F, class T, class Raw = std::invoke_result_t<F&, T&>, bool Parts = false>
  auto submit_map(detail::pool_trampoline fn, F f, std::vector<T> items, std::size_t chunksize,
                  const task_options& options) {
    detail::check_pool_callable<F>();
    using R = detail::task_value_t<Raw>;
    static_assert(!std::is_void_v<R>, "coproc::pool::map: f must return a value (a vector of "
                                      "results is returned); use apply_async for void tasks");
    auto state = std::make_shared<detail::map_state<R>>(items.size());
    if (chunksize == 0) chunksize = default_chunksize(items.size());
    submit(std::make_shared<detail::items_job<T, Parts>>(fn, detail::callable_info<F, Raw>(f),
                                                         std::move(items), chunksize, state),
           options, typeid(F));
    return async_result<std::vector<R>>(std::move(state));
  }

  template <class F, class Range>
  auto submit_stream(F f, Range items, std::size_t chunksize, bool ordered,
                     const task_options& options) {
    detail::check_pool_callable<F>();
    static_assert(std::ranges::input_range<Range>, "coproc::pool::imap: items must be a range");
    using T = detail::pool_item_t<Range>;
    using Raw = std::invoke_result_t<F&, T&>;
    using R = detail::task_value_t<Raw>;
    static_assert(!std::is_void_v<R>, "coproc::pool::imap: f must return a value (a stream of "
                                      "results is returned); use apply_async for void tasks");
    if (chunksize == 0) chunksize = 1;
    auto fn = &detail::item_trampoline<F, T>;
    if (buffersize_ == 0) {
      if constexpr (std::ranges::sized_range<Range>) {
        auto copied = detail::copy_items(std::move(items));
        auto state = std::make_shared<detail::stream_state<R>>(copied.size(), ordered);
        submit(std::make_shared<detail::items_job<T>>(fn, detail::callable_info<F, Raw>(f),
                                                      std::move(copied), chunksize, state),
               options, typeid(F));
        return result_stream<R>(std::move(state));
      } else {
        throw std::invalid_argument(
            "coproc::pool::imap: an unsized input range (such as std::views::iota(0)) needs "
            "pool_options::buffersize > 0, or the pool would have to copy it whole first");
      }
    }
    if (options.timeout && *options.timeout <= duration::zero())
      throw std::invalid_argument("coproc::pool::imap: a task timeout must be positive");
    std::optional<std::size_t> total;
    if constexpr (std::ranges::sized_range<Range>)
      total = static_cast<std::size_t>(std::ranges::size(items));
    auto state = std::make_shared<detail::stream_state<R>>(total, ordered);
    auto feeder = std::make_shared<detail::range_feeder<Range, R>>(
        fn, detail::callable_info<F, Raw>(f), std::move(items), chunksize, buffersize_, state,
        detail::stream_port(core_, remote_, options.timeout, typeid(F)));
    feeder->start();
    return result_stream<R>(std::move(state), std::move(feeder));
  }

  std::size_t buffersize_ = 0;
  std::shared_ptr<detail::pool_core> core_;
  std::shared_ptr<detail::remote_core> remote_; // instead of core_ with options.remote
};

template <class T>
result_stream<std::pair<std::size_t, async_result<T>>>
as_completed(std::vector<async_result<T>> results) {
  using item = std::pair<std::size_t, async_result<T>>;
  auto stream = std::make_shared<detail::stream_state<item>>(results.size(), false);
  for (std::size_t i = 0; i < results.size(); ++i) {
    // (Weak: a result that never finishes does not keep itself alive through its callback.)
    std::weak_ptr<detail::result_state<T>> weak = results[i].state_;
    results[i].state_->on_ready([stream, weak, i] {
      if (auto state = weak.lock()) stream->push(i, item(i, async_result<T>(std::move(state))));
    });
  }
  return result_stream<item>(std::move(stream));
}

} // namespace coproc
