#include <coproc/wire.hpp>

#include <doctest/doctest.h>

#include "support/checks.hpp"
#include "support/person.hpp"

#include <array>
#include <cstdint>
#include <cstring>
#include <deque>
#include <list>
#include <map>
#include <optional>
#include <random>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <tuple>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <variant>
#include <vector>

namespace wire = coproc::wire;

namespace {

template <class T> T round_trip(const T& value) { return wire::decode<T>(wire::encode(value)); }

enum class color : std::uint8_t { red = 1, green = 2 };

using coproc_test::person;

// Plain trivially copyable structs: no serialize needed.
struct point {
  double x, y;
  int id;
  bool operator==(const point&) const = default;
};
struct no_default {
  explicit no_default(int v) : value(v) {}
  int value;
};

// Trivially copyable but with its own serialize: inside containers cereal uses it.
struct half_saved {
  int kept = 0;
  int dropped = 0;
  template <class Archive> void serialize(Archive& ar) { ar(kept); }
};

// Trivially copyable structs whose bytes are not all valid values: decoding checks them.
struct flagged {
  int id;
  bool on;
  bool operator==(const flagged&) const = default;
};
struct flag_set {
  bool flags[4];
  std::int16_t n;
};
struct nested {
  point p;
  flagged f;
  std::optional<int> maybe;
  std::variant<int, float> either;
};
// A fixed underlying type makes every value of it a valid enum value: bytes suffice.
struct tagged {
  color c;
  std::uint32_t n;
  bool operator==(const tagged&) const = default;
};

// A bool's byte, read without loading an invalid bool.
unsigned char bool_byte(const bool& b) {
  unsigned char c;
  std::memcpy(&c, &b, 1);
  return c;
}

// Sets each byte of value's frame in turn to `bad` and decodes it: returns how many were
// refused; every frame that decodes is passed to check.
template <class T, class Check> int corrupt_each_byte(const T& value, char bad, Check check) {
  auto bytes = wire::encode(value);
  int refused = 0;
  for (std::size_t i = 0; i < bytes.size(); ++i) {
    auto b = bytes;
    b[i] = bad;
    try {
      check(wire::decode<T>(b));
    } catch (const coproc::error&) {
      ++refused;
    }
  }
  return refused;
}

// Checks that decoding `bytes` as T fails with a coproc::error naming the type.
template <class T> void check_malformed(const std::string& bytes, const char* type_name) {
  try {
    (void)wire::decode<T>(bytes);
    FAIL("decoding " << std::string(type_name) << " from " << bytes.size()
                     << " bytes did not throw");
  } catch (const coproc::error& e) {
    std::string what = e.what();
    CHECK(what.find("coproc::wire: malformed") != std::string::npos);
    CHECK(what.find(type_name) != std::string::npos);
    CHECK(what.find(std::to_string(bytes.size()) + " bytes") != std::string::npos);
  }
}

} // namespace

TEST_CASE("arithmetic types and enums round-trip as their bytes") {
  CHECK(round_trip(42) == 42);
  CHECK(round_trip(-7LL) == -7LL);
  CHECK(round_trip(3.25) == 3.25);
  CHECK(round_trip('x') == 'x');
  CHECK(round_trip(true) == true);
  CHECK(round_trip(std::uint64_t{1} << 63) == std::uint64_t{1} << 63);
  CHECK(round_trip(color::green) == color::green);
  CHECK(wire::encode(42).size() == sizeof(int));
  CHECK(wire::encode(3.25).size() == sizeof(double));
}

TEST_CASE("strings round-trip including empty and embedded NULs and large ones") {
  CHECK(round_trip(std::string()) == "");
  std::string nul("a\0b\0", 4);
  CHECK(round_trip(nul) == nul);
  std::string big(1 << 20, 'z');
  big[12345] = 'q';
  CHECK(round_trip(big) == big);
}

