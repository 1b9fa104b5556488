// coproc/process.hpp — multiprocessing.Process, awaitable.
//
//   coproc::process p(work, 42);
//   p.start();
//   int code = co_await p.join();
//
// Waiting binds to the awaiting coroutine's executor and uses no thread per child
// (detail/child.hpp). Handles are move-only; several coroutines may join one process.
//
// Start methods (coproc/start_method.hpp): fork (the default) copies this process, so any
// target and argument works, but a child forked from a threaded program can deadlock on a
// lock another thread held. spawn starts a fresh image of the program, safe from any
// thread; main must begin with coproc::main_guard(argc, argv), and the target must travel:
// a function pointer, a captureless lambda, a class with a cereal serialize (default
// constructible, copyable) or a subclass registered with COPROC_REGISTER_PROCESS, with
// wire-serializable arguments (coproc/wire.hpp). A coproc::queue or coproc::connection
// argument travels too: its descriptors go with the child (coproc/detail/travel.hpp).
// forkserver has spawn's rules, and the child is forked by this process's fork server (a
// small fresh image), so it costs the fork of a small process; its getppid() is the
// server's pid. Everything else — names, exit codes, signals, daemons, stdio — is the same
// with all three, with one difference: a forkserver child gets only its 0-2 and its
// arguments' descriptors from this process at start(); its environment, working directory,
// umask and limits are the server's, fixed when the server started (start_method.hpp).
#pragma once

#include <coproc/awaitable.hpp>
#include <coproc/detail/child.hpp>
#include <coproc/detail/travel.hpp>
#include <coproc/detail/process_child.hpp>
#include <coproc/start_method.hpp>
#include <coproc/wire.hpp>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <typeinfo>
#include <utility>
#include <vector>

