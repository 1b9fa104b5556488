// The launching side of a remote pool (lib/pool_remote.hpp): the listener, the launcher
// command line per engine (srun, mpirun, ssh), the launcher's watch (its stderr quoted in
// errors, an early exit failing the pool) and its end (SIGTERM, then SIGKILL).
#include "pool_remote.hpp"

#include "fresh_image.hpp"
#include "image_map.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>

#include <netdb.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <map>
#include <sstream>
#include <stdexcept>
#include <system_error>

extern char** environ;

namespace coproc::detail {

namespace {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;

// At most this much of a launcher's stderr is quoted in errors.
constexpr std::size_t quoted_stderr_bytes = 4096;

// "host:port" or "[v6]:port".
tcp::endpoint parse_endpoint(const std::string& text, const char* what) {
  auto bad = [&] {
    return std::invalid_argument(std::string("coproc::pool: remote ") + what + " '" + text +
                                 "' is not host:port with a numeric host (IPv6 in brackets)");
  };
  auto colon = text.rfind(':');
  if (colon == std::string::npos) throw bad();
  std::string host = text.substr(0, colon), port = text.substr(colon + 1);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']')
    host = host.substr(1, host.size() - 2);
  boost::system::error_code ec;
  auto address = asio::ip::make_address(host, ec);
  char* end = nullptr;
  long number = std::strtol(port.c_str(), &end, 10);
  if (ec || port.empty() || *end != '\0' || number < 0 || number > 65535) throw bad();
  return {address, static_cast<unsigned short>(number)};
}

// The address of this host's name, for workers to dial a wildcard listener.
asio::ip::address host_address(bool v6) {
  char name[256] = {};
  if (::gethostname(name, sizeof name - 1) == 0) {
    addrinfo hints{};
    hints.ai_family = v6 ? AF_INET6 : AF_INET;
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* found = nullptr;
    if (::getaddrinfo(name, nullptr, &hints, &found) == 0) {
      asio::ip::address out;
      for (auto* a = found; a; a = a->ai_next) {
        if (a->ai_family == AF_INET)
          out = asio::ip::make_address_v4(
              ntohl(reinterpret_cast<sockaddr_in*>(a->ai_addr)->sin_addr.s_addr));
        else continue;
        if (!out.is_loopback()) break;
      }
      ::freeaddrinfo(found);
      if (!out.is_unspecified()) return out;
    }
  }
  return asio::ip::make_address(v6 ? "::1" : "127.0.0.1");
}

std::string secret_hex() {
  unsigned char bytes[32];
  random_bytes(bytes, sizeof bytes);
  static const char digits[] = "0123456789abcdef";
  std::string out;
  for (unsigned char c : bytes) {
    out += digits[c >> 4];
    out += digits[c & 15];
  }
  return out;
}

std::string basename_of(const std::string& path) {
  return std::filesystem::path(path).filename().string();
}

// A word for a POSIX shell (ssh runs the remote command through the user's shell).
std::string shell_word(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

std::string this_program() {
  std::error_code ec;
  auto path = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (ec) return program_invocation_name;
  return path.string();
}

} // namespace

// ---- starting --------------------------------------------------------------------------

std::shared_ptr<remote_core> remote_core::start(asio::any_io_executor ex, pool_options options) {
  auto core = std::make_shared<remote_core>(std::move(ex), std::move(options));
  std::lock_guard lock(core->mutex_);
  try {
    core->listen_locked();
    unsigned runs = core->remote_.per_worker ? std::max(1u, core->remote_.processes) : 1;
    for (unsigned i = 0; i < runs; ++i) core->start_launch_locked();
  } catch (...) {
    core->terminate_locked();
    throw;
  }
  asio::co_spawn(core->ex_, accept_loop(core), asio::detached);
  core->connect_timer_.expires_after(core->remote_.connect_timeout);
  core->connect_timer_.async_wait([self = core](boost::system::error_code ec) {
    if (ec) return;
    std::lock_guard lock(self->mutex_);
    if (self->ever_connected_ > 0 || self->terminated_ || self->failed_) return;
    auto seconds = std::chrono::duration<double>(self->remote_.connect_timeout).count();
    std::ostringstream why;
    why << "coproc::pool: no remote worker connected within " << seconds << " s; "
        << self->launcher_report_locked();
    self->fail_pool_locked(std::make_exception_ptr(error(why.str())));
  });
  core->arm_tick_locked();
  return core;
}

remote_core::remote_core(asio::any_io_executor ex, pool_options options)
    : ex_(std::move(ex)), options_(std::move(options)), remote_(*options_.remote), scheduler_(0) {
  if (remote_.launcher.empty())
    throw std::invalid_argument("coproc::pool: remote_workers::launcher is empty");
  if (remote_.heartbeat <= duration::zero())
    throw std::invalid_argument("coproc::pool: remote_workers::heartbeat must be positive");
  if (options_.task_timeout && *options_.task_timeout <= duration::zero())
    throw std::invalid_argument("coproc::pool: pool_options::task_timeout must be positive, not " +
                                std::to_string(options_.task_timeout->count()) + " ns");
  require_main_guard("coproc::pool with remote workers");
  if (options_.initializer) {
    void (*fn)() = nullptr;
    if (auto* plain = options_.initializer.function().target<void (*)()>()) fn = *plain;
    else if (auto* declared = options_.initializer.function().target<void (*)() noexcept>())
      fn = *declared;
    if (!fn)
      throw std::invalid_argument(
          "coproc::pool: with remote workers the initializer must be a plain function (a "
          "remote worker is a fresh image of this program, without a lambda's captures)");
    initializer_offset_ = pool_image_offset(fn);
    check_reaches_fresh_image(initializer_offset_,
                              "coproc::pool: with remote workers the initializer");
  }
  secret_ = secret_hex();
}

void remote_core::listen_locked() {
  auto endpoint = parse_endpoint(remote_.listen, "listen address");
  acceptor_.open(endpoint.protocol());
  acceptor_.set_option(tcp::acceptor::reuse_address(true));
  boost::system::error_code ec;
  acceptor_.bind(endpoint, ec);
  if (ec)
    throw std::system_error(ec.value(), std::generic_category(),
                            "coproc::pool: cannot listen on " + remote_.listen);
  acceptor_.listen();
  auto bound = acceptor_.local_endpoint();
  if (!remote_.advertise.empty()) {
    address_ = remote_.advertise;
    if (address_.rfind(':') == std::string::npos || address_.back() == ']')
      address_ = address_ + ":" + std::to_string(bound.port());
  } else {
    auto a = bound.address();
    if (a.is_unspecified()) a = host_address(a.is_v6());
    address_ = format_endpoint(a, bound.port());
  }
}

bool remote_core::is_ssh() const { return basename_of(remote_.launcher[0]) == "ssh"; }

std::vector<std::string> remote_core::launch_args(std::uint32_t run) const {
  std::vector<std::string> worker = remote_.worker_command;
  if (worker.empty()) worker.push_back(this_program());
  std::vector<std::string> args = remote_.launcher;
  std::string launcher = basename_of(args[0]);
  if (is_ssh()) {
    // The remote shell parses the command: each word quoted. The address and run are no
    // secret; the secret follows on stdin.
    args.push_back("env");
    args.push_back(std::string(remote_address_env) + "=" + address_);
    args.push_back(std::string(remote_run_env) + "=" + std::to_string(run));
    for (auto& word : worker) args.push_back(shell_word(word));
    return args;
  }
  if (launcher == "mpirun" || launcher == "mpiexec" || launcher == "orterun") {
    std::vector<std::string> forward{"-x", remote_address_env, "-x", remote_secret_env,
                                     "-x", remote_run_env};
    args.insert(args.begin() + 1, forward.begin(), forward.end());
  }
  args.insert(args.end(), worker.begin(), worker.end());
  return args;
}

void remote_core::start_launch_locked() {
  auto l = std::make_shared<launch>();
  l->run = next_run_++;
  popen_options po;
  po.err = stdio::pipe;
  po.in = is_ssh() ? redirect(stdio::pipe) : redirect(stdio::devnull);
  po.kill_on_destroy = true;
  std::map<std::string, std::string> env;
  for (char** v = environ; *v; ++v) {
    std::string_view entry(*v);
    auto eq = entry.find('=');
    if (eq == std::string_view::npos) continue;
    env.emplace(std::string(entry.substr(0, eq)), std::string(entry.substr(eq + 1)));
  }
  env[remote_address_env] = address_;
  env[remote_run_env] = std::to_string(l->run);
  if (!is_ssh()) env[remote_secret_env] = secret_;
  else env.erase(remote_secret_env);
  po.env = std::move(env);
  l->proc = std::make_unique<popen>(ex_, launch_args(l->run), std::move(po));
  if (is_ssh()) {
    // A few bytes: the pipe holds them; the pipe stays open (EOF tells the worker that
    // its ssh is gone).
    std::string line = secret_ + "\n";
    boost::system::error_code ec;
    asio::write(l->proc->stdin_pipe(), asio::buffer(line), ec);
  }
  launches_.push_back(l);
  asio::co_spawn(ex_, watch_launch(shared_from_this(), l), asio::detached);
}

// Copies the launcher's stderr to ours (the workers' messages come through it), keeps the
// first bytes for errors, then reaps it. A launcher that ends before any worker connected
// fails the pool at once.
awaitable<void> remote_core::watch_launch(std::shared_ptr<remote_core> self,
                                          std::shared_ptr<launch> l) {
  char buf[4096];
  for (;;) {
    boost::system::error_code ec;
    auto read = l->proc->stderr_pipe().async_read_some(
        asio::buffer(buf), asio::redirect_error(asio::use_awaitable, ec));
    std::size_t n = co_await std::move(read);
    if (ec || n == 0) break;
    std::cerr.write(buf, static_cast<std::streamsize>(n));
    std::cerr.flush();
    std::lock_guard lock(self->mutex_);
    if (l->err.size() < quoted_stderr_bytes)
      l->err.append(buf, std::min(n, quoted_stderr_bytes - l->err.size()));
  }
  auto wait = l->proc->wait();
  int code = co_await std::move(wait);
  std::lock_guard lock(self->mutex_);
  l->exited = true;
  l->code = code;
  if (!self->terminated_ && !self->failed_ && self->ever_connected_ == 0 &&
      self->handshakes_ == 0 && self->workers_.empty()) {
    bool others = std::any_of(self->launches_.begin(), self->launches_.end(),
                              [](const auto& x) { return !x->exited; });
    if (!others)
      self->fail_pool_locked(std::make_exception_ptr(
          error("coproc::pool: the launcher exited before any remote worker connected; " +
                self->launcher_report_locked())));
  }
  self->last_launch_ = l;
  std::erase(self->launches_, l);
  // per_worker: a run whose worker had connected is replaced (its host or supervisor is
  // gone); one that never connected is not (it would fail the same way again).
  if (self->remote_.per_worker && l->connected && !self->terminated_ && !self->failed_ &&
      !self->launches_ending_ &&
      (!self->closed_ || self->scheduler_.has_work() || self->open_streams_ != 0)) {
    try {
      self->start_launch_locked();
    } catch (const std::exception& e) {
      if (self->workers_.empty()) self->scheduler_.fail_all(std::make_exception_ptr(e));
    }
  }
  self->settle_locked();
}

std::string remote_core::launcher_report_locked() const {
  std::string out = "launcher '" + format_command(launch_args(0)) + "'";
  const launch* last = last_launch_.get();
  for (auto& l : launches_) last = l.get();
  if (!last) return out;
  out += last->exited ? " " + describe_exitcode(last->code) : std::string(" still runs");
  if (last->err.empty()) return out + ", nothing on its stderr";
  std::string err = last->err;
  while (!err.empty() && err.back() == '\n') err.pop_back();
  return out + ", its stderr: \"" + err + "\"";
}

// ---- the end of launches ---------------------------------------------------------------

// SIGTERM to every launcher now (srun and mpirun pass it to their tasks, ssh closes its
// session), SIGKILL to those still running 2 s later; no more connections.
void remote_core::end_launches_locked() noexcept {
  boost::system::error_code ec;
  acceptor_.close(ec);
  connect_timer_.cancel();
  tick_timer_.cancel();
  if (launches_ending_) return;
  launches_ending_ = true;
  if (launches_.empty()) return;
  for (auto& l : launches_)
    if (!l->exited) l->proc->send_signal(SIGTERM);
  kill_timer_.expires_after(std::chrono::seconds(2));
  kill_timer_.async_wait([self = shared_from_this()](boost::system::error_code e) {
    if (e) return;
    std::lock_guard lock(self->mutex_);
    for (auto& l : self->launches_)
      if (!l->exited) l->proc->send_signal(SIGKILL);
  });
}

// After close() with every worker gone: a launcher still running after a grace is ended.
void remote_core::kill_launches_later_locked() {
  if (launches_ending_ || launches_.empty()) {
    boost::system::error_code ec;
    acceptor_.close(ec);
    return;
  }
  launches_ending_ = true;
  kill_timer_.expires_after(std::chrono::seconds(5));
  kill_timer_.async_wait([self = shared_from_this()](boost::system::error_code e) {
    if (e) return;
    std::lock_guard lock(self->mutex_);
    self->launches_ending_ = false;
    self->end_launches_locked();
  });
}

} // namespace coproc::detail
