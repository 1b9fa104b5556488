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
    if (w->gone || !w->stealable || w->write_pending || w->held_items < 2 || w->unstarted() == 0) continue;
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
        c.job->sink->fail(c.first + i, error);
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
