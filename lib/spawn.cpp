// Starting a child: posix_spawn for what it can express, coproc's own
// clone(CLONE_VM | CLONE_VFORK) path for the rest (umask, user, group, extra_groups,
// pass_fds).
//
// Why a clone path and not fork: a forked child copies the parent's page tables (its
// cost grows with the parent's size) and runs in a copy of a possibly threaded
// program, where only async-signal-safe calls are allowed anyway. CLONE_VM|CLONE_VFORK
// is what glibc's posix_spawn does: the child shares this process's memory on a stack
// of its own, and this thread sleeps until the child has exec'd or exited. So the
// child can leave its errno in memory this thread reads afterwards — an exec failure is
// reported synchronously, as posix_spawn reports it, with no pipe. The rules it follows:
// - every signal is blocked in this thread across the clone, and the child resets any
//   handler before it unblocks anything, so no handler of this program runs in it;
// - the child makes only raw system calls: setuid/setgid/setgroups through glibc's
//   wrappers would broadcast to every thread of the process (its setxid protocol), and
//   in a CLONE_VM child that "process" is this one's thread list;
// - it is compiled without sanitizer instrumentation (it runs beside the sanitizers'
//   per-thread state, on a stack they do not know).
#include "spawn.hpp"

#include "os.hpp"

#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <sched.h>
#include <signal.h>
#include <spawn.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string_view>
#include <system_error>

extern char** environ;
// glibc's clone under its own name: TSan intercepts clone() and treats the CLONE_VM
// child as a forked process (ForkAfter, a CHECK failure in it); the same function
// called as __clone (exported since GLIBC_2.2.5) is not intercepted.
extern "C" int __clone(int (*fn)(void*), void* stack, int flags, void* arg, ...);

