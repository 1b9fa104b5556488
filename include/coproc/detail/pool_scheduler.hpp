// coproc/detail/pool_scheduler.hpp — the pool's scheduling decisions, apart from its
// sockets and processes (lib/pool_scheduler.cpp; lib/pool_core.cpp carries them out).
//
// It holds the work not sent yet and, per worker, what was sent and not answered, and
// decides from events (a submission, a chunk sent, an answer, a timing record, a worker
// started or lost, the time now) which worker gets which chunk, when a slow worker's
// unstarted items are taken back, what counts toward maxtasksperchild and when a worker
// retires. Times are nanoseconds on any monotonic clock the caller chooses.
//
// How many items a worker may hold is adaptive: about 2 ms of work by the measured cost
// of the task's function, and one chunk at a time while that cost is unknown (so slow
// tasks spread over the workers as Python's shared queue spreads them); of coroutine
// tasks, as many items as it runs at once (pool_options::concurrency). When a worker is
// idle with nothing left to send, the unstarted items of a worker that has not answered
// for 2 ms go back to the front of the queue. A worker that dies fails exactly the items
// it had claimed and not answered; the rest go to other workers first. A chunk taken back
// whole does not count toward maxtasksperchild, on either side.
#pragma once

#include <coproc/detail/pool_protocol.hpp>
#include <coproc/detail/pool_state.hpp>

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <exception>
#include <memory>
#include <unordered_map>
#include <utility>
#include <vector>

namespace coproc::detail {

// How much work a worker may hold: about this long by the measured cost.
constexpr std::int64_t queued_work_ns = 2'000'000;
// A worker silent this long while others idle loses its unstarted items.
constexpr std::int64_t steal_after_ns = 2'000'000;
// Chunks a worker may hold at most, whatever their cost.
constexpr std::size_t max_held_chunks = 4096;
// This many worker starts failing in a row (the process ended before its initializer
// returned) fail the pool's tasks instead of starting workers forever.
constexpr unsigned max_failed_starts = 3;

// Items first .. first + n - 1 of a job; seq is the worker's number for item `first`
// once sent.
struct pool_chunk {
  std::shared_ptr<pool_job> job;
  std::size_t first, n;
  std::uint64_t seq = 0;
};

// The scheduler's view of one worker.
struct scheduled_worker {
  explicit scheduled_worker(std::atomic<std::uint64_t>* claimed) : claimed(claimed) {}
  // The worker_page counter: the last item number the worker (or the parent) claimed.
  std::atomic<std::uint64_t>* claimed;
  std::deque<pool_chunk> held; // sent, not all answered, in order
  std::size_t held_items = 0;
  std::size_t front_answered = 0; // answered items of held.front()
  std::uint64_t sent_seq = 0;     // the number of the last item sent
  unsigned chunks_sent = 0;       // toward maxtasksperchild
  bool write_pending = false;     // frames on their way: it is not idle
  bool shut = false;              // told no more work comes
  bool retiring = false;          // maxtasksperchild chunks were sent
  bool gone = false;
  bool started = false;           // its initializer returned
  bool stealable = true;          // false: claims arrive as messages (a remote worker), so
                                  //   the parent cannot take unstarted items back
  bool stopping = false;          // to be killed once its batched answers came (a cancel)
  bool killed = false;            // killed on a timeout or a cancellation, not reaped yet
  std::uint64_t killed_seq = 0;   // the item it was killed for, which fails with kill_error
  std::exception_ptr kill_error;  //   (or worker_lost if null)
  std::int64_t last_progress = 0; // when it last answered, or got work while idle

  bool accepting() const { return !gone && !shut && !retiring && !stopping && !killed; }
  // Items not claimed yet.
  std::uint64_t unstarted() const {
    std::uint64_t c = claimed->load();
    return sent_seq > c ? sent_seq - c : 0;
  }
};

class pool_scheduler {
public:
  // maxtasksperchild 0: unlimited. concurrency: the coroutine task items a worker may
  // hold at once (it runs them all at once).
  explicit pool_scheduler(unsigned maxtasksperchild, unsigned concurrency = 1)
      : maxtasks_(maxtasksperchild), concurrency_(std::max(concurrency, 1u)) {}

