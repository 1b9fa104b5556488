// The fresh-image entry (coproc/main_guard.hpp, lib/fresh_image.hpp) and the naming of
// code across images (coproc/detail/fresh_image.hpp).
#include "fresh_image.hpp"

#include <coproc/detail/fresh_image.hpp>
#include <coproc/errors.hpp>
#include <coproc/main_guard.hpp>
#include <coproc/wire.hpp>

#include "image_map.hpp"
#include "os.hpp"
#include "pool_remote.hpp"
#include "start_method.hpp"

#include <elf.h>
#include <fcntl.h>
#include <link.h>
#include <spawn.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <mutex>
#include <stdexcept>
#include <string>
#include <system_error>
#include <vector>

extern char** environ;

namespace coproc {

namespace {

constexpr const char* image_env = "COPROC_FRESH_IMAGE";
constexpr const char* bind_now_env = "LD_BIND_NOW";
constexpr const char* image_magic = "coproc fresh image 1";
constexpr int payload_fd = 3;
// EX_SOFTWARE, as a pool worker's protocol error.
constexpr int bad_image_exit = 70;

std::atomic<bool> guard_ran{false};
// main's argv, for the fresh images this process starts: written once, before guard_ran.
std::vector<std::string> program_argv;

const char* kind_name(detail::image_kind kind) {
  switch (kind) {
  case detail::image_kind::process:
    return "process";
  case detail::image_kind::pool_worker:
    return "pool_worker";
  case detail::image_kind::forkserver:
    break;
  }
  return "forkserver";
}

// What the parent tells every kind of fresh image.
struct envelope {
  std::string magic;
  std::uint8_t kind = 0;
  std::int32_t parent = 0;
  std::uint8_t method = 0;
  bool dies_with_parent = false;
  std::vector<unsigned> path;
  std::string name;
  std::string body;
  bool drop_bind_now = false; // LD_BIND_NOW was coproc's (fresh_image_spec::bind_now)
  template <class Archive> void serialize(Archive& ar) {
    ar(magic, kind, parent, method, dies_with_parent, path, name, body, drop_bind_now);
  }
};

// Started by hand, or by another program that sets coproc's variable: say so, and stop.
[[noreturn]] void bad_image(const std::string& value, const std::string& why) {
  std::cerr << "coproc: this program was started as a fresh image (" << image_env << "=" << value
            << ") but " << why << "; " << image_env
            << " is set only by coproc for the children it starts" << std::endl;
  ::_exit(bad_image_exit);
}

std::string read_payload(const std::string& value) {
  struct stat st;
  // A memfd is a regular file: anything else (a terminal, a pipe, /dev/zero) might never
  // end, and is not coproc's.
  if (::fstat(payload_fd, &st) != 0 || !S_ISREG(st.st_mode))
    bad_image(value, "descriptor 3 is not coproc's payload");
  std::string bytes(static_cast<std::size_t>(st.st_size), '\0');
  std::size_t done = 0;
  while (done < bytes.size()) {
    ssize_t n =
        ::pread(payload_fd, bytes.data() + done, bytes.size() - done, static_cast<off_t>(done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) bad_image(value, "descriptor 3 could not be read whole");
    done += static_cast<std::size_t>(n);
  }
  ::close(payload_fd);
  return bytes;
}

// Becomes the child the payload describes: `payload`, or the one at descriptor 3.
// `server`: the fork server that forked this child, its parent for a death signal; 0 in a
// fresh image.
[[noreturn]] void enter_image(detail::image_kind kind, const std::string& value, int server,
                              const std::string* payload = nullptr) {
  envelope e;
  try {
    e = wire::decode<envelope>(payload ? *payload : read_payload(value));
  } catch (const std::exception& error) {
    bad_image(value, std::string("its payload does not decode: ") + error.what());
  }
  if (e.magic != image_magic) bad_image(value, "its payload is not coproc's");
  if (e.kind != static_cast<std::uint8_t>(kind))
    bad_image(value, "its payload is for another kind of child");
  if (e.method > static_cast<std::uint8_t>(start_method::spawn))
    bad_image(value, "its start method is unknown");
  for (int i = 0; i < detail::kind_descriptors(kind); ++i)
    if (::fcntl(detail::fresh_image_first_fd + i, F_GETFD) < 0)
      bad_image(value,
                "descriptor " + std::to_string(detail::fresh_image_first_fd + i) + " is not open");
  if (e.drop_bind_now) ::unsetenv(bind_now_env); // the loader has read it
  if (e.dies_with_parent) detail::die_with_parent(server != 0 ? server : e.parent);
  detail::inherit_start_method(static_cast<start_method>(e.method));
  detail::enter_child({std::move(e.path), std::move(e.name)});
  switch (kind) {
  case detail::image_kind::process:
    detail::run_fresh_process(e.body);
  case detail::image_kind::pool_worker:
    detail::run_spawned_worker(e.body, detail::fresh_image_first_fd,
                               detail::fresh_image_first_fd + 1);
  case detail::image_kind::forkserver:
    break;
  }
  detail::run_fork_server(detail::fresh_image_first_fd);
}

[[noreturn]] void enter_fresh_image(const std::string& value) {
  ::unsetenv(image_env); // the child's own children are ordinary runs
  detail::image_kind kind;
  if (value == "process") kind = detail::image_kind::process;
  else if (value == "pool_worker") kind = detail::image_kind::pool_worker;
  else if (value == "forkserver") kind = detail::image_kind::forkserver;
  else bad_image(value, "that names no kind of coproc child");
  enter_image(kind, value, 0);
}

// The image's LD_BIND_NOW is coproc's, not this program's own.
bool adds_bind_now(const detail::fresh_image_spec& spec) {
  return spec.bind_now && std::getenv(bind_now_env) == nullptr;
}

int checked(int rc, const std::string& who, const char* what) {
  if (rc != 0) detail::throw_errno(rc, who + ": " + what + " for a fresh image");
  return rc;
}

} // namespace

void main_guard(int argc, char** argv) {
  if (argc < 0 || (argc > 0 && argv == nullptr))
    throw std::invalid_argument("coproc::main_guard(argc, argv): argc " + std::to_string(argc) +
                                " with argv " + (argv ? "set" : "null") +
                                " is not main's own; pass main's argc and argv");
  // Before a child's entry too: its own children are fresh images of it.
  static std::once_flag once;
  std::call_once(once, [&] {
    program_argv.assign(argv, argv + argc);
    detail::record_startup_image();
    guard_ran.store(true, std::memory_order_release);
  });
  if (const char* value = std::getenv(image_env)) enter_fresh_image(value);
  if (std::getenv(detail::remote_address_env)) detail::run_remote_worker();
}

namespace detail {

void require_main_guard(const std::string& who) {
  if (!guard_ran.load(std::memory_order_acquire))
    throw std::logic_error(
        who + ": start_method::spawn and forkserver start a fresh image of this program, "
              "which needs coproc::main_guard(argc, argv) as the first statement of main()");
}

int kind_descriptors(image_kind kind) noexcept {
  switch (kind) {
  case image_kind::process:
    return 0;
  case image_kind::pool_worker:
    return 2;
  case image_kind::forkserver:
    break;
  }
  return 1;
}

std::string fresh_image_payload_bytes(const fresh_image_spec& spec) {
  envelope e{image_magic,
             static_cast<std::uint8_t>(spec.kind),
             ::getpid(),
             static_cast<std::uint8_t>(get_start_method()),
             spec.dies_with_parent,
             spec.id.path,
             spec.id.name,
             spec.body,
             adds_bind_now(spec)};
  return wire::encode(e);
}

int fresh_image_payload(const fresh_image_spec& spec, const std::string& who) {
  std::string payload = fresh_image_payload_bytes(spec);
  int memfd = ::memfd_create("coproc-fresh-image", MFD_CLOEXEC);
  if (memfd < 0) throw_errno(errno, who + ": memfd_create for a fresh image");
  for (std::size_t done = 0; done < payload.size();) {
    ssize_t n = ::write(memfd, payload.data() + done, payload.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      int err = errno;
      ::close(memfd);
      throw_errno(err, who + ": writing a fresh image's payload");
    }
    done += static_cast<std::size_t>(n);
  }
  return memfd;
}

void enter_served_image(image_kind kind, int server, const std::string* payload) {
  enter_image(kind, kind_name(kind), server, payload);
}

int spawn_fresh_image(const fresh_image_spec& spec, std::span<const int> fds,
                      const std::string& who) {
  // Every source descriptor above the targets (3, 4, ...), so no dup2 of the child
  // overwrites a source it has yet to copy.
  int above = payload_fd + 1 + static_cast<int>(fds.size());
  std::vector<int> sources;
  auto close_sources = [&] {
    for (int fd : sources) ::close(fd);
  };
  int memfd = fresh_image_payload(spec, who);
  std::vector<int> all{memfd};
  all.insert(all.end(), fds.begin(), fds.end());
  for (int fd : all) {
    int copy = ::fcntl(fd, F_DUPFD_CLOEXEC, above);
    if (copy < 0) {
      int err = errno;
      ::close(memfd);
      close_sources();
      throw_errno(err, who + ": dup for a fresh image");
    }
    sources.push_back(copy);
  }
  ::close(memfd);

  std::string variable = std::string(image_env) + "=" + kind_name(spec.kind);
  std::vector<char*> envp;
  std::size_t prefix = std::strlen(image_env) + 1;
  for (char** v = environ; *v; ++v)
    if (std::strncmp(*v, variable.c_str(), prefix) != 0) envp.push_back(*v);
  envp.push_back(variable.data());
  std::string bind_now = std::string(bind_now_env) + "=1";
  if (adds_bind_now(spec)) envp.push_back(bind_now.data());
  envp.push_back(nullptr);
  // main's own argv, so ps, top and pkill -f see a spawn child as they see a fork child;
  // the child never runs main's work, so what it says does not matter there.
  std::vector<char*> argv;
  for (auto& arg : program_argv) argv.push_back(arg.data());
  if (argv.empty()) argv.push_back(program_invocation_name);
  argv.push_back(nullptr);

  posix_spawn_file_actions_t actions;
  posix_spawnattr_t attr;
  ::posix_spawn_file_actions_init(&actions);
  ::posix_spawnattr_init(&attr);
  int pid = 0;
  try {
    for (std::size_t i = 0; i < sources.size(); ++i)
      checked(::posix_spawn_file_actions_adddup2(&actions, sources[i],
                                                 payload_fd + static_cast<int>(i)),
              who, "adddup2");
    checked(::posix_spawn_file_actions_addclosefrom_np(&actions, above), who, "addclosefrom_np");
    // every_signal, not sigfillset: glibc's 32 and 33 would stay ignored (os.hpp).
    sigset_t none, all_signals = every_signal();
    sigemptyset(&none);
    checked(::posix_spawnattr_setsigmask(&attr, &none), who, "setsigmask");
    checked(::posix_spawnattr_setsigdefault(&attr, &all_signals), who, "setsigdefault");
    checked(::posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF), who,
            "setflags");
    auto spawn = [&] {
      return ::posix_spawn(&pid, "/proc/self/exe", &actions, &attr, argv.data(), envp.data());
    };
    // The child's death signal follows the thread that spawns it.
    int rc = spec.dies_with_parent ? on_lasting_thread(spawn) : spawn();
    if (rc != 0) throw_errno(rc, who + ": posix_spawn of /proc/self/exe");
  } catch (...) {
    ::posix_spawn_file_actions_destroy(&actions);
    ::posix_spawnattr_destroy(&attr);
    close_sources();
    throw;
  }
  ::posix_spawn_file_actions_destroy(&actions);
  ::posix_spawnattr_destroy(&attr);
  close_sources();
  return pid;
}

// ---- code across images ----------------------------------------------------------------

namespace {
struct code_query {
  std::uintptr_t address = 0; // locate: in; resolve: out
  const char* name = nullptr; // locate: out; resolve: in
  std::uint64_t offset = 0;   // locate: out; resolve: in
  bool first = true;          // the executable is the first object, named ""
  bool found = false;
};

bool executable_at(const dl_phdr_info* info, std::uintptr_t address) {
  for (int i = 0; i < info->dlpi_phnum; ++i) {
    const auto& ph = info->dlpi_phdr[i];
    if (ph.p_type != PT_LOAD || !(ph.p_flags & PF_X)) continue;
    std::uintptr_t start = info->dlpi_addr + ph.p_vaddr;
    if (address >= start && address - start < ph.p_memsz) return true;
  }
  return false;
}

const char* object_name(const dl_phdr_info* info, bool first) {
  return first ? "" : info->dlpi_name;
}
} // namespace

std::optional<code_ref> locate_code(std::uintptr_t address) {
  code_query q{address};
  ::dl_iterate_phdr(
      [](dl_phdr_info* info, std::size_t, void* data) -> int {
        auto& q = *static_cast<code_query*>(data);
        bool first = std::exchange(q.first, false);
        if (!executable_at(info, q.address)) return 0;
        q.name = object_name(info, first);
        q.offset = q.address - info->dlpi_addr;
        q.found = true;
        return 1;
      },
      &q);
  if (!q.found) return std::nullopt;
  return code_ref{q.name, q.offset};
}

std::uintptr_t resolve_code(const code_ref& ref) {
  code_query q{0, ref.object.c_str(), ref.offset};
  ::dl_iterate_phdr(
      [](dl_phdr_info* info, std::size_t, void* data) -> int {
        auto& q = *static_cast<code_query*>(data);
        bool first = std::exchange(q.first, false);
        if (std::strcmp(object_name(info, first), q.name) != 0) return 0;
        std::uintptr_t address = info->dlpi_addr + q.offset; // wraps, never overflows
        q.found = executable_at(info, address);
        q.address = address;
        return 1;
      },
      &q);
  if (!q.found)
    throw error("coproc: no code at offset " + std::to_string(ref.offset) + " of " +
                (ref.object.empty() ? std::string("the executable") : ref.object) +
                " in this image");
  return q.address;
}

} // namespace detail

} // namespace coproc
