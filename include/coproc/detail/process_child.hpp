// coproc/detail/process_child.hpp — the child behind a coproc::process or a pool worker,
// whoever started it.
//
// A forked or spawned child is this process's own (direct_child, on detail::child: it
// reaps it). A forkserver child is the fork server's: the server reaps it, writes its wait
// status into a pipe this process waits on, and signals it when asked (lib/forkserver.cpp).
// Both answer the same questions.
#pragma once

#include <coproc/detail/child.hpp>

#include <boost/asio/awaitable.hpp>

#include <chrono>
#include <optional>

namespace coproc::detail {

class process_child {
public:
  virtual ~process_child() = default;

  virtual int pid() const noexcept = 0;
  // Python's convention: >= 0 exit status, -N killed by signal N, 255 if the status was
  // lost (someone else reaped it, or the fork server died first). Never blocks for long.
  virtual std::optional<int> poll() = 0;
  virtual boost::asio::awaitable<int> wait() = 0;
  // nullopt when the deadline passes first; the child is left alone.
  virtual boost::asio::awaitable<std::optional<int>>
  wait(std::chrono::steady_clock::duration timeout) = 0;
  // Sends sig unless the child is known to have exited; false if it was.
  virtual bool signal(int sig) = 0;
};

// A child this process forked or spawned itself.
class direct_child final : public process_child {
public:
  explicit direct_child(int pid) : child_(pid) {}
  int pid() const noexcept override { return child_.pid(); }
  std::optional<int> poll() override { return child_.poll(); }
  boost::asio::awaitable<int> wait() override { return child_.wait(); }
  boost::asio::awaitable<std::optional<int>>
  wait(std::chrono::steady_clock::duration timeout) override {
    return child_.wait(timeout);
  }
  bool signal(int sig) override { return child_.signal(sig); }

private:
  child child_;
};

} // namespace coproc::detail