namespace coproc {

class process;

struct process_options {
  std::string name{};
  // A daemon dies with this process, even when it is killed with SIGKILL, whichever thread
  // started it (a daemon started off the main thread is started by a thread of coproc's
  // that lasts as long as the process: the kernel's death signal follows the thread).
  bool daemon = false;
  std::optional<start_method> method{}; // nullopt: get_start_method() at start()
};

namespace detail {

template <class T> struct is_awaitable : std::false_type {};
template <class T> struct is_awaitable<boost::asio::awaitable<T>> : std::true_type {};

// block_on for a target's awaitable, in lib/ (so this header needs no io_context).
void run_target(awaitable<void> main);
int run_target(awaitable<int> main);

template <class T> awaitable<int> as_exit_code(awaitable<T> main) {
  T code = co_await std::move(main);
  co_return static_cast<int>(code);
}

// How a target crosses to a fresh image (start_method::spawn): the code that rebuilds and
// runs it (a fresh_entry), the function for a function pointer, the encoded object for a
// class with a cereal serialize, the encoded arguments and the descriptors of the queues
// and connections among them, which the launcher hands to the child (fd_arrival).
using fresh_entry = int (*)(std::uintptr_t function, std::string_view object,
                            std::string_view arguments, fd_arrival& fds);
struct fresh_target {
  std::uintptr_t entry = 0;
  std::uintptr_t function = 0;
  std::string object{};
  std::string arguments{};
  std::vector<int> fds{};
};

template <class T> inline constexpr bool is_reference_wrapper = false;
template <class T> inline constexpr bool is_reference_wrapper<std::reference_wrapper<T>> = true;

template <class F>
concept fresh_function = std::is_pointer_v<F> && std::is_function_v<std::remove_pointer_t<F>>;
// A captureless lambda or another empty class: rebuilt by default construction.
template <class F>
concept fresh_empty_object =
    std::is_class_v<F> && std::is_empty_v<F> && std::is_default_constructible_v<F>;
// A class with its own cereal serialize: rebuilt from its encoding.
template <class F>
concept fresh_serialized_object =
    std::is_class_v<F> && !std::is_empty_v<F> && wire::detail::own_serializer<F> &&
    std::is_default_constructible_v<F> && std::is_copy_constructible_v<F>;

// Why target(args...) cannot travel to a fresh image; nullptr if it can. Known at compile
// time, reported by start() (fork accepts every target).
template <class F, class... Args> constexpr const char* fresh_refusal() {
  if constexpr (!fresh_function<F> && !fresh_empty_object<F> && !fresh_serialized_object<F>)
    return "the target has state that a fresh image cannot rebuild (a lambda with captures, or a "
           "class "
           "without a cereal serialize and a default constructor): pass the data as arguments";
  else if constexpr ((is_reference_wrapper<Args> || ...))
    return "a std::reference_wrapper argument (std::ref, std::cref) refers to this process's "
           "memory: "
           "pass the value";
  else if constexpr (((!travelling_handle<Args> &&
                       wire::detail::problem_of<Args>() == wire::detail::problem::process_handle) ||
                      ...))
    return "a queue, connection or synchronization object inside another argument cannot travel "
           "to a fresh image: pass it as an argument of its own";
  else if constexpr (!((travelling_handle<Args> || wire::serializable<Args>)&&...))
    return "an argument type is not wire-serializable (coproc/wire.hpp)";
  else if constexpr (!((travelling_handle<Args> || wire::trivially_encoded<Args> ||
                        std::is_default_constructible_v<Args>)&&...))
    return "an argument type is not default constructible, so a fresh image cannot decode it";
  else return nullptr;
}

template <class F, class... Args> struct target_body;

// The arguments, one after the other; a queue's or connection's descriptors go to fds.
template <class... Args>
std::string encode_arguments(const std::tuple<Args...>& args, fd_departure& fds) {
  std::string out;
  wire::output_archive ar(out);
  std::apply([&](const Args&... arg) { (save_argument(ar, fds, arg), ...); }, args);
  return out;
}

template <class... Args>
std::tuple<Args...> decode_arguments(std::string_view bytes, fd_arrival& fds) {
  wire::input_archive ar(bytes, typeid(std::tuple<Args...>));
  try {
    // A braced list: decoded in order.
    std::tuple<Args...> args{load_argument<Args>(ar, fds)...};
    if (ar.remaining() != 0) ar.fail(std::to_string(ar.remaining()) + " trailing bytes");
    return args;
  } catch (const cereal::Exception& e) {
    ar.fail(e.what());
  } catch (const std::length_error& e) {
    ar.fail(e.what());
  }
}

// Runs in the fresh image: rebuilds the target and its arguments, then runs it.
template <class F, class... Args>
int run_fresh_target(std::uintptr_t function, std::string_view object, std::string_view arguments,
                     fd_arrival& fds) {
  F f = [&] {
    if constexpr (fresh_function<F>) return reinterpret_cast<F>(function);
    else if constexpr (fresh_empty_object<F>) return F{};
    else return wire::decode<F>(object);
  }();
  auto args = decode_arguments<Args...>(arguments, fds);
  return std::apply(
      [&](Args&... arg) {
        target_body<F, Args...> body(std::move(f), std::move(arg)...);
        return body.run();
      },
      args);
}

// The child-side body: target(args...) with its result turned into an exit code.
struct process_body {
  virtual ~process_body() = default;
  virtual int run() = 0;
  // Fills `out` and returns nullptr, or returns why the target cannot travel.
  virtual const char* to_fresh_image(fresh_target& out) const = 0;
};

template <class F, class... Args> struct target_body final : process_body {
  template <class G, class... A>
  explicit target_body(G&& g, A&&... a) : f(std::forward<G>(g)), args(std::forward<A>(a)...) {}

  int run() override {
    using R = std::invoke_result_t<F&, Args&...>;
    if constexpr (std::is_void_v<R>) {
      std::apply(f, args);
      return 0;
    } else if constexpr (std::is_same_v<R, awaitable<void>>) {
      run_target(std::apply(f, args));
      return 0;
    } else if constexpr (is_awaitable<R>::value) {
      static_assert(
          std::is_convertible_v<typename R::value_type, int>,
          "a coproc::process target returns void, int, awaitable<void> or awaitable<int>");
      if constexpr (std::is_same_v<R, awaitable<int>>) return run_target(std::apply(f, args));
      else return run_target(as_exit_code(std::apply(f, args)));
    } else {
      static_assert(
          std::is_convertible_v<R, int>,
          "a coproc::process target returns void, int, awaitable<void> or awaitable<int>");
      return static_cast<int>(std::apply(f, args));
    }
  }

  const char* to_fresh_image(fresh_target& out) const override {
    constexpr const char* refusal = fresh_refusal<F, Args...>();
    if constexpr (refusal != nullptr) {
      return (void)out, refusal;
    } else {
      out.entry = reinterpret_cast<std::uintptr_t>(&run_fresh_target<F, Args...>);
      if constexpr (fresh_function<F>) out.function = reinterpret_cast<std::uintptr_t>(f);
      if constexpr (fresh_serialized_object<F>) out.object = wire::encode(f);
      fd_departure fds;
      out.arguments = encode_arguments(args, fds);
      out.fds = fds.fds();
      return nullptr;
    }
  }

  F f;
  std::tuple<Args...> args;
};

template <class F, class... Args>
concept process_target = !std::is_base_of_v<process, std::remove_cvref_t<F>> &&
                         !std::is_same_v<std::remove_cvref_t<F>, process_options> &&
                         std::is_invocable_v<std::decay_t<F>&, std::decay_t<Args>&...>;

// Subclasses of process that may start with spawn (COPROC_REGISTER_PROCESS): how to encode
// one, and the fresh_entry that rebuilds it in a fresh image and runs it.
using process_encoder = std::string (*)(const process&);
void register_process_class(const std::type_info& type, process_encoder encode,
                            std::uintptr_t entry);
// In a fresh image: p, just decoded, takes the child's identity and runs; its exit code.
int run_rebuilt_process(process& p);

} // namespace detail

class process {
public:
  // target and args are decay-copied now (std::ref passes a reference, as with std::thread)
  // and called in the child.
  template <class F, class... Args>
    requires detail::process_target<F, Args...>
  explicit process(F&& target, Args&&... args)
      : process(process_options{}, std::forward<F>(target), std::forward<Args>(args)...) {}

