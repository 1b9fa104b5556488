// coproc/wire.hpp — how values cross process boundaries (pool tasks, queues, pipes).
//
// Types whose every bit pattern is a valid value are copied as their bytes (the memcpy
// fast path, `trivially_encoded`): integers, floating point, std::byte, enums with a
// fixed underlying type (`enum class e`, `enum e : int`: C++ makes every value of that
// type a valid enum value, named or not), arrays and std::arrays of those, and plain
// structs (aggregates without a base class) whose fields are all such. Everything else
// goes through cereal with coproc's own binary archives, which check what they read:
// bool, std::string, the standard containers, pair/tuple/optional/variant, user types
// with a cereal serialize(Archive&) member (or save/load) — a class that has one always
// uses it — and plain trivially copyable structs holding a bool, an optional, a variant
// or such a struct, which are encoded field by field. C++20 has no reflection: a struct's
// fields are found by aggregate initialization and named by structured bindings, which
// works for aggregates without a base class, with at most 24 fields (C arrays and
// bit-fields included, though a struct whose bit-fields are not all every-bit-valid
// cannot be read field by field), no const, reference or empty-struct field. (An
// anonymous union member makes the compiler refuse the structured binding.) Any other
// trivially copyable class without a serialize is a compile-time error: its bytes could
// hold a bool, an enum out of range or a pointer that nothing can check. If every bit
// pattern of it is a valid value, say so:
//   template <> struct coproc::wire::memcpy_safe<my_type> : std::true_type {};
//
// Pointers, references and views (std::string_view, std::span), and the standard
// containers and plain structs holding them, are a compile-time error: their values are
// addresses in this process's memory. So is an enum without a fixed underlying type
// (only the range of its enumerators is valid and its bytes cannot be checked), and a
// coproc::queue or coproc::connection (anywhere but as a process's own argument, where
// its descriptors travel with the child: coproc/process.hpp).
// `serializable<T>` tells whether T can cross. The bytes are native (endianness, sizes,
// layout): a format between processes of one program, not for files or other machines.
//
// Decoding never trusts its input: a truncated frame, trailing bytes, a length larger
// than the bytes that follow, a bool (also an optional's flag) that is neither 0 nor 1 or
// a bad variant index is a coproc::error, never undefined behaviour. A size is only
// believed if that many bytes could follow, so a container of empty elements longer than
// its frame is refused.
#pragma once

#include <coproc/errors.hpp>

#include <cereal/cereal.hpp>
#include <cereal/types/array.hpp>
#include <cereal/types/deque.hpp>
#include <cereal/types/list.hpp>
#include <cereal/types/map.hpp>
#include <cereal/types/optional.hpp>
#include <cereal/types/set.hpp>
#include <cereal/types/string.hpp>
#include <cereal/types/tuple.hpp>
#include <cereal/types/unordered_map.hpp>
#include <cereal/types/unordered_set.hpp>
#include <cereal/types/utility.hpp>
#include <cereal/types/variant.hpp>
#include <cereal/types/vector.hpp>

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <deque>
#include <exception>
#include <list>
#include <map>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <typeinfo>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <variant>
#include <vector>

namespace coproc::wire {

// Where an encoding goes: appended to a std::string, or, once a spill area is set and the
// bytes from its start have passed a threshold, into that area (coproc's pool encodes a
// large task value straight into the shared memory it travels in so: one copy instead of
// encoding into a buffer and copying that, lib/pool_payload.hpp). Positions count from
// the string's start either way.
class output_buffer {
public:
  explicit output_buffer(std::string& bytes) noexcept : bytes_(bytes) {}
  output_buffer(const output_buffer&) = delete;
  output_buffer& operator=(const output_buffer&) = delete;