namespace coproc::detail {

namespace {

const char* default_path = "/usr/bin:/bin";

// execvp's search: the first executable regular file on PATH; EACCES if only
// non-executable candidates exist, else ENOENT.
std::string find_program(const std::string& name, const std::string& path, int& err) {
  err = ENOENT;
  std::size_t start = 0;
  for (;;) {
    auto end = path.find(':', start);
    std::string dir =
        path.substr(start, end == std::string::npos ? std::string::npos : end - start);
    std::string candidate = (dir.empty() ? std::string(".") : dir) + "/" + name;
    struct stat st;
    if (::stat(candidate.c_str(), &st) == 0 && S_ISREG(st.st_mode)) {
      if (::access(candidate.c_str(), X_OK) == 0) return candidate;
      err = EACCES;
    }
    if (end == std::string::npos) return {};
    start = end + 1;
  }
}

// The child's environment block: this process's environ, or exactly the given env.
class environment_block {
public:
  explicit environment_block(const std::optional<std::map<std::string, std::string>>& env) {
    if (!env) return;
    strings_.reserve(env->size());
    for (const auto& [name, value] : *env) strings_.push_back(name + "=" + value);
    pointers_.reserve(strings_.size() + 1);
    for (auto& e : strings_) pointers_.push_back(e.data());
    pointers_.push_back(nullptr);
  }
  char** envp() { return pointers_.empty() ? environ : pointers_.data(); }

private:
  std::vector<std::string> strings_;
  std::vector<char*> pointers_;
};

// Checked before spawning so that the error names the directory, not the program.
void check_cwd(const launch_request& req) {
  if (!req.cwd) return;
  struct stat st;
  int err = ::stat(req.cwd->c_str(), &st) != 0      ? errno
            : !S_ISDIR(st.st_mode)                  ? ENOTDIR
            : ::access(req.cwd->c_str(), X_OK) != 0 ? errno
                                                    : 0;
  if (err)
    throw_errno(err, "coproc: cannot use '" + req.cwd->string() + "' as the cwd of '" +
                         req.args[0] + "'");
}

// pass_fds, sorted, without duplicates and without 0..2 (always passed); each checked
// open so the error names it rather than the program.
std::vector<int> checked_pass_fds(const launch_request& req) {
  std::vector<int> fds;
  for (int fd : req.pass_fds) {
    if (::fcntl(fd, F_GETFD) < 0)
      throw_errno(errno, "coproc: pass_fds: descriptor " + std::to_string(fd) + " given to '" +
                             req.args[0] + "' is not open");
    if (fd > 2) fds.push_back(fd);
  }
  std::sort(fds.begin(), fds.end());
  fds.erase(std::unique(fds.begin(), fds.end()), fds.end());
  return fds;
}

bool all_digits(const std::string& s) {
  return !s.empty() && s.find_first_not_of("0123456789") == std::string::npos;
}

// getpwnam_r / getgrnam_r want a buffer; ERANGE asks for a bigger one.
template <class Lookup> void with_buffer(Lookup lookup) {
  std::vector<char> buffer(4096);
  while (lookup(buffer) == ERANGE) buffer.resize(buffer.size() * 2);
}

unsigned user_id(const id_or_name& user, const std::string& who) {
  if (user.id()) return *user.id();
  if (all_digits(user.name())) return static_cast<unsigned>(std::stoul(user.name()));
  passwd pw, *found = nullptr;
  with_buffer([&](std::vector<char>& b) {
    return ::getpwnam_r(user.name().c_str(), &pw, b.data(), b.size(), &found);
  });
  if (!found)
    throw std::invalid_argument("coproc: no user named '" + user.name() + "' (user of '" + who +
                                "')");
  return pw.pw_uid;
}

unsigned group_id(const id_or_name& g, const std::string& who) {
  if (g.id()) return *g.id();
  if (all_digits(g.name())) return static_cast<unsigned>(std::stoul(g.name()));
  struct group gr, *found = nullptr;
  with_buffer([&](std::vector<char>& b) {
    return ::getgrnam_r(g.name().c_str(), &gr, b.data(), b.size(), &found);
  });
  if (!found)
    throw std::invalid_argument("coproc: no group named '" + g.name() + "' (group of '" + who +
                                "')");
  return gr.gr_gid;
}

// ---- the clone path -------------------------------------------------------------------

// The kernel's sigset for rt_sigprocmask / rt_sigaction: 64 signals.
constexpr std::size_t kernel_sigset_size = 8;

// What the child does, precomputed here: plain data and pointers into this process's
// memory, which the CLONE_VM child shares.
struct child_plan {
  const char* program;
  char** argv;
  char** envp;
  int streams[3];  // -1: keep; -2: dup2(1, 2); else dup2(fd, target)
  const char* cwd; // or null
  bool setsid;
  int pgid;            // -1: none
  const int* pass_fds; // sorted, above 2
  std::size_t pass_count;
  int umask; // -1: none
  bool set_groups;
  const gid_t* groups;
  std::size_t group_count;
  long gid, uid; // -1: none
  bool restore_signals;
  sigset_t final_mask; // the mask the program starts with
  int error;           // written by the child when a step fails (errno)
  const char* failed_step;
};

#define COPROC_NO_SANITIZE __attribute__((no_sanitize("address", "thread", "undefined")))

COPROC_NO_SANITIZE long raw(long number, long a = 0, long b = 0, long c = 0, long d = 0) {
  long r = ::syscall(number, a, b, c, d);
  return r < 0 ? -errno : r;
}

[[noreturn]] COPROC_NO_SANITIZE void fail_in_child(child_plan* plan, long r, const char* step) {
  plan->error = static_cast<int>(-r);
  plan->failed_step = step;
  for (;;) ::syscall(SYS_exit_group, 127);
}

// Runs in the clone child, on its own stack, sharing memory with the parent (asleep).
COPROC_NO_SANITIZE int child_main(void* arg) {
  auto* plan = static_cast<child_plan*>(arg);
  // No handler of the parent may run here: reset every handled signal (all signals with
  // restore_signals) before anything is unblocked. SIG_DFL is an all-zero sigaction.
  for (int sig = 1; sig < 65; ++sig) {
    if (sig == SIGKILL || sig == SIGSTOP) continue;
    struct {
      void* handler;
      unsigned long rest[4];
    } old{}, dfl{};
    if (!plan->restore_signals) {
      if (raw(SYS_rt_sigaction, sig, 0, reinterpret_cast<long>(&old), kernel_sigset_size) < 0)
        continue;
      if (old.handler == reinterpret_cast<void*>(SIG_DFL) ||
          old.handler == reinterpret_cast<void*>(SIG_IGN))
        continue;
    }
    raw(SYS_rt_sigaction, sig, reinterpret_cast<long>(&dfl), 0, kernel_sigset_size);
  }
  long r;
  if (plan->setsid && (r = raw(SYS_setsid)) < 0) fail_in_child(plan, r, "setsid");
  if (plan->pgid >= 0 && (r = raw(SYS_setpgid, 0, plan->pgid)) < 0)
    fail_in_child(plan, r, "setpgid");
  for (int target = 0; target < 3; ++target) {
    int source = plan->streams[target];
    if (source == -2) source = 1;
    if (source >= 0 && (r = raw(SYS_dup2, source, target)) < 0) fail_in_child(plan, r, "dup2");
  }
  if (plan->cwd && (r = raw(SYS_chdir, reinterpret_cast<long>(plan->cwd))) < 0)
    fail_in_child(plan, r, "chdir");
  if (plan->umask >= 0) raw(SYS_umask, plan->umask);
  if (plan->set_groups && (r = raw(SYS_setgroups, static_cast<long>(plan->group_count),
                                   reinterpret_cast<long>(plan->groups))) < 0)
    fail_in_child(plan, r, "setgroups");
  if (plan->gid >= 0 && (r = raw(SYS_setgid, plan->gid)) < 0) fail_in_child(plan, r, "setgid");
  if (plan->uid >= 0 && (r = raw(SYS_setuid, plan->uid)) < 0) fail_in_child(plan, r, "setuid");
  // Only 0..2 and pass_fds reach the program: close the gaps, clear CLOEXEC on the kept.
  long low = 3;
  for (std::size_t i = 0; i < plan->pass_count; ++i) {
    long fd = plan->pass_fds[i];
    if (fd > low && (r = raw(SYS_close_range, low, fd - 1, 0)) < 0)
      fail_in_child(plan, r, "close_range");
    if ((r = raw(SYS_fcntl, fd, F_SETFD, 0)) < 0) fail_in_child(plan, r, "fcntl");
    low = fd + 1;
  }
  if ((r = raw(SYS_close_range, low, static_cast<long>(~0U), 0)) < 0)
    fail_in_child(plan, r, "close_range");
  raw(SYS_rt_sigprocmask, SIG_SETMASK, reinterpret_cast<long>(&plan->final_mask), 0,
      kernel_sigset_size);
  r = raw(SYS_execve, reinterpret_cast<long>(plan->program), reinterpret_cast<long>(plan->argv),
          reinterpret_cast<long>(plan->envp));
  fail_in_child(plan, r, "exec");
  return 127;
}

// A stack for the child, freed once clone has returned (the child has exec'd or died).
struct child_stack {
  static constexpr std::size_t size = 256 * 1024;
  void* base = MAP_FAILED;
  child_stack() {
    base = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK,
                  -1, 0);
    if (base == MAP_FAILED) throw_errno(errno, "coproc: mmap of a child stack");
  }
  ~child_stack() { ::munmap(base, size); }
  void* top() const { return static_cast<char*>(base) + size; }
};

int clone_launch(const launch_request& req, command_line& cmd, char** envp,
                 const std::vector<int>& pass_fds) {
  std::string who = req.args[0];
  child_plan plan{};
  plan.program = cmd.program.c_str();
  plan.argv = cmd.argv.data();
  plan.envp = envp;
  for (int t = 0; t < 3; ++t) {
    const auto& s = req.streams[t];
    plan.streams[t] = s.how == child_stream::dup_fd       ? s.fd
                      : s.how == child_stream::dup_stdout ? -2
                                                          : -1;
  }
  plan.cwd = req.cwd ? req.cwd->c_str() : nullptr;
  plan.setsid = req.new_session;
  plan.pgid = req.process_group ? *req.process_group : -1;
  plan.pass_fds = pass_fds.data();
  plan.pass_count = pass_fds.size();
  plan.umask = req.umask ? static_cast<int>(*req.umask & 07777) : -1;
  std::vector<gid_t> groups;
  if (req.extra_groups) {
    for (const auto& g : *req.extra_groups) groups.push_back(group_id(g, who));
    plan.set_groups = true;
  }
  plan.groups = groups.data();
  plan.group_count = groups.size();
  plan.gid = req.group ? static_cast<long>(group_id(*req.group, who)) : -1;
  plan.uid = req.user ? static_cast<long>(user_id(*req.user, who)) : -1;
  plan.restore_signals = req.restore_signals;

  child_stack stack;
  // Every signal blocked (glibc's internal ones too: a raw call) across the clone.
  sigset_t all = every_signal(), old;
  ::syscall(SYS_rt_sigprocmask, SIG_SETMASK, &all, &old, kernel_sigset_size);
  if (req.restore_signals) sigemptyset(&plan.final_mask);
  else plan.final_mask = old;
  int pid = ::__clone(child_main, stack.top(), CLONE_VM | CLONE_VFORK | SIGCHLD, &plan);
  int clone_errno = errno;
  ::syscall(SYS_rt_sigprocmask, SIG_SETMASK, &old, nullptr, kernel_sigset_size);
  if (pid < 0) throw_errno(clone_errno, "coproc: clone for '" + who + "'");
  if (plan.error) {
    // The child has exited (CLONE_VFORK returned): reap it here, it never ran anything.
    int status;
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    std::string step = plan.failed_step;
    if (step == "exec") throw_errno(plan.error, "coproc: cannot run '" + cmd.program + "'");
    throw_errno(plan.error, "coproc: starting '" + who + "': " + step + " failed");
  }
  return pid;
}

// ---- the posix_spawn path ---------------------------------------------------------------

// posix_spawn's attribute and file-action objects, filled for one request.
class spawn_setup {
public:
  spawn_setup() {
    ::posix_spawnattr_init(&attr_);
    ::posix_spawn_file_actions_init(&actions_);
  }
  spawn_setup(const spawn_setup&) = delete;
  spawn_setup& operator=(const spawn_setup&) = delete;
  ~spawn_setup() {
    ::posix_spawn_file_actions_destroy(&actions_);
    ::posix_spawnattr_destroy(&attr_);
  }