TEST_CASE("standard containers round-trip") {
  CHECK(round_trip(std::vector<int>{1, 2, 3}) == std::vector<int>{1, 2, 3});
  CHECK(round_trip(std::vector<int>{}).empty());
  CHECK(round_trip(std::vector<std::string>{"a", "", "ccc"}) ==
        std::vector<std::string>{"a", "", "ccc"});
  CHECK(round_trip(std::vector<bool>{true, false, true}) == std::vector<bool>{true, false, true});
  CHECK(round_trip(std::deque<int>{4, 5}) == std::deque<int>{4, 5});
  CHECK(round_trip(std::list<std::string>{"x", "y"}) == std::list<std::string>{"x", "y"});
  std::map<std::string, int> m{{"one", 1}, {"two", 2}};
  CHECK(round_trip(m) == m);
  std::unordered_map<int, std::string> um{{1, "a"}, {2, "b"}};
  CHECK(round_trip(um) == um);
  CHECK(round_trip(std::set<int>{3, 1, 2}) == std::set<int>{1, 2, 3});
  CHECK(round_trip(std::unordered_set<std::string>{"p", "q"}) ==
        std::unordered_set<std::string>{"p", "q"});
  CHECK(round_trip(std::array<int, 3>{7, 8, 9}) == std::array<int, 3>{7, 8, 9});
  std::array<std::string, 2> as{"left", "right"};
  CHECK(round_trip(as) == as);
}

TEST_CASE("pair tuple optional and variant round-trip") {
  auto p = std::pair<std::string, std::string>("type", "message");
  CHECK(round_trip(p) == p);
  CHECK(round_trip(std::pair<int, double>(1, 2.5)) == std::pair<int, double>(1, 2.5));
  auto t = std::tuple<int, std::string, std::vector<int>>(1, "two", {3});
  CHECK(round_trip(t) == t);
  CHECK(round_trip(std::tuple<>()) == std::tuple<>());
  CHECK(round_trip(std::optional<std::string>()) == std::nullopt);
  CHECK(round_trip(std::optional<std::string>("here")) == std::optional<std::string>("here"));
  using v = std::variant<int, std::string, std::vector<double>>;
  CHECK(round_trip(v(5)) == v(5));
  CHECK(round_trip(v(std::string("s"))) == v(std::string("s")));
  CHECK(round_trip(v(std::vector<double>{1.5})) == v(std::vector<double>{1.5}));
}

TEST_CASE("nested types round-trip") {
  std::map<std::string, std::vector<std::pair<int, std::optional<std::string>>>> nested{
      {"a", {{1, "x"}, {2, std::nullopt}}}, {"b", {}}};
  CHECK(round_trip(nested) == nested);
}

TEST_CASE("a user struct with serialize round-trips alone and in containers") {
  person ada{"Ada", 36, {"math", "engines"}};
  CHECK(round_trip(ada) == ada);
  std::vector<person> people{ada, {"Alan", 41, {}}};
  CHECK(round_trip(people) == people);
  std::map<int, person> by_id{{1, ada}};
  CHECK(round_trip(by_id) == by_id);
}

TEST_CASE("trivially copyable structs need no serialize") {
  point p{1.5, -2.5, 7};
  CHECK(wire::encode(p).size() == sizeof(point));
  CHECK(round_trip(p) == p);
  std::vector<point> ps{{1, 2, 3}, {4, 5, 6}};
  CHECK(round_trip(ps) == ps);
  std::map<std::string, point> named{{"origin", {0, 0, 0}}};
  CHECK(round_trip(named) == named);
  CHECK(round_trip(std::optional<point>(p)) == std::optional<point>(p));
  // Without a default constructor too.
  CHECK(round_trip(no_default(9)).value == 9);
}

TEST_CASE("a trivially copyable struct keeps its own serialize inside containers") {
  std::vector<half_saved> v{{1, 2}};
  auto back = round_trip(v);
  REQUIRE(back.size() == 1);
  CHECK(back[0].kept == 1);
  CHECK(back[0].dropped == 0);
}

TEST_CASE("encode_into appends to what is there") {
  std::string out = "head";
  wire::encode_into(out, std::string("tail"));
  CHECK(out.substr(0, 4) == "head");
  CHECK(wire::decode<std::string>(std::string_view(out).substr(4)) == "tail");
}

