// coproc/wire.hpp — how values cross process boundaries (pool tasks, queues, pipes).
//
// Trivially copyable types are copied as their bytes. Everything else goes through
// cereal with coproc's own binary archives: arithmetic types, enums, std::string, the
// standard containers, pair/tuple/optional/variant, and user types with a cereal
// serialize(Archive&) member (or save/load). A trivially copyable class needs no
// serialize, also inside containers (where one that has a serialize keeps using it).
// Pointers are refused: their values mean nothing in another process. The bytes are
// native (endianness, sizes, layout): a format between processes of one program, not
// for files or other machines.
//
// Decoding never trusts its input: a truncated frame, trailing bytes, a length larger
// than the bytes that follow, a bool that is neither 0 nor 1 or a bad variant index is
// a coproc::error, never undefined behaviour. A size is only believed if that many
// bytes could follow, so a container of empty elements longer than its frame is refused.
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
#include <cstring>
#include <string>
#include <string_view>
#include <type_traits>
#include <typeinfo>

namespace coproc::wire {

class output_archive : public cereal::OutputArchive<output_archive, cereal::AllowEmptyClassElision> {
public:
  explicit output_archive(std::string& out) : OutputArchive(this), out_(out) {}
  void save_binary(const void* data, std::size_t size) {
    if (size != 0) out_.append(static_cast<const char*>(data), size); // data may be null
  }

private:
  std::string& out_;
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
  std::size_t remaining() const noexcept { return bytes_.size() - pos_; }
  [[noreturn]] void fail(const std::string& why) const;

private:
  std::string_view bytes_;
  std::size_t pos_ = 0;
  const std::type_info& type_;
};

// Types encoded as their bytes.
template <class T>
concept trivially_encoded = std::is_trivially_copyable_v<T> && !std::is_pointer_v<T> &&
                            !std::is_member_pointer_v<T>;

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

// A trivially copyable class that nobody serializes (a plain struct), inside a container:
// its bytes. Classes with a serialize/save of their own (cereal's wrappers such as
// NameValuePair and MapItem, std::array, user types) keep it.
template <class T>
concept raw_class = std::is_class_v<T> && trivially_encoded<T> &&
                    cereal::traits::detail::count_output_serializers<T, probe_archive>::value == 0;
} // namespace detail

// Appends the encoding of value to out.
template <class T> void encode_into(std::string& out, const T& value) {
  static_assert(!std::is_pointer_v<T>, "coproc::wire: pointers cannot cross processes");
  if constexpr (trivially_encoded<T>) {
    out.append(reinterpret_cast<const char*>(&value), sizeof(T));
  } else {
    output_archive ar(out);
    ar(value);
  }
}

template <class T> std::string encode(const T& value) {
  std::string out;
  encode_into(out, value);
  return out;
}

// Decodes exactly these bytes as one T.
template <class T> T decode(std::string_view bytes) {
  static_assert(std::is_default_constructible_v<T> || trivially_encoded<T>,
                "coproc::wire: a decoded type must be default constructible");
  if constexpr (trivially_encoded<T>) {
    if (bytes.size() != sizeof(T))
      input_archive(bytes, typeid(T)).fail("expected " + std::to_string(sizeof(T)) + " bytes");
    // Trivially copyable types may lack a default constructor: copy into raw storage.
    alignas(T) unsigned char storage[sizeof(T)];
    std::memcpy(storage, bytes.data(), sizeof(T));
    return *std::launder(reinterpret_cast<T*>(storage));
  } else {
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
  requires std::is_same_v<Archive, coproc::wire::output_archive> && coproc::wire::detail::raw_class<T>
void CEREAL_SAVE_FUNCTION_NAME(Archive& ar, const T& t) {
  ar.save_binary(std::addressof(t), sizeof(t));
}

template <class Archive, class T>
  requires std::is_same_v<Archive, coproc::wire::input_archive> && coproc::wire::detail::raw_class<T>
void CEREAL_LOAD_FUNCTION_NAME(Archive& ar, T& t) {
  ar.load_binary(std::addressof(t), sizeof(t));
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

template <class T> void CEREAL_LOAD_FUNCTION_NAME(coproc::wire::input_archive& ar, BinaryData<T>& bd) {
  ar.load_binary(bd.data, static_cast<std::size_t>(bd.size));
}

} // namespace cereal

CEREAL_REGISTER_ARCHIVE(coproc::wire::output_archive)
CEREAL_REGISTER_ARCHIVE(coproc::wire::input_archive)
CEREAL_SETUP_ARCHIVE_TRAITS(coproc::wire::input_archive, coproc::wire::output_archive)