  // restore_signals: default dispositions for every signal (also those the parent
  // ignores, SIGPIPE first, and glibc's internal ones, see every_signal) and an empty
  // mask: the child starts as from a login shell. Otherwise what this process ignores
  // stays ignored and the thread's mask is kept (exec's rules); glibc's internal
  // signals still get their default, or its spawn helper would leave them ignored.
  // With setsid the child leads a new session and process group, so killpg reaches
  // its descendants; with a process group it joins (or, 0, leads) that group.
  void set_signals(bool restore, bool new_session, std::optional<int> process_group) {
    sigset_t defaults = every_signal(), mask;
    if (restore) {
      sigemptyset(&mask);
    } else {
      ::pthread_sigmask(SIG_SETMASK, nullptr, &mask);
      for (int sig = 1; sig < NSIG; ++sig) {
        struct sigaction current {};
        if (::sigaction(sig, nullptr, &current) == 0 && current.sa_handler == SIG_IGN)
          sigdelset(&defaults, sig);
      }
    }
    short flags = POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK;
    if (new_session) flags |= POSIX_SPAWN_SETSID;
    if (process_group) {
      flags |= POSIX_SPAWN_SETPGROUP;
      check(::posix_spawnattr_setpgroup(&attr_, *process_group), "posix_spawnattr_setpgroup");
    }
    check(::posix_spawnattr_setflags(&attr_, flags), "posix_spawnattr_setflags");
    check(::posix_spawnattr_setsigdefault(&attr_, &defaults), "posix_spawnattr_setsigdefault");
    check(::posix_spawnattr_setsigmask(&attr_, &mask), "posix_spawnattr_setsigmask");
  }

