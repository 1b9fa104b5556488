#include <coproc/process.hpp>

#include <coproc/detail/fresh_image.hpp>
#include <coproc/errors.hpp>
#include <coproc/run.hpp>
#include <coproc/this_process.hpp>

#include "forkserver.hpp"
#include "fresh_image.hpp"
#include "os.hpp"
#include "start_method.hpp"

#include <cxxabi.h>
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <csignal>
#include <cstdlib>
#include <map>
#include <mutex>
#include <typeindex>
#include <stdexcept>
#include <typeinfo>

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
  if (method != start_method::fork) {
    std::string who = "process '" + name_ + "'";
    auto [body, fds] = fresh_image_body(method, who);
    detail::fresh_image_spec spec{
        detail::image_kind::process, {identity_.path, name_}, daemon_, std::move(body)};
    if (method == start_method::spawn)
      child_ = std::make_shared<detail::direct_child>(detail::spawn_fresh_image(spec, fds, who));
    else child_ = detail::start_served_child(spec, fds, who);
    detail::note_started();
    return;
  }
  int parent = daemon_ ? ::getpid() : 0; // only a daemon needs it: a syscall saved per start
  std::string what = "coproc: fork failed starting process '" + name_ + "'";
  auto fork_child = [&] {
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
    if (pid != 0) {
      ::pthread_sigmask(SIG_SETMASK, &old, nullptr);
      return pid;
    }
    detail::reset_signals(); // and unblocks
    if (daemon_) {
      // The kernel kills the child when its parent dies, even by SIGKILL; the parent
      // may have died before the request took effect.
      detail::die_with_parent(parent);
    }
    // Moved, not copied: a copy's memmove would be the child's first call of it.
    detail::enter_child({std::move(identity_.path), name_});
    run_child();
  };
  // A daemon's death signal follows the thread that forks it.
  int pid = daemon_ ? detail::on_lasting_thread(fork_child) : fork_child();
  child_ = std::make_shared<detail::direct_child>(pid);
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
  // _exit's way: the parent's atexit handlers and static destructors are the parent's;
  // stdio is flushed first.
  detail::exit_child(code);
}

void process::run() {
  if (body_) exit_code_ = body_->run();
}

namespace {
std::string type_name(const std::type_info& type) {
  int status = 0;
  std::unique_ptr<char, void (*)(void*)> demangled(
      abi::__cxa_demangle(type.name(), nullptr, nullptr, &status), std::free);
  return status == 0 && demangled ? demangled.get() : type.name();
}

struct process_class {
  detail::process_encoder encode;
  std::uintptr_t entry;
};

std::mutex process_classes_mutex;
std::map<std::type_index, process_class>& process_classes() {
  static std::map<std::type_index, process_class> classes;
  return classes;
}

std::optional<process_class> find_process_class(const std::type_info& type) {
  std::lock_guard lock(process_classes_mutex);
  auto it = process_classes().find(type);
  if (it == process_classes().end()) return std::nullopt;
  return it->second;
}

// What a process's fresh image is told: the target's entry, its function (a function
// pointer's), its object, its arguments, whether it is a daemon, and how many descriptors
// travelled with its arguments (from fresh_image_first_fd on).
using fresh_process_body = std::tuple<detail::code_ref, std::optional<detail::code_ref>,
                                      std::string, std::string, bool, std::uint32_t>;
// In a fresh image: the daemon flag of the parent's object, for a rebuilt subclass.
bool fresh_daemon = false;
} // namespace

process::fresh_image process::fresh_image_body(start_method method, const std::string& who) const {
  detail::require_main_guard(who);
  auto refuse = [&](const std::string& why) {
    throw std::invalid_argument(who + ": cannot start with start_method::" +
                                (method == start_method::spawn ? "spawn" : "forkserver") + ": " +
                                why);
  };
  detail::fresh_target target;
  if (typeid(*this) != typeid(process)) {
    auto registered = find_process_class(typeid(*this));
    if (!registered)
      refuse("its class " + type_name(typeid(*this)) +
             " is not registered: a fresh image rebuilds a subclass "
             "of coproc::process only after COPROC_REGISTER_PROCESS(" +
             type_name(typeid(*this)) + ")");
    target.entry = registered->entry;
    target.object = registered->encode(*this);
  } else {
    if (!body_) refuse("it has no target");
    const char* why = nullptr;
    try {
      why = body_->to_fresh_image(target);
    } catch (const std::invalid_argument& e) { // a closed connection
      refuse(e.what());
    }
    if (why) refuse(why);
  }
  auto entry = detail::locate_code(target.entry);
  if (!entry) refuse("its entry is in no loaded object");
  std::optional<detail::code_ref> function;
  if (target.function != 0) {
    function = detail::locate_code(target.function);
    if (!function) refuse("the target function is in no loaded object");
  }
  fresh_process_body body{*entry,
                          function,
                          std::move(target.object),
                          std::move(target.arguments),
                          daemon_,
                          static_cast<std::uint32_t>(target.fds.size())};
  // The descriptors are the arguments' handles' own (body_ holds them): the launcher dups
  // them for the child (spawn) or sends them to the fork server, and closes nothing of ours.
  return {wire::encode(body), std::move(target.fds)};
}

namespace detail {
void register_process_class(const std::type_info& type, process_encoder encode,
                            std::uintptr_t entry) {
  std::lock_guard lock(process_classes_mutex);
  process_classes().insert_or_assign(type, process_class{encode, entry});
}

int run_rebuilt_process(process& p) {
  // The child of the parent's object: its name and daemon flag, and this image's identity
  // (the default constructor counted a child of its own).
  identity id = current_identity_of_process();
  enter_child(id);
  p.identity_ = id;
  p.name_ = id.name;
  p.daemon_ = fresh_daemon;
  p.run();
  return p.exit_code_;
}

void run_fresh_process(std::string_view bytes) {
  int code = 1;
  try {
    auto [entry, function, object, arguments, daemon, fd_count] =
        wire::decode<fresh_process_body>(bytes);
    fresh_daemon = daemon;
    auto run = reinterpret_cast<fresh_entry>(resolve_code(entry));
    fd_arrival fds(fresh_image_first_fd, fd_count);
    code = run(function ? resolve_code(*function) : 0, object, arguments, fds);
  } catch (const std::exception& e) {
    print_process_error(process_name(), exception_type_name(e) + ": " + e.what());
  } catch (...) {
    print_process_error(process_name(), "unknown exception");
  }
  flush_stdio();
  ::_exit(code);
}
} // namespace detail

const std::shared_ptr<detail::process_child>& process::started(const char* what) const {
  if (!child_)
    throw std::logic_error(std::string("cannot ") + what + " process '" + name_ +
                           "': it was not started");
  return child_;
}

namespace {
// Holds the child alive while a join is suspended, even if the handle goes away.
awaitable<int> join_child(std::shared_ptr<detail::process_child> c) {
  auto wait = c->wait();
  co_return co_await std::move(wait);
}
awaitable<std::optional<int>> join_child(std::shared_ptr<detail::process_child> c,
                                         duration timeout) {
  auto wait = c->wait(timeout);
  co_return co_await std::move(wait);
}
} // namespace

awaitable<int> process::join() { return join_child(started("join")); }

awaitable<std::optional<int>> process::join(duration timeout) {
  return join_child(started("join"), timeout);
}

bool process::is_alive() const { return child_ && !child_->poll(); }

std::optional<int> process::exitcode() const { return child_ ? child_->poll() : std::nullopt; }

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
