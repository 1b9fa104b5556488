// coproc/detail/pool_task.hpp — how a pool task crosses to a worker.
//
// A task is a trampoline (one per callable type and argument types) plus, for a plain
// function pointer, the function itself. Both travel as offsets from an anchor function
// in libcoproc, never as raw pointers: a forked worker finds the same code at the same
// offsets, and a fresh image (spawn, forkserver, remote) moves each offset into its own
// placement of the object that holds it (lib/image_map.hpp), whatever the parent's heap
// looks like. A callable with state travels
// only as values the wire format can check: a function object's cereal serialize, or a
// coproc::partial's bound arguments (its function is the frame's target when it is a
// plain function), encoded once per submission and put before every item's arguments.
// Any other state (a lambda's captures) is refused at compile time: it would not exist
// in such a worker. A callable returning awaitable<R> is a coroutine task: the worker
// starts it on its own io_context (pool_coroutine_host) and answers when it ends.
#pragma once

#include <coproc/awaitable.hpp>
#include <coproc/detail/pool_protocol.hpp> // the frames that tasks travel in
#include <coproc/errors.hpp>
#include <coproc/partial.hpp>
#include <coproc/wire.hpp>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <utility>

namespace coproc::detail {

// Where a worker runs coroutine tasks (lib/pool_worker.cpp).
class pool_coroutine_host {
public:
  // The answer of the item being started, in item order: the task encodes its result here.
  virtual std::string& begin_answer() = 0;
  // Runs the task on the worker's io_context; an exception it throws becomes the answer.
  virtual void start(awaitable<void> task) = 0;

protected:
  ~pool_coroutine_host() = default;
};

// One item's argument bytes (after the callable's state, if it has one). A trampoline calls
// consumed() once it has decoded them and before the task runs: the worker may then free the frame,
// so a large argument is not held twice while the task works on its decoded copy. `bytes` is
// invalid afterwards.
struct pool_input {
  std::string_view bytes;
  void (*on_consumed)(void* context) = nullptr;
  void* context = nullptr;
  pool_coroutine_host* host = nullptr;
  void consumed() const {
    if (on_consumed) on_consumed(context);
  }
};

// What the pool keeps of an argument until it is sent: the argument itself, or for a
// std::string or a vector of numbers passed as an lvalue, a copy that a large value gets
// on huge pages (a 64 MiB copy onto fresh 4 KiB pages costs four times its memcpy on
// these VMs, docs/platform.md).
template <class A> decltype(auto) held_copy(A&& a) {
  using D = std::remove_cvref_t<A>;
  if constexpr (wire::detail::bulk_decoded<D> && std::is_lvalue_reference_v<A>) {
    D copy;
    copy.reserve(a.size());
    wire::detail::advise_fresh(copy.data(), a.size() * sizeof(typename D::value_type));
    copy.assign(a.begin(), a.end());
    return copy;
  } else {
    return std::forward<A>(a);
  }
}

// Decodes the arguments of one item from `in`, calls the callable and appends its
// encoded result to `out`. Throws what the callable or the decoding threw.
using pool_trampoline = void (*)(std::intptr_t target, const pool_input& in,
                                 wire::output_buffer& out);

// The point that task offsets are measured from (defined in lib/pool_protocol.cpp).
void pool_image_anchor() noexcept;

inline std::intptr_t pool_anchor_address() noexcept {
  return reinterpret_cast<std::intptr_t>(&pool_image_anchor);
}

template <class Fn> std::intptr_t pool_image_offset(Fn* fn) noexcept {
  return reinterpret_cast<std::intptr_t>(fn) - pool_anchor_address();
}

template <class F>
concept pool_function_pointer =
    std::is_pointer_v<F> && std::is_function_v<std::remove_pointer_t<F>>;

template <class F>
concept pool_stateless_object =
    std::is_class_v<F> && std::is_empty_v<F> && std::is_default_constructible_v<F> &&
    !wire::detail::own_serializer<F>;

template <class F> inline constexpr bool is_partial = false;
template <class F, class... B> inline constexpr bool is_partial<partial_fn<F, B...>> = true;

// A function object whose state travels through its cereal serialize.
template <class F>
concept pool_stateful_object = std::is_class_v<F> && !is_partial<F> && !std::is_empty_v<F> &&
                               std::is_default_constructible_v<F> &&
                               std::is_copy_constructible_v<F> && wire::detail::own_serializer<F>;

// Whether F can be rebuilt in a worker from its target word and state bytes.
template <class F> constexpr bool pool_travels() {
  if constexpr (is_partial<F>)
    return pool_travels<typename F::function_type>() && wire::serializable<typename F::bound_type>;
  else return pool_function_pointer<F> || pool_stateless_object<F> || pool_stateful_object<F>;
}

template <class F> constexpr void check_pool_callable() {
  static_assert(pool_travels<F>(),
                "coproc::pool: a task must be a function pointer, a captureless lambda, a "
                "function object with a cereal serialize(Archive&) (default constructible and "
                "copyable; its state travels with each task), or coproc::partial(f, args...) "
                "of one with serializable arguments. A lambda's captures cannot travel: C++ "
                "can neither see nor serialize them, and they would not exist in a worker "
                "that was not forked from this exact process state. Pass the data as task "
                "arguments, bind it with coproc::partial, or write a function object with "
                "serialize.");
}

// The target word of a frame: the function's offset for a function pointer (also inside a
// partial), 0 otherwise.
template <class F> std::intptr_t pool_target(const F& f) noexcept {
  if constexpr (is_partial<F>) return pool_target(f.function());
  else if constexpr (pool_function_pointer<F>) return pool_image_offset(f);
  else return (void)f, 0;
}

template <class T> void encode_part(wire::output_buffer& out, const T& part);
template <class T> void encode_part(std::string& out, const T& part);
template <class T> T decode_part(std::string_view& in);

// The bytes of f's state that go before every item's arguments (empty for a plain
// function or an empty object).
template <class F> void encode_pool_state(std::string& out, const F& f) {
  if constexpr (is_partial<F>) {
    encode_pool_state(out, f.function());
    encode_part(out, f.bound());
  } else if constexpr (pool_stateful_object<F>) {
    encode_part(out, f);
  } else {
    (void)out, (void)f;
  }
}
template <class F> std::string pool_state(const F& f) {
  std::string out;
  encode_pool_state(out, f);
  return out;
}

// The callable rebuilt in the worker; consumes its state from the front of `state`.
template <class F> F pool_callable(std::intptr_t target, std::string_view& state) {
  if constexpr (is_partial<F>) {
    auto f = pool_callable<typename F::function_type>(target, state);
    auto bound = decode_part<typename F::bound_type>(state);
    return F(std::move(f), std::move(bound));
  } else if constexpr (pool_stateful_object<F>) {
    return decode_part<F>(state);
  } else if constexpr (pool_function_pointer<F>) {
    return reinterpret_cast<F>(target + pool_anchor_address());
  } else {
    return (void)target, F{};
  }
}

template <class R> struct task_result {
  static constexpr bool coroutine = false;
  using type = R;
};
template <class R, class E> struct task_result<boost::asio::awaitable<R, E>> {
  static constexpr bool coroutine = true;
  using type = R;
};
// What a task's caller gets: R, or T for a coroutine task returning awaitable<T>.
template <class R> using task_value_t = typename task_result<R>::type;
template <class R> inline constexpr bool is_coroutine_task = task_result<R>::coroutine;

template <class Call> void pool_emit(wire::output_buffer& out, Call&& call) {
  if constexpr (std::is_void_v<decltype(std::forward<Call>(call)())>) {
    std::forward<Call>(call)();
  } else {
    wire::encode_into(out, std::forward<Call>(call)());
  }
}

// Whether f takes the decoded arguments as rvalues: they are then moved into its by-value
// parameters instead of copied (a 5 GiB string argument exists once in the worker).
template <class F, class Tuple> constexpr bool invocable_moved() {
  return []<std::size_t... I>(std::index_sequence<I...>) {
    return std::is_invocable_v<F&, std::tuple_element_t<I, Tuple>&&...>;
  }(std::make_index_sequence<std::tuple_size_v<Tuple>>{});
}

template <class F, class Tuple> decltype(auto) apply_decoded(F& f, Tuple& args) {
  if constexpr (invocable_moved<F, Tuple>()) return std::apply(f, std::move(args));
  else return std::apply(f, args);
}

// Several values travel as parts, each [u64 length][wire bytes]: the arguments of an
// apply, the elements of a starmap tuple, an error's type name and message.
template <class T> void encode_part(wire::output_buffer& out, const T& part) {
  std::size_t at = out.size();
  out.append_zeros(sizeof(std::uint64_t));
  wire::encode_into(out, part);
  std::uint64_t n = out.size() - at - sizeof(std::uint64_t);
  out.overwrite(at, &n, sizeof n);
}
template <class T> void encode_part(std::string& out, const T& part) {
  wire::output_buffer buffer(out);
  encode_part(buffer, part);
}

template <class... T> void encode_parts(wire::output_buffer& out, const T&... parts) {
  (encode_part(out, parts), ...);
}
template <class... T> void encode_parts(std::string& out, const T&... parts) {
  wire::output_buffer buffer(out);
  encode_parts(buffer, parts...);
}

template <class T> T decode_part(std::string_view& in) {
  std::uint64_t n;
  if (in.size() < sizeof n) throw error("coproc::pool: truncated task data");
  std::memcpy(&n, in.data(), sizeof n);
  if (in.size() - sizeof n < n) throw error("coproc::pool: truncated task data");
  auto value = wire::decode<T>(in.substr(sizeof n, n));
  in.remove_prefix(sizeof n + n);
  return value;
}

// A tuple-like value (std::tuple, std::pair, std::array) decoded from its parts.
template <class Tuple> Tuple decode_parts(std::string_view in) {
  Tuple t{};
  std::apply([&](auto&... e) { ((e = decode_part<std::remove_cvref_t<decltype(e)>>(in)), ...); },
             t);
  if (!in.empty()) throw error("coproc::pool: trailing bytes in task data");
  return t;
}

template <class Tuple> void encode_tuple_parts(wire::output_buffer& out, const Tuple& t) {
  std::apply([&](const auto&... e) { encode_parts(out, e...); }, t);
}

// A coroutine task: f and its arguments live in this frame until it ends.
template <class F, class Args> awaitable<void> coroutine_task(F f, Args args, std::string& out) {
  using R = task_value_t<decltype(apply_decoded(f, args))>;
  if constexpr (std::is_void_v<R>) {
    co_await apply_decoded(f, args);
  } else {
    R result = co_await apply_decoded(f, args);
    wire::encode_into(out, result);
  }
}

// Rebuilds the callable, decodes the arguments (decode(bytes) gives a tuple-like value),
// then runs the task, or starts it if it is a coroutine.
template <class F, class Decode>
void run_pool_task(std::intptr_t target, const pool_input& in, wire::output_buffer& out,
                   Decode decode) {
  std::string_view bytes = in.bytes;
  F f = pool_callable<F>(target, bytes);
  auto args = decode(bytes);
  in.consumed();
  using R = decltype(apply_decoded(f, args));
  if constexpr (is_coroutine_task<R>) {
    if (!in.host) throw error("coproc::pool: a coroutine task outside a pool worker");
    std::string& answer = in.host->begin_answer();
    in.host->start(coroutine_task(std::move(f), std::move(args), answer));
  } else {
    pool_emit(out, [&]() -> decltype(auto) { return apply_decoded(f, args); });
  }
}

// apply(f, args...): one item, the arguments as parts.
template <class F, class... A>
void apply_trampoline(std::intptr_t target, const pool_input& in, wire::output_buffer& out) {
  run_pool_task<F>(target, in, out,
                   [](std::string_view bytes) { return decode_parts<std::tuple<A...>>(bytes); });
}

// map / imap: one item is one argument.
template <class F, class T>
void item_trampoline(std::intptr_t target, const pool_input& in, wire::output_buffer& out) {
  run_pool_task<F>(target, in, out,
                   [](std::string_view bytes) { return std::tuple<T>(wire::decode<T>(bytes)); });
}

// starmap: one item is a tuple of arguments.
template <class F, class T>
void star_trampoline(std::intptr_t target, const pool_input& in, wire::output_buffer& out) {
  run_pool_task<F>(target, in, out, [](std::string_view bytes) { return decode_parts<T>(bytes); });
}

// pool_options::initializer: any callable; one that can travel (a plain function, a
// captureless lambda, a function object with serialize, a partial of one) also carries
// the form a fresh worker image rebuilds it from.
class pool_initializer {
public:
  struct travel_form {
    std::intptr_t trampoline = 0, target = 0; // offsets from the anchor
    std::string state;
  };

  pool_initializer() = default;
  pool_initializer(std::nullptr_t) {}
  template <class F>
    requires(!std::is_same_v<std::decay_t<F>, pool_initializer> &&
             !std::is_same_v<std::decay_t<F>, std::nullptr_t> &&
             std::is_invocable_v<std::decay_t<F>&>)
  pool_initializer(F&& f) : call_(std::forward<F>(f)) {
    using D = std::decay_t<F>;
    if constexpr (pool_travels<D>()) {
      if (call_) {
        const D& d = *call_.template target<D>();
        travel_ =
            travel_form{pool_image_offset(&apply_trampoline<D>), pool_target(d), pool_state(d)};
      }
    }
  }

  explicit operator bool() const noexcept { return static_cast<bool>(call_); }
  void operator()() const { call_(); }
  const std::function<void()>& function() const noexcept { return call_; }
  // nullopt when it cannot travel (a lambda with captures, a std::function).
  const std::optional<travel_form>& travel() const noexcept { return travel_; }

private:
  std::function<void()> call_;
  std::optional<travel_form> travel_;
};

} // namespace coproc::detail
