#include <coproc/process.hpp>

#include <coproc/errors.hpp>
#include <coproc/run.hpp>

#include "os.hpp"
#include "start_method.hpp"

#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <csignal>
#include <stdexcept>

namespace coproc {

namespace detail {
void run_target(awaitable<void> main) { block_on(std::move(main)); }
int run_target(awaitable<int> main) { return block_on(std::move(main)); }
} // namespace detail

process::process(process_options options)
    : name_(std::move(options.name)), identity_(detail::next_child_identity("Process")),
      daemon_(options.daemon), method_(options.method) {
  if (name_.empty()) name_ = identity_.name;
}

process::process(process&& other) noexcept = default;

process& process::operator=(process&& other) noexcept {
  if (this != &other) {
    release();
    body_ = std::move(other.body_);
    name_ = std::move(other.name_);
    identity_ = std::move(other.identity_);
    daemon_ = other.daemon_;
    method_ = other.method_;
    exit_code_ = other.exit_code_;
    child_ = std::move(other.child_);
  }
  return *this;
}

process::~process() { release(); }

void process::release() noexcept {
  if (child_ && daemon_) {
    try {
      child_->signal(SIGTERM);
    } catch (...) {
    }
  }
  child_.reset();
}

void process::start() {
  if (child_) throw std::logic_error("cannot start process '" + name_ + "' twice");
  start_method method = detail::resolve_start_method(method_);
  if (method != start_method::fork)
    throw std::invalid_argument("process '" + name_ +
                                "': only start_method::fork is implemented");
  int parent = ::getpid();
  std::string what = "coproc: fork failed starting process '" + name_ + "'";
  // The child starts with every signal blocked until its dispositions are reset: a
  // signal sent at once (a destroyed daemon's SIGTERM) must not run the parent's handler.
  sigset_t all, old;
  sigfillset(&all);
  ::pthread_sigmask(SIG_SETMASK, &all, &old);
  int pid;
  try {
    pid = detail::fork_flushed(what.c_str());
  } catch (...) {
    ::pthread_sigmask(SIG_SETMASK, &old, nullptr);
    throw;
  }
  if (pid != 0) ::pthread_sigmask(SIG_SETMASK, &old, nullptr);
  if (pid == 0) {
    detail::reset_signals(); // and unblocks
    if (daemon_) {
      // The kernel kills the child when its parent dies, even by SIGKILL; the parent
      // may have died before the request took effect.
      detail::die_with_parent(parent);
    }
    detail::enter_child({identity_.path, name_});
    run_child();
  }
  child_ = std::make_shared<detail::child>(pid);
  detail::note_started();
}

void process::run_child() {
  int code = 1;
  try {
    run();
    code = exit_code_;
  } catch (const std::exception& e) {
    detail::print_process_error(name_, detail::exception_type_name(e) + ": " + e.what());
  } catch (...) {
    detail::print_process_error(name_, "unknown exception");
  }
  // Flush here: _exit skips the parent's atexit handlers and static destructors, which
  // belong to the parent, and would also skip stdio's flush.
  detail::flush_stdio();
  ::_exit(code);
}

void process::run() {
  if (body_) exit_code_ = body_->run();
}

const std::shared_ptr<detail::child>& process::started(const char* what) const {
  if (!child_)
    throw std::logic_error(std::string("cannot ") + what + " process '" + name_ +
                           "': it was not started");
  return child_;
}

namespace {
// Holds the child alive while a join is suspended, even if the handle goes away.
awaitable<int> join_child(std::shared_ptr<detail::child> c) { co_return co_await c->wait(); }
awaitable<std::optional<int>> join_child(std::shared_ptr<detail::child> c, duration timeout) {
  co_return co_await c->wait(timeout);
}
} // namespace

awaitable<int> process::join() { return join_child(started("join")); }

awaitable<std::optional<int>> process::join(duration timeout) {
  return join_child(started("join"), timeout);
}

bool process::is_alive() const { return child_ && !child_->poll(); }

std::optional<int> process::exitcode() const {
  return child_ ? child_->poll() : std::nullopt;
}

void process::terminate() {
  if (child_) child_->signal(SIGTERM);
}

void process::kill() {
  if (child_) child_->signal(SIGKILL);
}

void process::interrupt() {
  if (child_) child_->signal(SIGINT);
}

int process::pid() const noexcept { return child_ ? child_->pid() : 0; }

void process::daemon(bool daemon) {
  if (child_)
    throw std::logic_error("cannot set daemon on process '" + name_ + "': already started");
  daemon_ = daemon;
}

} // namespace coproc