TEST_CASE(
    "an output buffer moves a large encoding to its spill area and back when it outgrows it") {
  std::vector<int> small{1, 2, 3};
  std::vector<int> large(1000, 7);
  large[999] = 9;
  auto small_bytes = wire::encode(small), large_bytes = wire::encode(large);
  std::vector<char> area(6000, '.');
  struct test_area : wire::output_buffer::spill_area {
    char* at;
    std::size_t bytes = 0;
    int asked = 0;
    explicit test_area(char* at) : at(at) {}
    std::pair<char*, std::size_t> room() noexcept override {
      ++asked;
      return {at, bytes};
    }
  } target(area.data());
  auto spill = [&](std::string& s, wire::output_buffer& b, std::size_t room) {
    target.bytes = room;
    target.asked = 0;
    b.spill_to(target, s.size(), 100);
  };

  // Below the threshold: all in the string.
  std::string s = "head";
  {
    wire::output_buffer b(s);
    spill(s, b, area.size());
    wire::encode_into(b, small);
    CHECK(b.spilled() == 0);
    CHECK(b.size() == 4 + small_bytes.size());
    CHECK(target.asked == 0); // the area is asked for only when it is needed
  }
  CHECK(s == "head" + small_bytes);

  // Above it: the bytes so far and the rest go to the area; positions count on, and a
  // placeholder written before the spill is overwritten where it went.
  s = "head";
  {
    wire::output_buffer b(s);
    spill(s, b, area.size());
    b.append_zeros(8);
    wire::encode_into(b, large);
    std::uint64_t n = b.size() - 4 - 8;
    b.overwrite(4, &n, sizeof n);
    CHECK(b.spilled() == 8 + large_bytes.size());
    CHECK(b.size() == 4 + 8 + large_bytes.size());
    CHECK(target.asked == 1);
  }
  CHECK(s == "head");
  std::uint64_t n;
  std::memcpy(&n, area.data(), sizeof n);
  CHECK(n == large_bytes.size());
  CHECK(std::string(area.data() + 8, large_bytes.size()) == large_bytes);
  CHECK(wire::decode<std::vector<int>>(std::string_view(area.data() + 8, n)) == large);

  // An area too small for what comes: everything is back in the string, in order.
  for (std::size_t room :
       {std::size_t(50), std::size_t(200), std::size_t(4000), std::size_t(4100)}) {
    CAPTURE(room);
    s = "head";
    wire::output_buffer b(s);
    spill(s, b, room);
    wire::encode_into(b, small);
    wire::encode_into(b, large);
    wire::encode_into(b, large);
    CHECK(b.spilled() == 0);
    CHECK(s == "head" + small_bytes + large_bytes + large_bytes);
  }

  // Dropped: what went to the area is forgotten, the string takes what follows.
  s = "head";
  wire::output_buffer b(s);
  spill(s, b, area.size());
  wire::encode_into(b, large);
  CHECK(b.spilled() == large_bytes.size());
  b.drop_spill();
  CHECK(b.spilled() == 0);
  s.resize(4);
  wire::encode_into(b, small);
  CHECK(s == "head" + small_bytes);
}

TEST_CASE("a truncated frame is a coproc error naming the type and size") {
  check_malformed<int>(std::string(3, '\0'), "int");
  check_malformed<int>(std::string(5, '\0'), "int");
  check_malformed<point>(std::string(sizeof(point) - 1, '\0'), "point");
  auto s = wire::encode(std::string("hello"));
  check_malformed<std::string>(s.substr(0, s.size() - 1), "basic_string");
  check_malformed<std::string>(s.substr(0, 3), "basic_string");
  check_malformed<std::string>("", "basic_string");
  auto pr = wire::encode(person{"Ada", 36, {"x"}});
  check_malformed<person>(pr.substr(0, pr.size() - 2), "person");
}

TEST_CASE("trailing bytes are a coproc error") {
  check_malformed<std::string>(wire::encode(std::string("abc")) + "X", "basic_string");
  check_malformed<std::vector<int>>(wire::encode(std::vector<int>{1}) + "\x01", "vector");
}

TEST_CASE("a length larger than the frame is refused before allocating") {
  std::string lie;
  std::uint64_t huge = std::uint64_t{1} << 60;
  lie.append(reinterpret_cast<const char*>(&huge), 8);
  lie.append("abc");
  check_malformed<std::string>(lie, "basic_string");
  check_malformed<std::vector<int>>(lie, "vector");
  check_malformed<std::map<int, int>>(lie, "map");
}