  void append(const void* data, std::size_t n) {
    if (!spilled_ && n <= spill_at_ - bytes_.size() && n != 0) [[likely]]
      bytes_.append(static_cast<const char*>(data), n);
    else if (n != 0) // (data may be null when n is 0: an empty vector's)
      append_slow(data, n);
  }
  void append_zeros(std::size_t n) {
    if (!spilled_ && n <= spill_at_ - bytes_.size()) [[likely]]
      bytes_.append(n, '\0');
    else append_slow(nullptr, n);
  }
  std::size_t size() const noexcept { return spilled_ ? from_ + used_ : bytes_.size(); }
  // Overwrites n bytes appended before, from position at.
  void overwrite(std::size_t at, const void* data, std::size_t n) noexcept {
    char* to = spilled_ && at >= from_ ? area_ + (at - from_) : bytes_.data() + at;
    std::memcpy(to, data, n);
  }

  // Where a spill goes; asked only once an encoding passes its threshold, so a small one
  // costs nothing more than a string append.
  class spill_area {
  public:
    // The memory and its size (a null area: none).
    virtual std::pair<char*, std::size_t> room() noexcept = 0;

  protected:
    ~spill_area() = default;
  };
  // The bytes from position `from` on (none appended yet) move to `area` once they are
  // more than `threshold`; if they do not fit, or outgrow it, they stay in (or come back
  // to) the string.
  void spill_to(spill_area& area, std::size_t from, std::size_t threshold) noexcept {
    source_ = &area;
    from_ = from;
    spill_at_ = from + threshold;
  }
  // How many bytes are in the area (0: all of them are in the string).
  std::size_t spilled() const noexcept { return spilled_ ? used_ : 0; }
  // Forgets the spill area and what went there (an encoding that failed).
  void drop_spill() noexcept {
    spilled_ = false;
    spill_at_ = std::size_t(-1);
  }

private:
  // Before n more bytes: whether the bytes so far moved to the area (false: the area is
  // too small for them, and the encoding stays in the string). In lib/wire.cpp.
  bool spill(std::size_t n) noexcept;
  // Past the threshold, or spilled (data null: zeros).
  void append_slow(const void* data, std::size_t n);