  void redirect(const child_stream& s, int target) {
    if (s.how == child_stream::dup_fd)
      check(::posix_spawn_file_actions_adddup2(&actions_, s.fd, target), "adddup2");
    else if (s.how == child_stream::dup_stdout)
      check(::posix_spawn_file_actions_adddup2(&actions_, 1, target), "adddup2");
  }

  void chdir(const std::filesystem::path& dir) {
    check(::posix_spawn_file_actions_addchdir_np(&actions_, dir.c_str()), "addchdir_np");
  }

  // Only 0, 1 and 2 reach the program: descriptors other threads or libraries opened
  // without O_CLOEXEC are closed too (close_range in the child).
  void close_the_rest() {
    check(::posix_spawn_file_actions_addclosefrom_np(&actions_, 3), "addclosefrom_np");
  }

  int spawn(command_line& cmd, char** envp) {
    pid_t pid;
    int r = ::posix_spawn(&pid, cmd.program.c_str(), &actions_, &attr_, cmd.argv.data(), envp);
    // glibc reports an exec failure here, having reaped the failed child already.
    if (r != 0) throw_errno(r, "coproc: cannot run '" + cmd.program + "'");
    return pid;
  }

private:
  static void check(int r, const char* what) {
    if (r != 0) throw_errno(r, std::string("coproc: ") + what);
  }