TEST_CASE("a bool that is neither 0 nor 1 and a bad variant index are refused") {
  check_malformed<std::vector<bool>>(wire::encode(std::vector<std::uint8_t>{2}), "vector");
  check_malformed<std::optional<int>>(std::string("\x05\x00\x00\x00\x00", 5), "optional");
  check_malformed<std::variant<int, std::string>>(wire::encode(std::int32_t{7}) + "abcd",
                                                  "variant");
}

TEST_CASE("a bool byte other than 0 or 1 is refused alone and in plain structs and arrays") {
  check_malformed<bool>("\x07", "bool");
  check_malformed<bool>("\x02", "bool");
  CHECK(wire::decode<bool>(std::string(1, '\x01')) == true);
  CHECK(wire::decode<bool>(std::string(1, '\x00')) == false);

  std::vector<flagged> fs{{1, true}, {2, false}};
  CHECK(round_trip(fs) == fs);
  int refused = corrupt_each_byte(fs, 7, [](const std::vector<flagged>& v) {
    for (const auto& f : v) CHECK(bool_byte(f.on) <= 1);
  });
  CHECK(refused >= 2); // at least the two bools

  flag_set s{{true, false, true, false}, 5};
  auto back = round_trip(s);
  CHECK(std::memcmp(back.flags, s.flags, sizeof s.flags) == 0);
  CHECK(back.n == 5);
  refused = corrupt_each_byte(s, 7, [](const flag_set& v) {
    for (const bool& b : v.flags) CHECK(bool_byte(b) <= 1);
  });
  CHECK(refused == 4); // exactly the bools: the int16 takes any bytes

  std::array<bool, 3> ab{true, false, true};
  CHECK(round_trip(ab) == ab);
  refused = corrupt_each_byte(ab, 7, [](const std::array<bool, 3>& v) {
    for (const bool& b : v) CHECK(bool_byte(b) <= 1);
  });
  CHECK(refused == 3);
}

TEST_CASE("an optional flag other than 0 or 1 and a variant index out of range are refused") {
  // optional<int> and variant<int, float> are trivially copyable: their bytes hold a flag
  // and an index that must be checked.
  CHECK(round_trip(std::optional<int>(5)) == std::optional<int>(5));
  CHECK(round_trip(std::optional<int>()) == std::nullopt);
  CHECK(corrupt_each_byte(std::optional<int>(5), 9, [](const std::optional<int>&) {}) >= 1);
  CHECK(corrupt_each_byte(std::optional<int>(), 9, [](const std::optional<int>&) {}) >= 1);

  using either = std::variant<int, float>;
  CHECK(round_trip(either(2.5f)) == either(2.5f));
  int refused = corrupt_each_byte(either(3), 127, [](const either& v) {
    REQUIRE(v.index() < 2);
    std::visit([](auto x) { CHECK(x == x); }, v);
  });
  CHECK(refused >= 1);
}

TEST_CASE("a plain struct holding bools optionals and variants is checked field by field") {
  nested n{{1, 2, 3}, {4, true}, 5, 6.5f};
  auto back = round_trip(n);
  CHECK(back.p == n.p);
  CHECK(back.f == n.f);
  CHECK(back.maybe == n.maybe);
  CHECK(back.either == n.either);
  int refused = corrupt_each_byte(std::vector<nested>{n, n}, 9, [](const std::vector<nested>& v) {
    for (const auto& x : v) {
      CHECK(bool_byte(x.f.on) <= 1);
      REQUIRE(x.either.index() < 2);
    }
  });
  CHECK(refused >= 2 * 3); // each element's bool, optional flag and variant index
}

TEST_CASE("enums with a fixed underlying type and structs of them keep the fast path") {
  tagged t{color::green, 7};
  CHECK(wire::encode(t).size() == sizeof(tagged));
  CHECK(round_trip(t) == t);
  // Any value of the underlying type is a valid value of such an enum.
  CHECK(corrupt_each_byte(t, 9, [](const tagged&) {}) == 0);
  CHECK(static_cast<int>(wire::decode<color>(std::string(1, '\x09'))) == 9);
  std::vector<tagged> ts{t, {color::red, 1}};
  CHECK(round_trip(ts) == ts);
}