  std::string& bytes_;
  bool spilled_ = false;
  std::size_t spill_at_ = std::size_t(-1);
  spill_area* source_ = nullptr;
  char* area_ = nullptr;
  std::size_t room_ = 0, from_ = 0, used_ = 0;
};

class output_archive
    : public cereal::OutputArchive<output_archive, cereal::AllowEmptyClassElision> {
public:
  explicit output_archive(std::string& out) : OutputArchive(this), own_(std::in_place, out) {
    out_ = &*own_;
  }
  explicit output_archive(output_buffer& out) : OutputArchive(this), out_(&out) {}
  void save_binary(const void* data, std::size_t size) { out_->append(data, size); }

private:
  std::optional<output_buffer> own_;
  output_buffer* out_;
};

class input_archive : public cereal::InputArchive<input_archive, cereal::AllowEmptyClassElision> {
public:
  input_archive(std::string_view bytes, const std::type_info& type)
      : InputArchive(this), bytes_(bytes), type_(type) {}
  void load_binary(void* data, std::size_t size) {
    if (size > bytes_.size() - pos_) fail("truncated");
    if (size == 0) return; // data may be null (an empty vector's)
    std::memcpy(data, bytes_.data() + pos_, size);
    pos_ += size;
  }
  // bools are checked in the frame, before they become objects.
  void load_bools(void* data, std::size_t count) {
    if (count > bytes_.size() - pos_) fail("truncated");
    for (std::size_t i = 0; i < count; ++i)
      if (static_cast<unsigned char>(bytes_[pos_ + i]) > 1) fail("a bool must be 0 or 1");
    load_binary(data, count);
  }
  std::size_t remaining() const noexcept { return bytes_.size() - pos_; }
  [[noreturn]] void fail(const std::string& why) const;

private:
  std::string_view bytes_;
  std::size_t pos_ = 0;
  const std::type_info& type_;
};

// Whether every bit pattern of T is a valid T: then T crosses as its bytes. Deduced (see
// the top of this file); specialize it as std::true_type for a trivially copyable class
// that cannot be checked field by field but takes any bytes.
template <class T> struct memcpy_safe;

namespace detail {
// Sees the serialization functions cereal, the standard types and the user provide (all
// templates on the archive), but not coproc's own raw-bytes overloads below.
class probe_archive : public cereal::OutputArchive<probe_archive, cereal::AllowEmptyClassElision> {
public:
  probe_archive() : OutputArchive(this) {}
  void save_binary(const void*, std::size_t) {}
};
template <class A>
concept wire_output_archive = std::is_same_v<A, output_archive> || std::is_same_v<A, probe_archive>;
template <class A>
concept wire_archive = wire_output_archive<A> || std::is_same_v<A, input_archive>;

// A class with a serialize/save of its own: cereal's wrappers, the standard types, users'.
template <class T>
concept own_serializer =
    cereal::traits::detail::count_output_serializers<T, probe_archive>::value != 0;

template <class... T> struct type_list {};

template <class T, template <class...> class Template> inline constexpr bool is_instance = false;
template <template <class...> class Template, class... A>
inline constexpr bool is_instance<Template<A...>, Template> = true;
template <class T> inline constexpr bool is_std_array = false;
template <class T, std::size_t N> inline constexpr bool is_std_array<std::array<T, N>> = true;
template <class T> inline constexpr bool is_span = false;
template <class T, std::size_t N> inline constexpr bool is_span<std::span<T, N>> = true;

// Standard containers and optional: what they hold is their value_type.
template <class T>
inline constexpr bool is_std_holder =
    is_instance<T, std::vector> || is_instance<T, std::deque> || is_instance<T, std::list> ||
    is_instance<T, std::set> || is_instance<T, std::multiset> || is_instance<T, std::map> ||
    is_instance<T, std::multimap> || is_instance<T, std::unordered_set> ||
    is_instance<T, std::unordered_multiset> || is_instance<T, std::unordered_map> ||
    is_instance<T, std::unordered_multimap> || is_instance<T, std::optional> || is_std_array<T>;
template <class T> struct held_types {};
template <template <class...> class Template, class... A>
  requires(is_instance<Template<A...>, std::pair> || is_instance<Template<A...>, std::tuple> ||
           is_instance<Template<A...>, std::variant>)
struct held_types<Template<A...>> {
  using type = type_list<A...>;
};

// Only an enum with a fixed underlying type may be list-initialized from an integer.
template <class E>
concept fixed_enum = std::is_enum_v<E> && requires { E{std::underlying_type_t<E>{}}; };

// Field discovery for plain structs. any_field converts to any field type; a field
// initialized by `{any_field}` takes exactly one initializer (no brace elision into C
// arrays or nested structs), so the longest such initializer list counts the fields,
// provided one more plain any_field is refused (else a field refused `{any_field}`).
struct any_field {
  template <class U> operator U&() const;
};
// Converts only to a base class of T: a base comes first in aggregate initialization.
template <class T> struct any_base {
  template <class U>
    requires(std::is_base_of_v<U, T> && !std::is_same_v<std::remove_cv_t<U>, T>)
  operator U&() const;
};
inline constexpr std::size_t max_fields = 24;
inline constexpr std::size_t no_count = std::size_t(-1);
template <class T, std::size_t... I> constexpr bool braced_init(std::index_sequence<I...>) {
  return requires { T{{(void(I), any_field{})}...}; };
}
template <class T, std::size_t... I> constexpr bool braced_init_and_one(std::index_sequence<I...>) {
  return requires { T{{(void(I), any_field{})}..., any_field{}}; };
}
template <class T, std::size_t N = 0> constexpr std::size_t count_fields() {
  if constexpr (N > max_fields || !braced_init<T>(std::make_index_sequence<N>{})) return no_count;
  else if constexpr (!braced_init<T>(std::make_index_sequence<N + 1>{}))
    return braced_init_and_one<T>(std::make_index_sequence<N>{}) ? no_count : N;
  else return count_fields<T, N + 1>();
}
// Plain structs whose fields can be named: aggregates without a base, const or
// reference fields (those are not copy assignable), not tuple-like (std::array: a
// structured binding names its elements). Empty ones are not needed here.
template <class T>
concept reflectable = std::is_class_v<T> && std::is_aggregate_v<T> && !std::is_empty_v<T> &&
                      !requires { std::tuple_size<T>::value; } && std::is_trivially_copyable_v<T> &&
                      std::is_copy_assignable_v<T> && !requires { T{any_base<T>{}}; } &&
                      count_fields<T>() != no_count && count_fields<T>() != 0;

// Calls f with t's fields; not_callable if f does not take them.
struct not_callable {};
template <class T, class F> decltype(auto) apply_fields(T& t, F&& f) {
  constexpr std::size_t n = count_fields<std::remove_cv_t<T>>();
  static_assert(n >= 1 && n <= max_fields);
#define COPROC_WIRE_FIELDS(count, ...)                                                             \
  if constexpr (n == count) {                                                                      \
    auto& [__VA_ARGS__] = t;                                                                       \
    if constexpr (requires { f(__VA_ARGS__); }) return f(__VA_ARGS__);                             \
    else return not_callable{};                                                                    \
  } else
  COPROC_WIRE_FIELDS(1, f0)
  COPROC_WIRE_FIELDS(2, f0, f1)
  COPROC_WIRE_FIELDS(3, f0, f1, f2)
  COPROC_WIRE_FIELDS(4, f0, f1, f2, f3)
  COPROC_WIRE_FIELDS(5, f0, f1, f2, f3, f4)
  COPROC_WIRE_FIELDS(6, f0, f1, f2, f3, f4, f5)
  COPROC_WIRE_FIELDS(7, f0, f1, f2, f3, f4, f5, f6)
  COPROC_WIRE_FIELDS(8, f0, f1, f2, f3, f4, f5, f6, f7)
  COPROC_WIRE_FIELDS(9, f0, f1, f2, f3, f4, f5, f6, f7, f8)
  COPROC_WIRE_FIELDS(10, f0, f1, f2, f3, f4, f5, f6, f7, f8, f9)
  COPROC_WIRE_FIELDS(11, f0, f1, f2, f3, f4, f5, f6, f7, f8, f9, f10)
  COPROC_WIRE_FIELDS(12, f0, f1, f2, f3, f4, f5, f6, f7, f8, f9, f10, f11)
  COPROC_WIRE_FIELDS(13, f0, f1, f2, f3, f4, f5, f6, f7, f8, f9, f10, f11, f12)
  COPROC_WIRE_FIELDS(14, f0, f1, f2, f3, f4, f5, f6, f7, f8, f9, f10, f11, f12, f13)
  COPROC_WIRE_FIELDS(15, f0, f1, f2, f3, f4, f5, f6, f7, f8, f9, f10, f11, f12, f13, f14)
  COPROC_WIRE_FIELDS(16, f0, f1, f2, f3, f4, f5, f6, f7, f8, f9, f10, f11, f12, f13, f14, f15)
  COPROC_WIRE_FIELDS(17, f0, f1, f2, f3, f4, f5, f6, f7, f8, f9, f10, f11, f12, f13, f14, f15, f16)
  COPROC_WIRE_FIELDS(18, f0, f1, f2, f3, f4, f5, f6, f7, f8, f9, f10, f11, f12, f13, f14, f15, f16,
                     f17)
  COPROC_WIRE_FIELDS(19, f0, f1, f2, f3, f4, f5, f6, f7, f8, f9, f10, f11, f12, f13, f14, f15, f16,
                     f17, f18)
  COPROC_WIRE_FIELDS(20, f0, f1, f2, f3, f4, f5, f6, f7, f8, f9, f10, f11, f12, f13, f14, f15, f16,
                     f17, f18, f19)
  COPROC_WIRE_FIELDS(21, f0, f1, f2, f3, f4, f5, f6, f7, f8, f9, f10, f11, f12, f13, f14, f15, f16,
                     f17, f18, f19, f20)
  COPROC_WIRE_FIELDS(22, f0, f1, f2, f3, f4, f5, f6, f7, f8, f9, f10, f11, f12, f13, f14, f15, f16,
                     f17, f18, f19, f20, f21)
  COPROC_WIRE_FIELDS(23, f0, f1, f2, f3, f4, f5, f6, f7, f8, f9, f10, f11, f12, f13, f14, f15, f16,
                     f17, f18, f19, f20, f21, f22)
  COPROC_WIRE_FIELDS(24, f0, f1, f2, f3, f4, f5, f6, f7, f8, f9, f10, f11, f12, f13, f14, f15, f16,
                     f17, f18, f19, f20, f21, f22, f23) {}
#undef COPROC_WIRE_FIELDS
}
// A bit-field binds only to a const reference (a copy).
struct field_types_of {
  template <class... F> type_list<F...> operator()(const F&...) const { return {}; }
};
template <class T> using field_types = decltype(apply_fields(std::declval<T&>(), field_types_of{}));
struct bind_fields {
  template <class... F> void operator()(F&...) const {}
};
// A plain struct without bit-fields: every field can be read into.
template <class T>
concept reflectable_bindable =
    reflectable<T> &&
    !std::is_same_v<decltype(apply_fields(std::declval<T&>(), bind_fields{})), not_callable>;

template <class T> constexpr bool every_bit_valid();
template <class... T> constexpr bool all_every_bit_valid(type_list<T...>) {
  return (memcpy_safe<T>::value && ...);
}
template <class T> constexpr bool every_bit_valid() {
  if constexpr (std::is_same_v<T, bool>) return false;
  else if constexpr (std::is_arithmetic_v<T>) return true;
  else if constexpr (std::is_enum_v<T>) return fixed_enum<T>;
  else if constexpr (std::is_array_v<T>) return memcpy_safe<std::remove_extent_t<T>>::value;
  else if constexpr (is_std_array<T>) return memcpy_safe<typename T::value_type>::value;
  else if constexpr (!std::is_class_v<T> || !std::is_trivially_copyable_v<T> || own_serializer<T>)
    return false;
  else if constexpr (std::is_empty_v<T>) return true;
  else if constexpr (reflectable<T>) return all_every_bit_valid(field_types<T>{});
  else return false;
}
} // namespace detail

template <class T>
struct memcpy_safe : std::bool_constant<detail::every_bit_valid<std::remove_cv_t<T>>()> {};

// Types encoded as their bytes (a class with a serialize of its own keeps it).
template <class T>
concept trivially_encoded =
    std::is_trivially_copyable_v<T> && memcpy_safe<T>::value &&
    (!std::is_class_v<T> || detail::is_std_array<T> || !detail::own_serializer<T>);

namespace detail {
// Plain structs without a serialize: their bytes (every bit valid), or their fields.
template <class T>
concept raw_class = std::is_class_v<T> && trivially_encoded<T> && !own_serializer<T>;
template <class T>
concept fieldwise_class = reflectable_bindable<T> && !trivially_encoded<T> && !own_serializer<T>;

// queue and connection (coproc/queue.hpp): handles to descriptors and shared memory,
// which travel to a child only as a process's arguments (coproc/detail/travel.hpp).
template <class T> inline constexpr bool process_argument_only = false;

// Why a type cannot cross, found before cereal would fail deep inside with its own words.
enum class problem { none, pointer, process_handle, unfixed_enum, unchecked_class, no_serializer };
template <class T> constexpr problem problem_of();
template <class... T> constexpr problem first_problem(type_list<T...>) {
  problem p = problem::none;
  ((p = p == problem::none ? problem_of<T>() : p), ...);
  return p;
}
template <class T> constexpr problem problem_of() {
  using U = std::remove_cv_t<T>;
  if constexpr (std::is_reference_v<T> || std::is_pointer_v<U> || std::is_member_pointer_v<U> ||
                is_instance<U, std::basic_string_view> || is_span<U>)
    return problem::pointer;
  else if constexpr (process_argument_only<U>) return problem::process_handle;
  else if constexpr (std::is_enum_v<U>)
    return fixed_enum<U> ? problem::none : problem::unfixed_enum;
  else if constexpr (std::is_arithmetic_v<U>) return problem::none;
  else if constexpr (std::is_array_v<U>) return problem_of<std::remove_extent_t<U>>();
  else if constexpr (is_std_holder<U>) return problem_of<typename U::value_type>();
  else if constexpr (requires { typename held_types<U>::type; })
    return first_problem(typename held_types<U>::type{});
  else if constexpr (memcpy_safe<U>::value || own_serializer<U>) return problem::none;
  else if constexpr (reflectable_bindable<U>) return first_problem(field_types<U>{});
  else if constexpr (std::is_trivially_copyable_v<U> && (std::is_class_v<U> || std::is_union_v<U>))
    return problem::unchecked_class;
  else return problem::no_serializer;
}

// The compile-time errors, in the user's words; true if T can cross.
template <class T> constexpr bool check_crossing() {
  static_assert(!memcpy_safe<T>::value || std::is_trivially_copyable_v<T>,
                "coproc::wire: memcpy_safe<T> is true for a type that is not trivially copyable: "
                "its bytes are not its value.");
  constexpr problem p = problem_of<T>();
  static_assert(p != problem::pointer,
                "coproc::wire: pointers, references and views (std::string_view, std::span), and "
                "containers or structs holding them, cannot cross processes: they are addresses in "
                "this process's memory. Send the values (std::string, std::vector).");
  static_assert(
      p != problem::process_handle,
      "coproc::wire: a coproc::queue or coproc::connection cannot be encoded: it can only "
      "travel to a child as an argument of coproc::process, which takes its descriptors "
      "along (as Python's queues are shared only through inheritance). It cannot be put "
      "in a queue, sent on a connection or passed to a pool task.");
  static_assert(
      p != problem::unfixed_enum,
      "coproc::wire: an enum without a fixed underlying type cannot cross processes: only "
      "its enumerators' range is valid, which its bytes cannot be checked against. Give "
      "it one (enum e : int { ... }) or make it an enum class.");
  static_assert(
      p != problem::unchecked_class,
      "coproc::wire: a trivially copyable class that is not a plain struct (an aggregate "
      "without a base class, with at most 24 fields, none const, a reference or an empty "
      "struct) cannot be checked field by field, so its bytes could hold an invalid "
      "bool, enum or a pointer. Give it a cereal serialize(Archive&) member, or, if every "
      "bit pattern of it is a valid value, specialize coproc::wire::memcpy_safe<T> as "
      "std::true_type.");
  static_assert(p != problem::no_serializer,
                "coproc::wire: the type is not trivially copyable and has no cereal "
                "serialize(Archive&) member (nor save/load): cereal cannot encode it.");
  return p == problem::none;
}
} // namespace detail

// Whether values of T can cross processes (encode and decode compile).
template <class T>
concept serializable = detail::problem_of<T>() == detail::problem::none;

// Appends the encoding of value to out.
template <class T> void encode_into(output_buffer& out, const T& value) {
  if constexpr (!detail::check_crossing<T>()) {
    return; // the static_assert said why
  } else if constexpr (trivially_encoded<T>) {
    out.append(&value, sizeof(T));
  } else {
    output_archive ar(out);
    ar(value);
  }
}
template <class T> void encode_into(std::string& out, const T& value) {
  output_buffer buffer(out);
  encode_into(buffer, value);
}

template <class T> std::string encode(const T& value) {
  std::string out;
  encode_into(out, value);
  return out;
}

namespace detail {
// A std::string or a vector of numbers: [u64 count][the elements' bytes], copied in one go.
template <class T> inline constexpr bool bulk_decoded = std::is_same_v<T, std::string>;
template <class E>
inline constexpr bool bulk_decoded<std::vector<E>> =
    std::is_arithmetic_v<E> && !std::is_same_v<E, bool>;

// A fresh buffer of n bytes about to be written whole: transparent huge pages for it where
// it is large (lib/wire.cpp), so it costs one fault per 2 MiB instead of one per 4 KiB,
// which on these VMs is most of the cost of receiving a large value.
void advise_fresh(void* data, std::size_t n) noexcept;

// nullopt if the bytes are not one such value (the general path then says why).
template <class T> std::optional<T> decode_bulk(std::string_view bytes) {
  using E = typename T::value_type;
  std::uint64_t count;
  if (bytes.size() < sizeof count) return std::nullopt;
  std::memcpy(&count, bytes.data(), sizeof count);
  std::size_t n = bytes.size() - sizeof count;
  if (n % sizeof(E) != 0 || n / sizeof(E) != count) return std::nullopt;
  T value;
  value.reserve(n / sizeof(E));
  advise_fresh(value.data(), n);
  if constexpr (std::is_same_v<T, std::string>) {
    value.assign(bytes.data() + sizeof count, n);
  } else {
    value.resize(n / sizeof(E));
    if (n != 0) std::memcpy(value.data(), bytes.data() + sizeof count, n);
  }
  return value;
}
} // namespace detail

// Decodes exactly these bytes as one T.
template <class T> T decode(std::string_view bytes) {
  static_assert(std::is_default_constructible_v<T> || trivially_encoded<T>,
                "coproc::wire: a decoded type must be default constructible");
  if constexpr (!detail::check_crossing<T>()) {
    std::terminate(); // never compiled: the static_assert said why
  } else if constexpr (trivially_encoded<T>) {
    if (bytes.size() != sizeof(T))
      input_archive(bytes, typeid(T)).fail("expected " + std::to_string(sizeof(T)) + " bytes");
    // Trivially copyable types may lack a default constructor: copy into raw storage.
    alignas(T) unsigned char storage[sizeof(T)];
    std::memcpy(storage, bytes.data(), sizeof(T));
    return *std::launder(reinterpret_cast<T*>(storage));
  } else {
    if constexpr (detail::bulk_decoded<T>)
      if (auto value = detail::decode_bulk<T>(bytes)) return std::move(*value);
    input_archive ar(bytes, typeid(T));
    T value{};
    try {
      ar(value);
    } catch (const cereal::Exception& e) {
      ar.fail(e.what());
    } catch (const std::length_error& e) {
      ar.fail(e.what());
    }
    if (ar.remaining() != 0) ar.fail(std::to_string(ar.remaining()) + " trailing bytes");
    return value;
  }
}

} // namespace coproc::wire

