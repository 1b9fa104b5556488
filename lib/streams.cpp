// What a child's standard streams become: redirect's factories, and the descriptors a
// redirect stands for, opened here (in the parent) before the spawn so that a missing
// file or a closed descriptor is an error naming it, raised before any child runs.
#include "spawn.hpp"

#include "os.hpp"

#include <fcntl.h>

#include <cerrno>
#include <stdexcept>

namespace coproc {

redirect from_file(std::filesystem::path path) {
  redirect r;
  r.kind_ = redirect::kind::file;
  r.path_ = std::move(path);
  r.reading_ = true;
  return r;
}

redirect to_file(std::filesystem::path path, file_mode mode) {
  redirect r;
  r.kind_ = redirect::kind::file;
  r.path_ = std::move(path);
  r.mode_ = mode;
  return r;
}

redirect descriptor(int fd) {
  redirect r;
  r.kind_ = redirect::kind::descriptor;
  r.fd_ = fd;
  return r;
}

namespace {
// The popen's stdout (stream 1) or stdin (0) pipe must still be open to be handed on.
void check_handable(popen& p, int stream) {
  bool open = stream == 1 ? p.stdout_pipe().is_open() : p.stdin_pipe().is_open();
  if (!open)
    throw std::logic_error("coproc: the " + std::string(stream == 1 ? "stdout" : "stdin") +
                           " pipe of pid " + std::to_string(p.pid()) +
                           " was closed or already handed to another child");
}
} // namespace

redirect stdout_of(popen& p) {
  check_handable(p, 1);
  redirect r;
  r.kind_ = redirect::kind::popen_pipe;
  r.popen_ = &p;
  r.fd_ = 1;
  return r;
}

redirect stdin_of(popen& p) {
  check_handable(p, 0);
  redirect r;
  r.kind_ = redirect::kind::popen_pipe;
  r.popen_ = &p;
  r.fd_ = 0;
  return r;
}

namespace detail {

namespace {
const char* stream_name(int target) {
  return target == 0 ? "stdin" : target == 1 ? "stdout" : "stderr";
}
} // namespace

prepared_stream prepare_stream(const redirect& r, int target, const std::string& who) {
  prepared_stream s;
  auto use_opened = [&](int fd, const std::string& what) {
    if (fd < 0) throw_errno(errno, what);
    s.opened = above_stderr(unique_fd(fd));
    s.child = {child_stream::dup_fd, s.opened.fd};
  };
  switch (r.what()) {
  case redirect::kind::standard:
    switch (r.standard()) {
    case stdio::inherit:
      break;
    case stdio::pipe: {
      auto [read_end, write_end] = make_pipe(target == 0 ? 1 : 0);
      s.opened = std::move(target == 0 ? read_end : write_end);
      s.parent_end = std::move(target == 0 ? write_end : read_end);
      s.child = {child_stream::dup_fd, s.opened.fd};
      break;
    }
    case stdio::devnull:
      use_opened(::open("/dev/null", (target == 0 ? O_RDONLY : O_WRONLY) | O_CLOEXEC),
                 "coproc: cannot open /dev/null");
      break;
    case stdio::to_stdout:
      s.child.how = child_stream::dup_stdout;
      break;
    }
    break;
  case redirect::kind::file: {
    int flags = r.for_reading()
                    ? O_RDONLY
                    : O_WRONLY | O_CREAT | (r.mode() == file_mode::append ? O_APPEND : O_TRUNC);
    use_opened(::open(r.path().c_str(), flags | O_CLOEXEC, 0666),
               "coproc: cannot open '" + r.path().string() + "' as the " + stream_name(target) +
                   " of '" + who + "'");
    break;
  }
  case redirect::kind::descriptor:
    // A duplicate above stderr: the caller's descriptor is never the one dup2'ed from,
    // so descriptor(1) for err still means this process's stdout.
    use_opened(r.fd() < 0 ? (errno = EBADF, -1) : ::fcntl(r.fd(), F_DUPFD_CLOEXEC, 3),
               "coproc: descriptor " + std::to_string(r.fd()) + " given as the " +
                   stream_name(target) + " of '" + who + "' is not open");
    break;
  case redirect::kind::popen_pipe: {
    popen& p = *r.source();
    int fd = r.fd() == 1 ? p.stdout_pipe().native_handle() : p.stdin_pipe().native_handle();
    if (fd < 0)
      throw std::logic_error("coproc: the pipe of pid " + std::to_string(p.pid()) +
                             " given as the " + stream_name(target) + " of '" + who +
                             "' is closed");
    // The parent's end is non-blocking; the child reads or writes it as a plain pipe.
    ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) & ~O_NONBLOCK);
    s.child = {child_stream::dup_fd, fd};
    s.handed_from = &p;
    s.handed_stream = r.fd();
    break;
  }
  }
  return s;
}

void hand_over(prepared_stream& s) {
  if (!s.handed_from) return;
  boost::system::error_code ignored;
  if (s.handed_stream == 1) s.handed_from->stdout_pipe().close(ignored);
  else s.handed_from->stdin_pipe().close(ignored);
  s.handed_from = nullptr;
}

} // namespace detail
} // namespace coproc