TEST_CASE("every prefix and random corruption of a frame fail cleanly") {
  std::map<std::string, std::vector<person>> value{
      {"team", {{"Ada", 36, {"a", "b"}}, {"Alan", 41, {}}}}, {"empty", {}}};
  auto bytes = wire::encode(value);
  for (std::size_t n = 0; n < bytes.size(); ++n)
    CHECK_THROWS_AS(wire::decode<decltype(value)>(std::string_view(bytes).substr(0, n)),
                    coproc::error);
  // Flipped bytes either still decode or are a coproc::error: never a crash (ASan runs this).
  std::mt19937 rng(12345);
  int refused = 0;
  for (int i = 0; i < 2000; ++i) {
    auto bad = bytes;
    for (int k = 0; k < 3; ++k) bad[rng() % bad.size()] = static_cast<char>(rng());
    try {
      (void)wire::decode<decltype(value)>(bad);
    } catch (const coproc::error&) {
      ++refused;
    }
  }
  CHECK(refused > 0);
}

TEST_CASE("random corruption of bools optionals variants and enums in structs never reaches an "
          "invalid value") {
  using item =
      std::tuple<bool, std::optional<bool>, std::variant<int, bool, flagged>, nested, tagged>;
  std::vector<item> value{
      {true,
       false,
       flagged{1, true},
       nested{{1, 2, 3}, {4, false}, std::nullopt, 1.5f},
       {color::red, 2}},
      {false, std::nullopt, true, nested{{4, 5, 6}, {7, true}, 8, 9}, {color::green, 3}}};
  auto bytes = wire::encode(value);
  // Each decoded value is read in full: UBSan reports a load of an invalid bool.
  auto check = [](const std::vector<item>& v) {
    for (const auto& [b, ob, var, n, t] : v) {
      CHECK(bool_byte(b) <= 1);
      if (ob) CHECK(bool_byte(*ob) <= 1);
      REQUIRE(var.index() < 3);
      std::visit(
          [](const auto& x) {
            if constexpr (std::is_same_v<std::decay_t<decltype(x)>, bool>) CHECK(bool_byte(x) <= 1);
            if constexpr (std::is_same_v<std::decay_t<decltype(x)>, flagged>)
              CHECK(bool_byte(x.on) <= 1);
          },
          var);
      CHECK(bool_byte(n.f.on) <= 1);
      REQUIRE(n.either.index() < 2);
      CHECK(n.maybe.value_or(0) == n.maybe.value_or(0));
      CHECK(t.n == t.n);
    }
  };
  check(wire::decode<std::vector<item>>(bytes));
  std::mt19937 rng(54321);
  int refused = 0;
  for (int i = 0; i < 3000; ++i) {
    auto bad = bytes;
    for (int k = 0; k < 2; ++k)
      bad[rng() % bad.size()] = static_cast<char>(rng() % 4 == 0 ? rng() : rng() % 3);
    try {
      check(wire::decode<std::vector<item>>(bad));
    } catch (const coproc::error&) {
      ++refused;
    }
  }
  CHECK(refused > 0);
}

namespace {
struct holds_pointer {
  const char* text;
  int n;
};
struct holds_view {
  std::string_view name;
};
struct holds_holder {
  point p;
  holds_pointer inner;
};
enum loose { loose_a, loose_b }; // no fixed underlying type
struct holds_loose {
  loose l;
};
class opaque { // trivially copyable, not an aggregate: its fields cannot be seen
public:
  int get() const { return v_; }

private:
  int v_ = 0;
};
struct derived_point : point {
  int extra;
};
struct message { // C arrays and bit-fields of every-bit-valid types: bytes
  char text[16];
  std::uint8_t kind : 3;
  std::uint8_t level : 5;
  double grid[2][3];
};
struct bool_bits { // a bool bit-field cannot be read into field by field
  bool on : 1;
  int n;
};
struct nothing {};
struct with_empty {
  nothing none;
  int n;
};
struct tree { // recursive, with its own serialize
  std::vector<tree> kids;
  int value = 0;
  template <class Archive> void serialize(Archive& ar) { ar(kids, value); }
};
} // namespace

// A trivially copyable class that cannot be checked opts in to its bytes.
template <> struct coproc::wire::memcpy_safe<no_default> : std::true_type {};