  // Workers take part in the order added; a worker is removed only through lost().
  void add(scheduled_worker& w) { workers_.push_back(&w); }

  // True when the submission should be dispatched now rather than with the rest of this
  // step's submissions: it is the only work and a worker is idle (apply's round trip).
  bool submit(std::shared_ptr<pool_job> job);
  bool has_work() const { return !retry_.empty() || !queue_.empty(); }
  // Whether no worker has an item sent and not claimed.
  bool all_claimed() const;

  struct dispatch_result {
    bool more = false;           // the budget ran out with work left: dispatch again soon
    std::int64_t look_again = 0; // > 0: dispatch again after this many ns (a steal is due)
  };
  // Hands out chunks, one per worker per round while speeds are unknown, at most about
  // max_frame_items items in all (a large map is sent in several steps, so the io_context
  // runs other work in between), and takes back work stuck behind a slow task when a
  // worker is idle with nothing left to send. send(worker, chunk) encodes the chunk for
  // the worker: true once it is on its way, false if encoding failed (the chunk's items
  // then failed).
  template <class Send> dispatch_result dispatch(std::int64_t now, Send&& send);

  // A timing record: the average cost of the trampoline's items.
  void measured(const timing_record& t);
  // Measured ns per item, 0 while unknown.
  double cost(std::intptr_t trampoline) const;

  // The worker's answer to its next item: where it goes. `keep` holds the sink when the
  // answer completes the chunk (the job, maybe a large argument, is released before the
  // result is decoded).
  struct answer {
    pool_sink* sink;
    std::size_t index;
    std::shared_ptr<pool_sink> keep;
  };
  // Caller checks !w.held.empty() (an answer to nothing is a protocol error).
  answer answered(scheduled_worker& w);
  void progressed(scheduled_worker& w, std::int64_t now) { w.last_progress = now; }
  void started(scheduled_worker& w) {
    w.started = true;
    failed_starts_ = 0;
  }

  // Claims w's unstarted items and queues them first for any worker. True if there were some.
  bool steal(scheduled_worker& w);

  // Cancellation: drops the sink's unsent items and takes back those sent and not
  // started (with the other unstarted items of the same workers, which are queued again).
  // Returns the workers running one of its items now: a worker running a sync task is to
  // be killed; one running coroutine tasks is to cancel them (their item numbers). (A
  // worker that is not stealable is returned if it holds an unanswered item of the sink
  // and has started no item of another submission that it has not answered.)
  struct running_items {
    scheduled_worker* worker;
    std::vector<std::uint64_t> coroutines; // empty: a sync task
  };
  std::vector<running_items> withdraw(const pool_sink& sink);
  // The job of w's unanswered item `seq`, null if it has no such item.
  static const pool_job* job_of(const scheduled_worker& w, std::uint64_t seq);

  // The timeouts of w's items, given what its page says: the item it runs (`running`)
  // and since when (steady_clock ns). `expired`: that item is past its timeout (and is
  // in `job`); else `due` > 0 is when to look again (the soonest an item of w may
  // expire), 0 when w holds no timed item. (Coroutine tasks keep their own clocks in the
  // worker: for them it is only when to look at the worker's page again.)
  struct timeout_check {
    bool expired = false;
    std::int64_t due = 0;
    std::uint64_t seq = 0;
    const pool_job* job = nullptr;
  };
  timeout_check check_timeouts(const scheduled_worker& w, std::int64_t now, std::uint64_t running,
                               std::int64_t running_since) const;

  // The worker is gone: its claimed, unanswered items fail with `error` and the rest go
  // to other workers first. True when this makes max_failed_starts failed starts in a row.
  bool lost(scheduled_worker& w, std::exception_ptr error);
  // The worker is gone and its work with it (the pool was terminated or failed).
  void forget(scheduled_worker& w);

  // Every unsent and unanswered item fails with `error`.
  void fail_all(std::exception_ptr error);

private:
  bool may_take(const scheduled_worker& w, const pool_job& job, std::size_t n,
                std::int64_t now) const;
  std::pair<const pool_job*, std::size_t> peek_chunk() const;
  pool_chunk take_chunk();
  void sent(scheduled_worker& w, pool_chunk c);
  void retire_if_done(scheduled_worker& w);
  // Steals from workers silent for steal_after_ns if one is idle: whether it stole, and
  // when to look again if a steal will be due.
  std::pair<bool, std::int64_t> rebalance(std::int64_t now);
  void remove(scheduled_worker& w);

