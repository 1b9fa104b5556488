// The pool's scheduling decisions on their own: no sockets, no processes, no clock. The
// tests play the workers (claiming items on a counter as a worker claims them on its
// shared page) and the time (nanoseconds passed to each call).
#include <coproc/detail/pool_scheduler.hpp>
#include <coproc/errors.hpp>

#include <doctest/doctest.h>

#include <atomic>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

using namespace coproc::detail;

namespace {

constexpr std::int64_t ms = 1'000'000;

// Trampolines are only named here, never called (distinct bodies: distinct offsets).
void cheap_task(std::intptr_t, const pool_input&, coproc::wire::output_buffer& out) {
  out.append("cheap", 5);
}
void slow_task(std::intptr_t, const pool_input&, coproc::wire::output_buffer& out) {
  out.append("slow", 4);
}

std::intptr_t offset_of(pool_trampoline fn) { return pool_image_offset(fn); }

struct recording_sink : pool_sink {
  void deliver(std::size_t index, std::string_view bytes) override {
    delivered[index] = std::string(bytes);
  }
  void fail(std::size_t index, std::exception_ptr error) override { failed[index] = error; }
  std::map<std::size_t, std::string> delivered;
  std::map<std::size_t, std::exception_ptr> failed;
};

struct fake_job final : pool_job {
  fake_job(pool_trampoline fn, std::size_t count, std::size_t chunksize,
           std::shared_ptr<pool_sink> sink)
      : pool_job(fn, {}, count, chunksize, std::move(sink)) {}
  void encode_args(std::size_t i, coproc::wire::output_buffer& out) const override {
    auto digits = std::to_string(i);
    out.append(digits.data(), digits.size());
  }
};

// One worker as the scheduler sees it, and its side of the shared page.
struct fake_worker {
  std::atomic<std::uint64_t> page{0};
  scheduled_worker view{&page};
  // The worker starts its next n items.
  void claim(std::uint64_t n) { page += n; }
};

struct sent_chunk {
  scheduled_worker* to;
  std::size_t first, n;
};

struct harness {
  explicit harness(unsigned maxtasks = 0, std::size_t workers = 1) : scheduler(maxtasks) {
    for (std::size_t i = 0; i < workers; ++i) add_worker();
  }
  fake_worker& add_worker() {
    workers.push_back(std::make_unique<fake_worker>());
    scheduler.add(workers.back()->view);
    return *workers.back();
  }
  fake_worker& operator[](std::size_t i) { return *workers[i]; }

  std::shared_ptr<fake_job> submit(std::size_t count, std::size_t chunksize,
                                   pool_trampoline fn = &cheap_task) {
    auto job = std::make_shared<fake_job>(fn, count, chunksize, sink);
    scheduler.submit(job);
    return job;
  }
  pool_scheduler::dispatch_result dispatch(std::int64_t now) {
    return scheduler.dispatch(now, [this](scheduled_worker& w, const pool_chunk& c) {
      sent.push_back({&w, c.first, c.n});
      return true;
    });
  }
  // Worker w claims and answers its next n items at `now`.
  void answer(fake_worker& w, std::size_t n, std::int64_t now) {
    w.claim(n);
    for (std::size_t i = 0; i < n; ++i) {
      auto a = scheduler.answered(w.view);
      a.sink->deliver(a.index, "ok");
    }
    scheduler.progressed(w.view, now);
  }
  // The first items of the chunks sent since the last call, and to whom.
  std::vector<std::pair<scheduled_worker*, std::size_t>> take_sent() {
    std::vector<std::pair<scheduled_worker*, std::size_t>> out;
    for (auto& s : sent) out.emplace_back(s.to, s.first);
    sent.clear();
    return out;
  }
  void learn_cost(pool_trampoline fn, std::uint64_t ns_per_item) {
    scheduler.measured(timing_record{offset_of(fn), 10, 10 * ns_per_item});
  }

  pool_scheduler scheduler;
  std::vector<std::unique_ptr<fake_worker>> workers;
  std::shared_ptr<recording_sink> sink = std::make_shared<recording_sink>();
  std::vector<sent_chunk> sent;
};

} // namespace