TEST_CASE("pointers views and unchecked bytes are refused at compile time") {
  // What encode and decode refuse with a static_assert that says why.
  static_assert(!wire::serializable<int*>);
  static_assert(!wire::serializable<const char*>);
  static_assert(!wire::serializable<int point::*>);
  static_assert(!wire::serializable<int&>);
  static_assert(!wire::serializable<std::string_view>);
  static_assert(!wire::serializable<std::span<int>>);
  static_assert(!wire::serializable<std::span<const char, 4>>);
  static_assert(!wire::serializable<std::vector<std::string_view>>);
  static_assert(!wire::serializable<std::map<std::string, std::string_view>>);
  static_assert(!wire::serializable<std::optional<int*>>);
  static_assert(!wire::serializable<std::variant<int, const char*>>);
  static_assert(!wire::serializable<std::tuple<int, std::span<int>>>);
  static_assert(!wire::serializable<std::array<void*, 2>>);
  static_assert(!wire::serializable<holds_pointer>);
  static_assert(!wire::serializable<holds_view>);
  static_assert(!wire::serializable<holds_holder>);
  static_assert(!wire::serializable<std::vector<holds_pointer>>);
  static_assert(!wire::serializable<loose>);
  static_assert(!wire::serializable<holds_loose>);
  static_assert(!wire::serializable<opaque>);
  static_assert(!wire::serializable<derived_point>);
  static_assert(!wire::serializable<bool_bits>);
  static_assert(!wire::serializable<with_empty>);
  static_assert(!wire::serializable<std::pair<int, std::string_view>>);
  // What crosses.
  static_assert(wire::serializable<int>);
  static_assert(wire::serializable<bool>);
  static_assert(wire::serializable<color>);
  static_assert(wire::serializable<std::string>);
  static_assert(wire::serializable<person>);
  static_assert(wire::serializable<std::vector<person>>);
  static_assert(wire::serializable<point>);
  static_assert(wire::serializable<flagged>);
  static_assert(wire::serializable<nested>);
  static_assert(wire::serializable<flag_set>);
  static_assert(wire::serializable<no_default>);
  static_assert(wire::serializable<half_saved>);
  static_assert(wire::serializable<std::map<std::string, std::optional<std::variant<int, point>>>>);
  static_assert(wire::serializable<tree>);
  static_assert(wire::serializable<std::vector<tree>>);
  // Which take the memcpy fast path: every bit pattern valid.
  static_assert(wire::trivially_encoded<int>);
  static_assert(wire::trivially_encoded<double>);
  static_assert(wire::trivially_encoded<std::byte>);
  static_assert(wire::trivially_encoded<color>);
  static_assert(wire::trivially_encoded<std::array<char, 65536>>);
  static_assert(wire::trivially_encoded<point>);
  static_assert(wire::trivially_encoded<tagged>);
  static_assert(wire::trivially_encoded<no_default>);
  static_assert(wire::trivially_encoded<message>);
  static_assert(wire::trivially_encoded<std::array<std::array<std::uint16_t, 4>, 2>>);
  static_assert(!wire::trivially_encoded<bool>);
  static_assert(!wire::trivially_encoded<std::array<bool, 2>>);
  static_assert(!wire::trivially_encoded<flagged>);
  static_assert(!wire::trivially_encoded<flag_set>);
  static_assert(!wire::trivially_encoded<nested>);
  static_assert(!wire::trivially_encoded<std::optional<int>>);
  static_assert(!wire::trivially_encoded<std::variant<int, float>>);
  static_assert(!wire::trivially_encoded<half_saved>); // its serialize decides
  CHECK(wire::encode(half_saved{1, 2}).size() == sizeof(int));
  message m{"hello", 5, 17, {{1, 2, 3}, {4, 5, 6}}};
  CHECK(wire::encode(m).size() == sizeof(message));
  auto back = round_trip(m);
  CHECK(std::string(back.text) == "hello");
  CHECK(int(back.kind) == 5);
  CHECK(int(back.level) == 17);
  CHECK(back.grid[1][2] == 6);
  auto t = round_trip(tree{{tree{{}, 1}, tree{{tree{{}, 3}}, 2}}, 0});
  REQUIRE(t.kids.size() == 2);
  CHECK(t.kids[1].kids[0].value == 3);
}