  posix_spawnattr_t attr_;
  posix_spawn_file_actions_t actions_;
};

} // namespace

std::pair<unique_fd, unique_fd> make_pipe(int nonblocking_end) {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) throw_errno(errno, "coproc: pipe2");
  unique_fd r(fds[0]), w(fds[1]);
  r = above_stderr(std::move(r));
  w = above_stderr(std::move(w));
  if (nonblocking_end >= 0) {
    int end = nonblocking_end == 0 ? r.fd : w.fd;
    ::fcntl(end, F_SETFL, ::fcntl(end, F_GETFL) | O_NONBLOCK);
  }
  return {std::move(r), std::move(w)};
}

unique_fd above_stderr(unique_fd fd) {
  if (fd.fd > 2) return fd;
  int moved = ::fcntl(fd.fd, F_DUPFD_CLOEXEC, 3);
  if (moved < 0) throw_errno(errno, "coproc: fcntl(F_DUPFD_CLOEXEC)");
  return unique_fd(moved);
}

// execvp's rules: the shell for shell=true, a name with a '/' as it is (relative paths
// resolve in the new cwd, as with Python), else the first match on PATH — the new
// env's PATH when env is replaced. executable, when given, is resolved the same way in
// place of args[0] (or of /bin/sh), and args[0] stays the child's argv[0].
command_line resolve_command(const launch_request& req) {
  command_line cmd;
  const std::vector<std::string>* argv_strings = &req.args;
  std::string name = req.args[0];
  if (req.shell) {
    cmd.shell_argv.reserve(req.args.size() + 2);
    cmd.shell_argv.push_back("/bin/sh");
    cmd.shell_argv.push_back("-c");
    cmd.shell_argv.insert(cmd.shell_argv.end(), req.args.begin(), req.args.end());
    argv_strings = &cmd.shell_argv;
    name = "/bin/sh";
  }
  if (req.executable) name = req.executable->string();
  if (name.find('/') != std::string::npos) {
    cmd.program = name;
  } else {
    std::string path = default_path;
    if (req.env) {
      if (auto it = req.env->find("PATH"); it != req.env->end()) path = it->second;
    } else if (const char* p = std::getenv("PATH")) {
      path = p;
    }
    int err;
    cmd.program = find_program(name, path, err);
    if (cmd.program.empty())
      throw_errno(err, "coproc: cannot run '" + name + "' (searched PATH=" + path + ")");
  }
  cmd.argv.reserve(argv_strings->size() + 1);
  for (const auto& a : *argv_strings) cmd.argv.push_back(const_cast<char*>(a.c_str()));
  cmd.argv.push_back(nullptr);
  return cmd;
}

int launch(const launch_request& req, command_line& cmd) {
  environment_block env(req.env);
  check_cwd(req);
  auto pass_fds = checked_pass_fds(req);
  // posix_spawn has no umask, user, group or supplementary groups, and closes from one
  // number up only: those requests take the clone path.
  bool needs_clone = req.umask || req.user || req.group || req.extra_groups || !pass_fds.empty();
  if (needs_clone) return clone_launch(req, cmd, env.envp(), pass_fds);

  spawn_setup setup;
  setup.set_signals(req.restore_signals, req.new_session, req.process_group);
  for (int t = 0; t < 3; ++t) setup.redirect(req.streams[t], t);
  if (req.cwd) setup.chdir(*req.cwd);
  setup.close_the_rest();
  return setup.spawn(cmd, env.envp());
}

} // namespace coproc::detail
