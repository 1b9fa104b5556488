// coproc/partial.hpp — functools.partial: a callable with its leading arguments bound.
//
//   auto scale_by_3 = coproc::partial(scale, 3);   // scale_by_3(x) == scale(3, x)
//   co_await pool.map(scale_by_3, items);
//
// As a pool task (or a pool initializer with any start method) it travels to the worker:
// its function as a code offset (a plain function) or as its own state (a function object
// with a cereal serialize), its bound arguments in the wire format, once per task. The
// bound arguments are passed to the function as lvalues, before the call's arguments.
#pragma once

#include <functional>
#include <tuple>
#include <type_traits>
#include <utility>

namespace coproc {

template <class F, class... B> class partial_fn {
public:
  using function_type = F;
  using bound_type = std::tuple<B...>;

  partial_fn(F f, bound_type bound) : f_(std::move(f)), bound_(std::move(bound)) {}

  template <class... A>
    requires std::is_invocable_v<F&, B&..., A...>
  decltype(auto) operator()(A&&... args) {
    return std::apply(
        [&](B&... bound) -> decltype(auto) {
          return std::invoke(f_, bound..., std::forward<A>(args)...);
        },
        bound_);
  }

  const F& function() const noexcept { return f_; }
  const bound_type& bound() const noexcept { return bound_; }

private:
  F f_;
  bound_type bound_;
};

// f with `bound...` bound as its leading arguments (decay-copied, as std::bind_front).
template <class F, class... B> auto partial(F f, B... bound) {
  return partial_fn<F, B...>(std::move(f), std::tuple<B...>(std::move(bound)...));
}

} // namespace coproc
