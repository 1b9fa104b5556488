#include <coproc/wire.hpp>

#include <doctest/doctest.h>

#include "support/checks.hpp"
#include "support/person.hpp"

#include <array>
#include <cstdint>
#include <deque>
#include <list>
#include <map>
#include <optional>
#include <random>
#include <set>
#include <string>
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

// Checks that decoding `bytes` as T fails with a coproc::error naming the type.
template <class T> void check_malformed(const std::string& bytes, const char* type_name) {
  try {
    (void)wire::decode<T>(bytes);
    FAIL("decoding " << type_name << " from " << bytes.size() << " bytes did not throw");
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
  CHECK(round_trip(std::vector<std::string>{"a", "", "ccc"}) == std::vector<std::string>{"a", "", "ccc"});
  CHECK(round_trip(std::vector<bool>{true, false, true}) == std::vector<bool>{true, false, true});
  CHECK(round_trip(std::deque<int>{4, 5}) == std::deque<int>{4, 5});
  CHECK(round_trip(std::list<std::string>{"x", "y"}) == std::list<std::string>{"x", "y"});
  std::map<std::string, int> m{{"one", 1}, {"two", 2}};
  CHECK(round_trip(m) == m);
  std::unordered_map<int, std::string> um{{1, "a"}, {2, "b"}};
  CHECK(round_trip(um) == um);
  CHECK(round_trip(std::set<int>{3, 1, 2}) == std::set<int>{1, 2, 3});
  CHECK(round_trip(std::unordered_set<std::string>{"p", "q"}) == std::unordered_set<std::string>{"p", "q"});
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
  check_malformed<std::variant<int, std::string>>(wire::encode(std::int32_t{7}) + "abcd", "variant");
}

TEST_CASE("every prefix and random corruption of a frame fail cleanly") {
  std::map<std::string, std::vector<person>> value{
      {"team", {{"Ada", 36, {"a", "b"}}, {"Alan", 41, {}}}}, {"empty", {}}};
  auto bytes = wire::encode(value);
  for (std::size_t n = 0; n < bytes.size(); ++n)
    CHECK_THROWS_AS(wire::decode<decltype(value)>(std::string_view(bytes).substr(0, n)), coproc::error);
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
