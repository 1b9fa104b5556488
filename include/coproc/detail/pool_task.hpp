// coproc/detail/pool_task.hpp — how a pool task crosses to a worker.
//
// A task is a trampoline (one per callable type and argument types) plus, for a plain
// function pointer, the function itself. Both travel as offsets from an anchor function
// in the same image, never as raw pointers: a worker started from the same executable
// (forked now, or later by a forkserver or as a fresh image) finds the same code at
// the same offsets, whatever the parent's heap looks like. Callables with state are
// refused at compile time because their state would not exist in such a worker.
#pragma once

#include <coproc/detail/pool_protocol.hpp> // the frames that tasks travel in
#include <coproc/errors.hpp>
#include <coproc/wire.hpp>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <utility>

namespace coproc::detail {

// One item's argument bytes. A trampoline calls consumed() once it has decoded them and
// before the task runs: the worker may then free the frame, so a large argument is not
// held twice while the task works on its decoded copy. `bytes` is invalid afterwards.
struct pool_input {
  std::string_view bytes;
  void (*on_consumed)(void* context) = nullptr;
  void* context = nullptr;
  void consumed() const {
    if (on_consumed) on_consumed(context);
  }
};

// Decodes the arguments of one item from `in`, calls the callable and appends its
// encoded result to `out`. Throws what the callable or the decoding threw.
using pool_trampoline = void (*)(std::intptr_t target, const pool_input& in, std::string& out);

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
    std::is_class_v<F> && std::is_empty_v<F> && std::is_default_constructible_v<F>;

template <class F> constexpr void check_pool_callable() {
  static_assert(pool_function_pointer<F> || pool_stateless_object<F>,
                "coproc::pool: a task must be a function pointer or a captureless lambda / "
                "empty function object. A capture or any other state would not exist in a "
                "worker that was not forked from this exact process state: pass the data as "
                "task arguments instead.");
}

// The target word of a frame: the function's offset for a function pointer, 0 otherwise.
template <class F> std::intptr_t pool_target(F f) noexcept {
  if constexpr (pool_function_pointer<F>) return pool_image_offset(f);
  else return (void)f, 0;
}

template <class F> F pool_callable(std::intptr_t target) noexcept {
  if constexpr (pool_function_pointer<F>)
    return reinterpret_cast<F>(target + pool_anchor_address());
  else return (void)target, F{};
}

template <class Call> void pool_emit(std::string& out, Call&& call) {
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
template <class T> void encode_part(std::string& out, const T& part) {
  std::size_t at = out.size();
  out.append(sizeof(std::uint64_t), '\0');
  wire::encode_into(out, part);
  std::uint64_t n = out.size() - at - sizeof(std::uint64_t);
  std::memcpy(out.data() + at, &n, sizeof n);
}

template <class... T> void encode_parts(std::string& out, const T&... parts) {
  (encode_part(out, parts), ...);
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

template <class Tuple> void encode_tuple_parts(std::string& out, const Tuple& t) {
  std::apply([&](const auto&... e) { encode_parts(out, e...); }, t);
}

// apply(f, args...): one item, the arguments as parts.
template <class F, class... A>
void apply_trampoline(std::intptr_t target, const pool_input& in, std::string& out) {
  F f = pool_callable<F>(target);
  auto args = decode_parts<std::tuple<A...>>(in.bytes);
  in.consumed();
  pool_emit(out, [&]() -> decltype(auto) { return apply_decoded(f, args); });
}

// map / imap: one item is one argument.
template <class F, class T>
void item_trampoline(std::intptr_t target, const pool_input& in, std::string& out) {
  F f = pool_callable<F>(target);
  auto item = wire::decode<T>(in.bytes);
  in.consumed();
  pool_emit(out, [&]() -> decltype(auto) {
    if constexpr (std::is_invocable_v<F&, T&&>) return std::invoke(f, std::move(item));
    else return std::invoke(f, item);
  });
}

// starmap: one item is a tuple of arguments.
template <class F, class T>
void star_trampoline(std::intptr_t target, const pool_input& in, std::string& out) {
  F f = pool_callable<F>(target);
  auto item = decode_parts<T>(in.bytes);
  in.consumed();
  pool_emit(out, [&]() -> decltype(auto) { return apply_decoded(f, item); });
}

} // namespace coproc::detail
