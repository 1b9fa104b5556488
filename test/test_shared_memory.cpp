#include <coproc/process.hpp>
#include <coproc/shared_memory.hpp>
#include <coproc/wire.hpp>

#include <doctest/doctest.h>

#include "support/checks.hpp"

#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <set>
#include <stdexcept>
#include <string>
#include <system_error>

using coproc_test::run;

namespace {

bool in_dev_shm(const std::string& name) {
  struct stat st;
  return ::stat(("/dev/shm/" + name).c_str(), &st) == 0;
}

// /dev/shm entries that this test process's blocks could have left. ctest runs the other
// cases of this file at the same time, so only names carrying our pid count: unique()'s
// suffix and the generated names' "coproc_<pid>_" prefix.
std::set<std::string> own_entries() {
  std::set<std::string> out;
  DIR* dir = ::opendir("/dev/shm");
  if (!dir) return out;
  const std::string pid = std::to_string(::getpid());
  const std::string generated = "coproc_" + pid + "_", suffix = "_" + pid;
  while (auto* entry = ::readdir(dir)) {
    std::string name = entry->d_name;
    bool ours = name.rfind(generated, 0) == 0 ||
                (name.rfind("test_shm_", 0) == 0 && name.size() > suffix.size() &&
                 name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0);
    if (ours) out.insert(name);
  }
  ::closedir(dir);
  return out;
}

std::string unique(const std::string& stem) {
  return "test_shm_" + stem + "_" + std::to_string(::getpid());
}

template <class E, class F> E error_of(F&& f) {
  try {
    f();
  } catch (const E& e) {
    return e;
  }
  FAIL("no exception of the expected type");
  throw std::logic_error("unreachable");
}

} // namespace

static_assert(!coproc::wire::serializable<coproc::shared_memory>,
              "a block is not a pool task argument");

TEST_CASE("a created block has exactly its size, is zeroed and is attached by name") {
  auto before = own_entries();
  {
    const auto name = unique("basic");
    coproc::shared_memory created(name, 1000);
    CHECK(created.name() == name);
    CHECK(created.buf().size() == 1000);
    CHECK(in_dev_shm(name));
    CHECK(std::all_of(created.buf().begin(), created.buf().end(),
                      [](std::byte b) { return b == std::byte{0}; }));
    std::memcpy(created.buf().data(), "hello", 5);
    auto attached = coproc::shared_memory::attach(name);
    CHECK(attached.name() == name);
    CHECK(attached.buf().size() == 1000);
    CHECK(std::memcmp(attached.buf().data(), "hello", 5) == 0);
    attached.buf()[999] = std::byte{7};
    CHECK(created.buf()[999] == std::byte{7});
  }
  CHECK(own_entries() == before);
}

TEST_CASE("an empty name makes a generated unused one") {
  auto before = own_entries();
  {
    coproc::shared_memory a("", 64), b("", 64);
    CHECK_FALSE(a.name().empty());
    CHECK(a.name() != b.name());
    CHECK(a.name().find('/') == std::string::npos);
    CHECK(in_dev_shm(a.name()));
    auto again = coproc::shared_memory::attach(a.name());
    CHECK(again.buf().size() == 64);
  }
  CHECK(own_entries() == before);
}

TEST_CASE(
    "creating an existing name is EEXIST and attaching a missing one ENOENT, naming the block") {
  const auto name = unique("errors");
  coproc::shared_memory created(name, 10);
  auto exists = error_of<std::system_error>([&] { coproc::shared_memory again(name, 10); });
  CHECK(exists.code().value() == EEXIST);
  CHECK(std::string(exists.what()).find(name) != std::string::npos);
  const auto missing_name = unique("missing");
  auto missing =
      error_of<std::system_error>([&] { (void)coproc::shared_memory::attach(missing_name); });
  CHECK(missing.code().value() == ENOENT);
  CHECK(std::string(missing.what()).find(missing_name) != std::string::npos);
  CHECK_THROWS_AS(coproc::shared_memory(unique("zero"), 0), std::invalid_argument);
  CHECK_THROWS_AS(coproc::shared_memory("a/b", 10), std::invalid_argument);
  CHECK_THROWS_AS((void)coproc::shared_memory::attach(""), std::invalid_argument);
}

TEST_CASE("unlink removes the name at once and a second unlink is ENOENT") {
  const auto name = unique("unlink");
  coproc::shared_memory created(name, 4096);
  auto copy = created;
  created.unlink();
  CHECK_FALSE(in_dev_shm(name));
  CHECK_THROWS_AS((void)coproc::shared_memory::attach(name), std::system_error);
  copy.buf()[0] = std::byte{1}; // the mapping stays usable
  CHECK(created.buf()[0] == std::byte{1});
  auto again = error_of<std::system_error>([&] { copy.unlink(); });
  CHECK(again.code().value() == ENOENT);
  // The name is free again; the first handles do not take it from the new block.
  coproc::shared_memory reborn(name, 8);
  { auto drop = std::move(created); }
  CHECK(in_dev_shm(name));
}

TEST_CASE("the creator unlinks when its last handle goes, untracked blocks stay") {
  const auto name = unique("track");
  {
    coproc::shared_memory created(name, 16);
    auto copy = created;
    { auto drop = std::move(created); }
    CHECK(in_dev_shm(name)); // a copy is still alive
  }
  CHECK_FALSE(in_dev_shm(name));
  const auto kept = unique("untracked");
  { coproc::shared_memory untracked(kept, 16, {.track = false}); }
  CHECK(in_dev_shm(kept));
  {
    auto attached = coproc::shared_memory::attach(kept);
    CHECK(attached.buf().size() == 16);
  }
  CHECK(in_dev_shm(kept)); // attaching never unlinks
  coproc::shared_memory::attach(kept).unlink();
  CHECK_FALSE(in_dev_shm(kept));
}

TEST_CASE("a child writes through an attached block and its handle does not unlink the creator's") {
  auto before = own_entries();
  {
    const auto name = unique("child");
    coproc::shared_memory created(name, 256);
    coproc::process child(
        [](std::string name, coproc::shared_memory inherited) {
          {
            auto attached = coproc::shared_memory::attach(name);
            std::memcpy(attached.buf().data(), "from the child", 14);
          }
          { auto drop = std::move(inherited); } // the creator's copy, destroyed in the child
          struct stat st;
          return ::stat(("/dev/shm/" + name).c_str(), &st) == 0 ? 0 : 3;
        },
        name, created);
    child.start();
    CHECK(run(child.join()) == 0);
    CHECK(std::memcmp(created.buf().data(), "from the child", 14) == 0);
    CHECK(in_dev_shm(name));
  }
  CHECK(own_entries() == before);
}
