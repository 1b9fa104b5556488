// The pool's scheduling decisions (coproc/detail/pool_scheduler.hpp).
#include <coproc/detail/pool_scheduler.hpp>

#include <algorithm>

namespace coproc::detail {

bool pool_scheduler::submit(std::shared_ptr<pool_job> job) {
  if (job->count == 0) return false;
  queue_.push_back(std::move(job));
  return queue_.size() == 1 && retry_.empty() &&
         std::any_of(workers_.begin(), workers_.end(), [](const auto* w) {
           return w->accepting() && w->held.empty() && !w->write_pending;
         });
}

bool pool_scheduler::all_claimed() const {
  return std::all_of(workers_.begin(), workers_.end(),
                     [](const auto* w) { return w->gone || w->unstarted() == 0; });
}

void pool_scheduler::measured(const timing_record& t) {
  double sample = double(t.nanoseconds) / double(std::max<std::uint64_t>(t.items, 1));
  double& cost = cost_[t.trampoline];
  cost = cost == 0 ? sample : (cost + sample) / 2;
}

double pool_scheduler::cost(std::intptr_t trampoline) const {
  auto it = cost_.find(trampoline);
  return it == cost_.end() ? 0 : it->second;
}

bool pool_scheduler::steal(scheduled_worker& w) {
  std::uint64_t claimed = w.claimed->load();
  do {
    if (claimed >= w.sent_seq) return false;
  } while (!w.claimed->compare_exchange_weak(claimed, w.sent_seq));
  std::deque<pool_chunk> taken;
  while (!w.held.empty()) {
    pool_chunk& c = w.held.back();
    if (c.seq + c.n - 1 <= claimed) break;
    std::size_t keep = c.seq > claimed ? 0 : static_cast<std::size_t>(claimed - c.seq + 1);
    taken.push_front({c.job, c.first + keep, c.n - keep});
    w.held_items -= c.n - keep;
    if (keep == 0) {
      // Its frame runs nothing: the worker does not count it toward maxtasksperchild either.
      w.held.pop_back();
      --w.chunks_sent;
    } else {
      c.n = keep;
    }
  }
  retire_if_done(w);
  retry_.insert(retry_.begin(), taken.begin(), taken.end());
  return true;
}

std::vector<pool_scheduler::running_items> pool_scheduler::withdraw(const pool_sink& sink) {
  auto of_sink = [&](const auto& p) { return p->sink.get() == &sink; };
  std::erase_if(queue_, of_sink);
  std::vector<running_items> running;
  for (scheduled_worker* w : workers_) {
    if (w->killed || std::none_of(w->held.begin(), w->held.end(),
                                  [&](const pool_chunk& c) { return of_sink(c.job); }))
      continue;
    if (!w->stealable) {
      // Nothing can be taken back from it: it is stopped (its unstarted items go to the
      // others) if no other submission's item has started there; else its items of the
      // sink run, their answers ignored.
      std::uint64_t claimed = w->claimed->load();
      bool others_started = false;
      for (const auto& c : w->held) {
        std::size_t skip = &c == &w->held.front() ? w->front_answered : 0;
        for (std::size_t i = skip; i < c.n && c.seq + i <= claimed; ++i)
          others_started |= !of_sink(c.job);
      }
      if (!others_started) running.push_back({w, {}});
      continue;
    }
    steal(*w);
    if (w->held.empty()) continue;
    if (!w->held.back().job->coroutine) {
      // Everything left is claimed: the last item is the one the worker runs (or has just
      // finished). An earlier item of the sink has finished and its answer is on its way.
      if (of_sink(w->held.back().job)) running.push_back({w, {}});
      continue;
    }
    // Coroutine tasks run side by side: each unanswered one of the sink may be running.
    running_items items{w, {}};
    for (const auto& c : w->held) {
      if (!of_sink(c.job)) continue;
      std::size_t skip = &c == &w->held.front() ? w->front_answered : 0;
      for (std::size_t i = skip; i < c.n; ++i) items.coroutines.push_back(c.seq + i);
    }
    if (!items.coroutines.empty()) running.push_back(std::move(items));
  }
  std::erase_if(retry_, [&](const pool_chunk& c) { return of_sink(c.job); });
  return running;
}

pool_scheduler::timeout_check pool_scheduler::check_timeouts(const scheduled_worker& w,
                                                             std::int64_t now,
                                                             std::uint64_t running,
                                                             std::int64_t running_since) const {
  timeout_check check;
  auto consider = [&](std::int64_t due) {
    if (check.due == 0 || due < check.due) check.due = due;
  };
  for (const auto& c : w.held) {
    std::int64_t timeout = c.job->timeout_ns;
    if (timeout == 0) continue;
    if (c.job->coroutine) { // started now at the earliest
      consider(now + timeout + coroutine_stop_grace_ns);
      continue;
    }
    std::uint64_t first = c.seq + (&c == &w.held.front() ? w.front_answered : 0);
    std::uint64_t last = c.seq + c.n - 1;
    if (running >= first && running <= last) {
      std::int64_t due = running_since + timeout;
      if (due <= now) return {true, 0, running, c.job.get()};
      consider(due);
      if (running < last) consider(now + timeout);
    } else if (running < first) {
      consider(now + timeout); // not started: it cannot expire sooner
    }
    // (running > last: all finished, the answers are on their way.)
  }
  return check;
}

const pool_job* pool_scheduler::job_of(const scheduled_worker& w, std::uint64_t seq) {
  for (const auto& c : w.held) {
    std::uint64_t first = c.seq + (&c == &w.held.front() ? w.front_answered : 0);
    if (seq >= first && seq < c.seq + c.n) return c.job.get();
  }
  return nullptr;
}

std::pair<bool, std::int64_t> pool_scheduler::rebalance(std::int64_t now) {
  bool idle = std::any_of(workers_.begin(), workers_.end(),
                          [](const auto* w) { return w->accepting() && w->held.empty(); });
  if (!idle) return {false, 0};
  std::int64_t soonest = -1;
  bool stole = false;
  for (scheduled_worker* w : workers_) {
    // Not from a worker whose frames are still being written: it is being fed, not
    // silent (large items take longer than steal_after_ns to cross), and each steal
    // would encode them again while the first copy is still on its way.
    if (w->gone || !w->stealable || w->write_pending || w->held_items < 2 || w->unstarted() == 0)
      continue;
    std::int64_t wait = steal_after_ns - (now - w->last_progress);
    if (wait <= 0) stole |= steal(*w);
    else if (soonest < 0 || wait < soonest) soonest = wait;
  }
  return {stole, stole ? 0 : std::max<std::int64_t>(soonest, 0)};
}

bool pool_scheduler::lost(scheduled_worker& w, std::exception_ptr error) {
  std::uint64_t claimed = w.claimed->load();
  // Claimed and unanswered: these ran (or were running) in the dead worker. The rest
  // were never started and go to the other workers first.
  std::deque<pool_chunk> never_started;
  for (auto& c : w.held) {
    std::size_t skip = &c == &w.held.front() ? w.front_answered : 0;
    for (std::size_t i = skip; i < c.n; ++i) {
      if (c.seq + i <= claimed) {
        bool killed_for = w.killed && c.seq + i == w.killed_seq && w.kill_error;
        c.job->sink->fail(c.first + i, killed_for ? w.kill_error : error);
      } else {
        never_started.push_back({c.job, c.first + i, c.n - i});
        break;
      }
    }
  }
  retry_.insert(retry_.begin(), never_started.begin(), never_started.end());
  bool start_failed = !w.started && ++failed_starts_ >= max_failed_starts;
  remove(w);
  return start_failed;
}

void pool_scheduler::forget(scheduled_worker& w) { remove(w); }

void pool_scheduler::remove(scheduled_worker& w) {
  w.gone = true;
  w.held.clear();
  w.held_items = 0;
  std::erase(workers_, &w);
}

void pool_scheduler::fail_all(std::exception_ptr error) {
  for (auto& c : retry_)
    for (std::size_t i = 0; i < c.n; ++i) c.job->sink->fail(c.first + i, error);
  retry_.clear();
  for (auto& job : queue_)
    for (std::size_t i = job->next; i < job->count; ++i) job->sink->fail(i, error);
  queue_.clear();
  for (auto* w : workers_) {
    for (auto& c : w->held) {
      std::size_t skip = &c == &w->held.front() ? w->front_answered : 0;
      for (std::size_t i = skip; i < c.n; ++i) c.job->sink->fail(c.first + i, error);
    }
    w->held.clear();
    w->held_items = 0;
  }
}

} // namespace coproc::detail