TEST_CASE("while the task cost is unknown each worker holds one chunk at a time") {
  harness h(0, 2);
  h.submit(10, 1);
  h.dispatch(0);
  auto* a = &h[0].view;
  auto* b = &h[1].view;
  using sends = std::vector<std::pair<scheduled_worker*, std::size_t>>;
  CHECK(h.take_sent() == sends{{a, 0}, {b, 1}});
  h.dispatch(1 * ms);
  CHECK(h.take_sent().empty());
  h.answer(h[1], 1, 2 * ms); // b is done first: it gets the next chunk
  h.dispatch(2 * ms);
  CHECK(h.take_sent() == sends{{b, 2}});
  CHECK(h.scheduler.has_work());
}

TEST_CASE("a measured cost lets a worker hold about 2 ms of work") {
  harness h;
  h.learn_cost(&slow_task, 100'000); // 0.1 ms an item: 20 items are 2 ms
  CHECK(h.scheduler.cost(offset_of(&slow_task)) == doctest::Approx(100'000));
  CHECK(h.scheduler.cost(offset_of(&cheap_task)) == 0);
  h.submit(100, 1, &slow_task);
  h.dispatch(0);
  CHECK(h.sent.size() == 20);
  CHECK(h[0].view.held_items == 20);
  h.take_sent();
  // 1 ms after its last answer, 5 items answered: it may hold 1 ms of work more than
  // its 15, i.e. 5 more, by the estimate.
  h.answer(h[0], 5, 1 * ms);
  h.dispatch(1 * ms);
  CHECK(h.take_sent().size() == 5);
  // Half a millisecond later with nothing answered, it is fuller than 2 ms.
  h.dispatch(1 * ms + ms / 2);
  CHECK(h.take_sent().empty());
  // Everything answered: room for 2 ms again.
  h.answer(h[0], 20, 2 * ms);
  h.dispatch(2 * ms);
  CHECK(h.take_sent().size() == 20);
}

TEST_CASE("timing records are averaged into the cost estimate") {
  harness h;
  h.scheduler.measured(timing_record{offset_of(&slow_task), 4, 4000});
  CHECK(h.scheduler.cost(offset_of(&slow_task)) == doctest::Approx(1000));
  h.scheduler.measured(timing_record{offset_of(&slow_task), 1, 3000});
  CHECK(h.scheduler.cost(offset_of(&slow_task)) == doctest::Approx(2000));
  h.scheduler.measured(timing_record{offset_of(&cheap_task), 0, 50}); // no items: counted as one
  CHECK(h.scheduler.cost(offset_of(&cheap_task)) == doctest::Approx(50));
}

TEST_CASE("a large chunk travels as frames of max_frame_items and one step sends at most that many "
          "items") {
  harness h;
  h.learn_cost(&cheap_task, 1);
  h.submit(2 * max_frame_items + 100, 1'000'000);
  auto first = h.dispatch(0);
  CHECK(first.more);
  REQUIRE(h.sent.size() == 1);
  CHECK(h.sent[0].n == max_frame_items);
  auto second = h.dispatch(0);
  CHECK(second.more);
  auto third = h.dispatch(0);
  CHECK_FALSE(third.more);
  REQUIRE(h.sent.size() == 3);
  CHECK(h.sent[1].first == max_frame_items);
  CHECK(h.sent[2].n == 100);
  CHECK_FALSE(h.scheduler.has_work());
}

TEST_CASE("an idle worker takes back the unstarted items of a worker silent for 2 ms") {
  harness h(0, 1);
  h.learn_cost(&cheap_task, 10);
  h.submit(5, 1);
  h.dispatch(0);
  CHECK(h.sent.size() == 5); // all with the one worker
  h.take_sent();
  h[0].claim(1); // item 0 runs, slowly
  auto& idle = h.add_worker();
  using sends = std::vector<std::pair<scheduled_worker*, std::size_t>>;

  auto early = h.dispatch(ms / 2);
  CHECK(h.take_sent().empty());
  CHECK(early.look_again == 2 * ms - ms / 2); // when the steal is due
  auto later = h.dispatch(ms + ms / 2);
  CHECK(later.look_again == ms / 2);

  auto due = h.dispatch(2 * ms);
  CHECK(due.look_again == 0);
  // Items 1..4 are claimed away from the slow worker (it skips them) and go to the idle
  // one, in order.
  CHECK(h[0].page.load() == 5);
  CHECK(h[0].view.held_items == 1);
  CHECK(h[0].view.unstarted() == 0);
  CHECK(h.take_sent() == sends{{&idle.view, 1}, {&idle.view, 2}, {&idle.view, 3}, {&idle.view, 4}});
  CHECK_FALSE(h.scheduler.has_work());
}

TEST_CASE("nothing is taken back while no worker is idle or from a worker holding one item") {
  harness h(0, 1);
  h.learn_cost(&cheap_task, 10);
  h.submit(3, 1);
  h.dispatch(0);
  h[0].claim(1);
  auto& other = h.add_worker();
  h.submit(1, 1, &slow_task); // cost unknown: for the empty worker only
  h.dispatch(0);
  using sends = std::vector<std::pair<scheduled_worker*, std::size_t>>;
  CHECK(h.take_sent() ==
        sends{{&h[0].view, 0}, {&h[0].view, 1}, {&h[0].view, 2}, {&other.view, 0}});
  auto result = h.dispatch(10 * ms); // both busy
  CHECK(result.look_again == 0);
  CHECK(h[0].page.load() == 1); // nothing claimed by the parent
  CHECK(h.take_sent().empty());

  // Once the other is idle the steal happens; afterwards the slow worker holds one item,
  // which is never taken back (it is running).
  h.answer(other, 1, 10 * ms);
  h.dispatch(10 * ms);
  CHECK(h[0].page.load() == 3);
  CHECK(h.take_sent() == sends{{&other.view, 1}, {&other.view, 2}});
  h.answer(other, 2, 10 * ms);
  auto after = h.dispatch(20 * ms);
  CHECK(after.look_again == 0);
  CHECK(h[0].view.held_items == 1);
  CHECK(h[0].page.load() == 3);
}

TEST_CASE("maxtasksperchild counts chunks sent and a worker retires after that many") {
  harness h(2);
  h.submit(5, 1);
  h.dispatch(0);
  CHECK(h.sent.size() == 1);
  CHECK_FALSE(h[0].view.retiring);
  h.answer(h[0], 1, 1 * ms);
  h.dispatch(1 * ms);
  CHECK(h.sent.size() == 2);
  CHECK(h[0].view.retiring); // its second task is its last
  h.answer(h[0], 1, 2 * ms);
  h.dispatch(2 * ms);
  CHECK(h.sent.size() == 2); // a retiring worker takes nothing more
  // A large chunk is several tasks: one per frame.
  harness big(2);
  big.submit(max_frame_items + 1, max_frame_items + 1);
  big.dispatch(0);
  big.answer(big[0], max_frame_items, 1 * ms);
  big.dispatch(1 * ms);
  CHECK(big.sent.size() == 2);
  CHECK(big[0].view.retiring);
}

TEST_CASE("a chunk taken back whole does not count toward maxtasksperchild") {
  harness h(2);
  h.learn_cost(&cheap_task, 10);
  h.submit(3, 2); // chunks [0, 1] and [2]
  h.dispatch(0);
  REQUIRE(h.sent.size() == 2);
  CHECK(h[0].view.retiring);
  h[0].claim(1); // item 0 runs; item 1 of the same chunk and the chunk [2] wait
  h.take_sent();
  auto& idle = h.add_worker();
  h.dispatch(2 * ms);
  // Item 1 leaves a chunk that ran an item (still a task); chunk [2] ran nothing.
  CHECK(h[0].view.chunks_sent == 1);
  CHECK_FALSE(h[0].view.retiring);
  CHECK(h[0].view.held_items == 1);
  auto sent = h.take_sent();
  REQUIRE(sent.size() >= 1);
  CHECK(sent[0] == std::pair{&idle.view, std::size_t(1)});
}

TEST_CASE("a lost worker fails exactly its claimed unanswered items and its unstarted ones go "
          "first elsewhere") {
  harness h(0, 1);
  h.learn_cost(&cheap_task, 10);
  h.submit(6, 4); // chunks [0..3] and [4, 5]
  h.dispatch(0);
  REQUIRE(h.sent.size() == 2);
  h.scheduler.started(h[0].view);
  h.answer(h[0], 1, ms); // item 0 answered
  h[0].claim(1);         // item 1 running when it dies
  h.submit(1, 1);        // a later job waits behind the retried items
  auto lost = std::make_exception_ptr(std::runtime_error("lost"));
  CHECK_FALSE(h.scheduler.lost(h[0].view, lost));
  CHECK(h[0].view.gone);
  CHECK(h.sink->delivered.size() == 1);
  REQUIRE(h.sink->failed.size() == 1);
  CHECK(h.sink->failed.count(1) == 1);
  h.take_sent();
  auto& next = h.add_worker();
  h.dispatch(2 * ms);
  h.answer(next, 2, 2 * ms);
  h.dispatch(2 * ms);
  h.answer(next, 2, 2 * ms);
  h.dispatch(2 * ms);
  std::vector<std::size_t> firsts;
  for (auto& s : h.sent) firsts.push_back(s.first);
  // The rest of the first chunk, then the second chunk, then the later job.
  CHECK(firsts == std::vector<std::size_t>{2, 4, 0});
  CHECK(h.sent[0].n == 2);
}

TEST_CASE("max_failed_starts workers lost in a row before starting fail the pool") {
  harness h(0, 0);
  auto error = std::make_exception_ptr(std::runtime_error("lost"));
  for (unsigned round = 0; round < 2; ++round) {
    for (unsigned i = 1; i < max_failed_starts; ++i)
      CHECK_FALSE(h.scheduler.lost(h.add_worker().view, error));
    // A worker that started resets the count.
    auto& started = h.add_worker();
    h.scheduler.started(started.view);
    CHECK_FALSE(h.scheduler.lost(started.view, error));
  }
  for (unsigned i = 1; i < max_failed_starts; ++i)
    CHECK_FALSE(h.scheduler.lost(h.add_worker().view, error));
  CHECK(h.scheduler.lost(h.add_worker().view, error));
}

TEST_CASE("fail_all fails every unsent and unanswered item and nothing answered") {
  harness h(0, 1);
  h.submit(3, 1);
  h.dispatch(0);
  h.answer(h[0], 1, ms);
  h.dispatch(ms);
  auto closed = std::make_exception_ptr(std::runtime_error("closed"));
  h.scheduler.fail_all(closed);
  CHECK(h.sink->delivered.size() == 1);
  CHECK(h.sink->failed.size() == 2);
  CHECK(h.sink->delivered.count(0) == 1);
  CHECK_FALSE(h.scheduler.has_work());
  CHECK(h[0].view.held.empty());
}

TEST_CASE(
    "a lone submission with an idle worker is dispatched at once and others wait for the step") {
  harness h(0, 1);
  auto job = std::make_shared<fake_job>(&cheap_task, 1, 1, h.sink);
  CHECK(h.scheduler.submit(job));
  auto second = std::make_shared<fake_job>(&cheap_task, 1, 1, h.sink);
  CHECK_FALSE(h.scheduler.submit(second)); // submitted in the same go: they leave together
  h.dispatch(0);
  h.answer(h[0], 1, ms);
  h.dispatch(ms);
  h.answer(h[0], 1, ms);
  h[0].view.write_pending = true; // frames still on their way: not idle
  CHECK_FALSE(h.scheduler.submit(std::make_shared<fake_job>(&cheap_task, 1, 1, h.sink)));
  CHECK_FALSE(
      h.scheduler.submit(std::make_shared<fake_job>(&cheap_task, 0, 1, h.sink))); // nothing to run
}

TEST_CASE("all_claimed says whether a worker still has items it has not started") {
  harness h(0, 2);
  h.learn_cost(&cheap_task, 10);
  CHECK(h.scheduler.all_claimed());
  h.submit(4, 1);
  h.dispatch(0);
  CHECK_FALSE(h.scheduler.all_claimed());
  h[0].claim(2);
  CHECK_FALSE(h.scheduler.all_claimed());
  h[1].claim(2);
  CHECK(h.scheduler.all_claimed());
}