namespace cereal {

template <class T>
  requires std::is_arithmetic_v<T>
void CEREAL_SAVE_FUNCTION_NAME(coproc::wire::output_archive& ar, const T& t) {
  ar.save_binary(std::addressof(t), sizeof(t));
}

template <class T>
  requires std::is_arithmetic_v<T>
void CEREAL_LOAD_FUNCTION_NAME(coproc::wire::input_archive& ar, T& t) {
  if constexpr (std::is_same_v<T, bool>) {
    unsigned char byte;
    ar.load_binary(&byte, 1);
    if (byte > 1) ar.fail("a bool must be 0 or 1");
    t = byte != 0;
  } else {
    ar.load_binary(std::addressof(t), sizeof(t));
  }
}

// The archive is a deduced parameter checked first, so probing raw_class with the probe
// archive never asks about raw_class itself (g++ checks constraints before conversions).
template <class Archive, class T>
  requires std::is_same_v<Archive, coproc::wire::output_archive> &&
           coproc::wire::detail::raw_class<T>
void CEREAL_SAVE_FUNCTION_NAME(Archive& ar, const T& t) {
  ar.save_binary(std::addressof(t), sizeof(t));
}

template <class Archive, class T>
  requires std::is_same_v<Archive, coproc::wire::input_archive> &&
           coproc::wire::detail::raw_class<T>
void CEREAL_LOAD_FUNCTION_NAME(Archive& ar, T& t) {
  ar.load_binary(std::addressof(t), sizeof(t));
}

// Plain structs with a field that not every byte fits: field by field, each checked.
template <class Archive, class T>
  requires std::is_same_v<Archive, coproc::wire::output_archive> &&
           coproc::wire::detail::fieldwise_class<T>
void CEREAL_SAVE_FUNCTION_NAME(Archive& ar, const T& t) {
  coproc::wire::detail::apply_fields(t, [&](const auto&... fields) { ar(fields...); });
}

template <class Archive, class T>
  requires std::is_same_v<Archive, coproc::wire::input_archive> &&
           coproc::wire::detail::fieldwise_class<T>
void CEREAL_LOAD_FUNCTION_NAME(Archive& ar, T& t) {
  coproc::wire::detail::apply_fields(t, [&](auto&... fields) { ar(fields...); });
}

// cereal's wrappers, also for the probe archive, so raw_class never claims them.
template <class Archive, class T>
  requires coproc::wire::detail::wire_archive<Archive>
void CEREAL_SERIALIZE_FUNCTION_NAME(Archive& ar, NameValuePair<T>& t) {
  ar(t.value);
}

template <class Archive, class T>
  requires coproc::wire::detail::wire_output_archive<Archive>
void CEREAL_SAVE_FUNCTION_NAME(Archive& ar, const SizeTag<T>& t) {
  ar(t.size);
}

template <class T> void CEREAL_LOAD_FUNCTION_NAME(coproc::wire::input_archive& ar, SizeTag<T>& t) {
  ar(t.size);
  // Each element takes at least one byte, so a larger size is a lie (and resizing to
  // it would exhaust memory before the read fails).
  if (static_cast<std::size_t>(t.size) > ar.remaining())
    ar.fail("a size of " + std::to_string(t.size) + " with " + std::to_string(ar.remaining()) +
            " bytes left");
}

template <class Archive, class T>
  requires coproc::wire::detail::wire_output_archive<Archive>
void CEREAL_SAVE_FUNCTION_NAME(Archive& ar, const BinaryData<T>& bd) {
  ar.save_binary(bd.data, static_cast<std::size_t>(bd.size));
}

// cereal reads arrays of arithmetic types, bool included, as one block: check the bools.
template <class T>
void CEREAL_LOAD_FUNCTION_NAME(coproc::wire::input_archive& ar, BinaryData<T>& bd) {
  if constexpr (std::is_same_v<std::remove_cv_t<std::remove_pointer_t<T>>, bool>)
    ar.load_bools(bd.data, static_cast<std::size_t>(bd.size));
  else ar.load_binary(bd.data, static_cast<std::size_t>(bd.size));
}

} // namespace cereal

CEREAL_REGISTER_ARCHIVE(coproc::wire::output_archive)
CEREAL_REGISTER_ARCHIVE(coproc::wire::input_archive)
CEREAL_SETUP_ARCHIVE_TRAITS(coproc::wire::input_archive, coproc::wire::output_archive)
