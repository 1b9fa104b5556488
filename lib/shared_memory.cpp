#include <coproc/shared_memory.hpp>

#include "os.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <random>
#include <stdexcept>
#include <system_error>

namespace coproc {

struct shared_memory::mapping {
  std::string name;
  std::byte* data = nullptr;
  std::size_t size = 0;
  int creator = 0;       // the pid that unlinks it when tracked; 0: attached, or untracked
  bool unlinked = false; // by unlink(): the destructor does not try again

  mapping() = default;
  mapping(const mapping&) = delete;
  mapping& operator=(const mapping&) = delete;
  ~mapping() {
    if (data) ::munmap(data, size);
    // Only the creating process: a forked child that drops its copy of the handle must not
    // take the name from the creator.
    if (creator != 0 && creator == ::getpid() && !unlinked) ::shm_unlink(("/" + name).c_str());
  }
};

namespace {
void check_name(const std::string& name) {
  if (name.find('/') != std::string::npos)
    throw std::invalid_argument("coproc::shared_memory: the name '" + name + "' holds a '/'");
}

std::string generated_name() {
  // Python's "psm_" + random hex, plus the pid: unique among live processes by itself.
  static std::atomic<unsigned> counter{0};
  thread_local std::mt19937_64 rng(std::random_device{}());
  char suffix[17];
  std::snprintf(suffix, sizeof suffix, "%016llx", static_cast<unsigned long long>(rng()));
  return "coproc_" + std::to_string(::getpid()) + "_" + std::to_string(counter.fetch_add(1)) + "_" +
         suffix;
}

std::byte* map_fd(int fd, std::size_t size, const std::string& name) {
  if (size == 0) return nullptr;
  void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) {
    int err = errno;
    ::close(fd);
    detail::throw_errno(err, "coproc::shared_memory: mmap of '" + name + "' (" +
                                 std::to_string(size) + " bytes)");
  }
  return static_cast<std::byte*>(p);
}
} // namespace

shared_memory::shared_memory(std::string name, std::size_t size, shared_memory_options options) {
  if (size == 0)
    throw std::invalid_argument("coproc::shared_memory: a block of 0 bytes ('" + name + "')");
  check_name(name);
  const bool generated = name.empty();
  int fd = -1;
  for (;;) {
    if (generated) name = generated_name();
    fd = ::shm_open(("/" + name).c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd >= 0) break;
    if (errno == EEXIST && generated) continue;
    detail::throw_errno(errno, "coproc::shared_memory: create of '" + name + "'");
  }
  auto m = std::make_shared<mapping>();
  m->name = std::move(name);
  if (::ftruncate(fd, static_cast<off_t>(size)) != 0) {
    int err = errno;
    ::close(fd);
    ::shm_unlink(("/" + m->name).c_str());
    detail::throw_errno(err, "coproc::shared_memory: resizing '" + m->name + "' to " +
                                 std::to_string(size) + " bytes");
  }
  try {
    m->data = map_fd(fd, size, m->name);
  } catch (...) {
    ::shm_unlink(("/" + m->name).c_str());
    throw;
  }
  ::close(fd); // the mapping keeps the object
  m->size = size;
  if (options.track) m->creator = ::getpid();
  m_ = std::move(m);
}

shared_memory shared_memory::attach(std::string name) {
  check_name(name);
  if (name.empty()) throw std::invalid_argument("coproc::shared_memory: attach needs a name");
  int fd = ::shm_open(("/" + name).c_str(), O_RDWR | O_CLOEXEC, 0);
  if (fd < 0) detail::throw_errno(errno, "coproc::shared_memory: attach of '" + name + "'");
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    int err = errno;
    ::close(fd);
    detail::throw_errno(err, "coproc::shared_memory: fstat of '" + name + "'");
  }
  auto m = std::make_shared<mapping>();
  m->name = std::move(name);
  m->data = map_fd(fd, static_cast<std::size_t>(st.st_size), m->name);
  ::close(fd);
  m->size = static_cast<std::size_t>(st.st_size);
  return shared_memory(std::move(m));
}

std::span<std::byte> shared_memory::buf() const noexcept { return {m_->data, m_->size}; }

const std::string& shared_memory::name() const noexcept { return m_->name; }

void shared_memory::unlink() {
  if (::shm_unlink(("/" + m_->name).c_str()) != 0)
    detail::throw_errno(errno, "coproc::shared_memory: unlink of '" + m_->name + "'");
  m_->unlinked = true;
}

} // namespace coproc