  const unsigned maxtasks_;
  const std::size_t concurrency_;
  std::deque<std::shared_ptr<pool_job>> queue_; // submitted, not all sent
  std::deque<pool_chunk> retry_; // taken back, or sent to a worker lost before starting them
  std::vector<scheduled_worker*> workers_;
  std::unordered_map<std::intptr_t, double> cost_; // measured ns per item, by trampoline
  unsigned failed_starts_ = 0; // workers in a row that ended before they started
};

template <class Send>
pool_scheduler::dispatch_result pool_scheduler::dispatch(std::int64_t now, Send&& send) {
  dispatch_result result;
  std::size_t budget = max_frame_items;
  for (;;) {
    for (bool progress = true; progress && has_work();) {
      progress = false;
      for (scheduled_worker* w : workers_) {
        if (!has_work()) break;
        if (budget == 0) {
          result.more = true;
          break;
        }
        auto [job, n] = peek_chunk();
        if (!may_take(*w, *job, n, now)) continue;
        if (w->held.empty()) w->last_progress = now;
        budget -= std::min(budget, n);
        pool_chunk c = take_chunk();
        if (send(*w, std::as_const(c))) sent(*w, std::move(c));
        progress = true;
      }
    }
    if (has_work()) break;
    auto [stole, look_again] = rebalance(now);
    if (!stole) {
      result.look_again = look_again;
      break;
    }
  }
  return result;
}

// (The steps of every chunk and every answer are inline: they run per item.)
inline pool_scheduler::answer pool_scheduler::answered(scheduled_worker& w) {
  pool_chunk& c = w.held.front();
  answer a{c.job->sink.get(), c.first + w.front_answered, nullptr};
  --w.held_items;
  if (++w.front_answered == c.n) {
    a.keep = c.job->sink;
    w.held.pop_front();
    w.front_answered = 0;
  }
  return a;
}

// About queued_work_ns of work queued at most. A worker that has answered nothing for a
// while is busy with something slow, whatever the estimate says.
inline bool pool_scheduler::may_take(const scheduled_worker& w, const pool_job& job, std::size_t n,
                                     std::int64_t now) const {
  if (!w.accepting()) return false;
  if (w.held.empty()) return true;
  // Coroutine tasks wait rather than compute: a worker takes as many as it runs at once.
  if (job.coroutine) return w.held_items + n <= concurrency_;
  // Nothing queued behind work of unknown cost on a worker it cannot be taken back from.
  if (!w.stealable)
    for (const auto& c : w.held)
      if (!cost_.count(c.job->trampoline)) return false;
  auto cost = cost_.find(job.trampoline);
  if (cost == cost_.end() || w.held.size() >= max_held_chunks) return false;
  return double(now - w.last_progress) + double(w.held_items + n) * cost->second <=
         double(queued_work_ns);
}

inline std::pair<const pool_job*, std::size_t> pool_scheduler::peek_chunk() const {
  if (!retry_.empty()) return {retry_.front().job.get(), retry_.front().n};
  const auto& job = *queue_.front();
  return {&job, std::min({job.chunksize, max_frame_items, job.count - job.next})};
}

inline pool_chunk pool_scheduler::take_chunk() {
  if (!retry_.empty()) {
    pool_chunk c = std::move(retry_.front());
    retry_.pop_front();
    return c;
  }
  auto& job = queue_.front();
  std::size_t n = std::min({job->chunksize, max_frame_items, job->count - job->next});
  pool_chunk c{job, job->next, n};
  job->next += n;
  if (job->next == job->count) queue_.pop_front();
  return c;
}

inline void pool_scheduler::sent(scheduled_worker& w, pool_chunk c) {
  c.seq = w.sent_seq + 1;
  w.sent_seq += c.n;
  w.held_items += c.n;
  w.held.push_back(std::move(c));
  ++w.chunks_sent;
  retire_if_done(w);
}

inline void pool_scheduler::retire_if_done(scheduled_worker& w) {
  w.retiring = maxtasks_ != 0 && w.chunks_sent >= maxtasks_;
}

} // namespace coproc::detail