  template <class F, class... Args>
    requires detail::process_target<F, Args...>
  process(process_options options, F&& target, Args&&... args) : process(std::move(options)) {
    body_ = std::make_unique<detail::target_body<std::decay_t<F>, std::decay_t<Args>...>>(
        std::forward<F>(target), std::forward<Args>(args)...);
  }

  process(process&&) noexcept;
  process& operator=(process&&) noexcept;
  // A running daemon child gets SIGTERM; a plain child runs on. Either way the runtime
  // reaps it when it exits.
  virtual ~process();

  // Starts the child, which runs run() and exits with its exit code: forks it, with
  // start_method::spawn starts a fresh image of this program (coproc/main_guard.hpp), with
  // forkserver has the fork server fork one (started now if it does not run yet; a short
  // request and reply on a local socket). The child's 0-2 are this process's now.
  // std::logic_error if started twice, or with spawn or forkserver in a program whose main
  // did not call coproc::main_guard; std::invalid_argument if the target or an argument
  // cannot travel to a fresh image (a lambda with captures, an object without a cereal
  // serialize, std::ref, a type that is not wire-serializable, a queue or connection
  // inside another argument, a closed connection); std::system_error if fork or
  // posix_spawn fails, or the fork server cannot start, cannot fork or died (naming the
  // process and the server's pid; the next start starts a new server).
  void start();

  // The exit code: >= 0 the exit status, -N killed by signal N. Several coroutines may
  // join one process. std::logic_error before start().
  awaitable<int> join();
  // nullopt if the child still runs at the deadline; the child is left alone.
  awaitable<std::optional<int>> join(duration timeout);

  // These poll (and reap) without blocking, a join or a running io_context.
  bool is_alive() const;
  std::optional<int> exitcode() const;

  // SIGTERM / SIGKILL / SIGINT (so the child's cleanup runs, as a Ctrl-C would); no-op
  // before start and once the child has been reaped.
  void terminate();
  void kill();
  void interrupt();

  int pid() const noexcept;
  const std::string& name() const noexcept { return name_; }
  void name(std::string name) { name_ = std::move(name); }
  bool daemon() const noexcept { return daemon_; }
  // std::logic_error once started.
  void daemon(bool daemon);

protected:
  explicit process(process_options options = {});
  // The child's body; the default calls target(args...). An exception escaping it is
  // printed as "Process <name>:" with its type and what(), and the exit code is 1.
  virtual void run();

private:
  friend int detail::run_rebuilt_process(process& p);
  void release() noexcept;
  [[noreturn]] void run_child();
  // The body a fresh image (spawn, forkserver) of this process is told; std::invalid_argument
  // if the target cannot travel, std::logic_error without main_guard.
  struct fresh_image {
    std::string body;
    std::vector<int> fds; // travel with the child, from detail::fresh_image_first_fd on
  };
  fresh_image fresh_image_body(start_method method, const std::string& who) const;
  const std::shared_ptr<detail::process_child>& started(const char* what) const;

  std::unique_ptr<detail::process_body> body_;
  std::string name_;
  detail::identity identity_;
  bool daemon_ = false;
  std::optional<start_method> method_;
  int exit_code_ = 0;
  std::shared_ptr<detail::process_child> child_;
};

namespace detail {
template <class T> std::string encode_process(const process& p) {
  return wire::encode(static_cast<const T&>(p));
}

template <class T>
int run_fresh_process_class(std::uintptr_t, std::string_view object, std::string_view,
                            fd_arrival&) {
  T p = wire::decode<T>(object);
  return run_rebuilt_process(p);
}

template <class T> bool register_process_class() {
  static_assert(std::is_base_of_v<process, T>,
                "COPROC_REGISTER_PROCESS: T must derive from coproc::process");
  static_assert(
      std::is_default_constructible_v<T>,
      "COPROC_REGISTER_PROCESS: T needs a public default constructor (a fresh image rebuilds it)");
  static_assert(
      wire::detail::own_serializer<T>,
      "COPROC_REGISTER_PROCESS: T needs a cereal serialize(Archive&) member (or save/load) for "
      "the fields its run() uses");
  register_process_class(typeid(T), &encode_process<T>,
                         reinterpret_cast<std::uintptr_t>(&run_fresh_process_class<T>));
  return true;
}
} // namespace detail

} // namespace coproc

#define COPROC_DETAIL_CONCAT2(a, b) a##b
#define COPROC_DETAIL_CONCAT(a, b) COPROC_DETAIL_CONCAT2(a, b)
// At global scope, once per subclass T of coproc::process (a qualified name is fine) that
// may start with start_method::spawn or forkserver: T needs a public default constructor and a
// cereal serialize for the state its run() uses. In the fresh image T is default-constructed,
// decoded and run; it keeps the parent's name() and daemon flag. An unregistered subclass
// is std::invalid_argument at start() with spawn or forkserver.
#define COPROC_REGISTER_PROCESS(...)                                                               \
  [[maybe_unused]] static const bool COPROC_DETAIL_CONCAT(coproc_registered_process_,              \
                                                          __COUNTER__) =                           \
      ::coproc::detail::register_process_class<__VA_ARGS__>()
