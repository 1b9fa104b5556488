// coproc/remote_workers.hpp — a pool's workers on other hosts (pool_options::remote).
//
//   coproc::pool pool(ex, {.remote = coproc::remote_workers{.launcher = {"srun", "--ntasks=8"}}});
//
// The pool listens on TCP and runs `launcher... worker_command...`, which starts this
// program on the hosts the launcher manages (srun inside an allocation, mpirun, ssh). A
// worker finds the pool's address in COPROC_REMOTE_ADDRESS (host:port, IPv6 in brackets)
// and a one-time secret in COPROC_REMOTE_SECRET: srun forwards the environment, for
// mpirun the pool adds `-x` for both, and for ssh (launcher[0]'s basename is ssh) the
// address goes on the remote command line and the secret through the worker's stdin, never
// on a command line. The worker enters through coproc::main_guard, connects back, and both
// sides prove they hold the secret by HMAC-SHA-256 over each other's nonces (the secret
// never crosses the wire); a peer that cannot is closed, logged on stderr with its address,
// and gets no task; a worker refused so exits with status 1 and says why on stderr.
//
// Tasks, results, errors, chunking and imap are as with local workers; the functions must
// reach a fresh image as with start_method::spawn (not in a library dlopened after
// main_guard), and every host runs the same executable, and the shared libraries that hold
// tasks, at the same paths. A remote worker claims a chunk
// by a message before it runs it, so when a worker is lost (its connection closes, or no
// heartbeat for 3 heartbeat intervals: a dead process, host or link, a stopped process)
// exactly the chunks it had started fail with worker_lost (exitcode() 255: the status is
// not known here), and the chunks it had not started go to the other workers; unstarted
// work is not taken back from a slow remote worker while it lives.
//
// The process the launcher starts is a supervisor; the worker proper is its child (the
// runner), which leads its own process group. A task timeout (task_options,
// pool_options::task_timeout) or async_result::cancel() stops a running remote task: the
// pool sends a byte of TCP urgent data, the supervisor kills the runner's process group
// (the task and what it started; a task that calls setsid or setpgid escapes), the pool
// reads the connection to its end (so exactly the items that had started fail: the
// stopped one with task_timeout naming the function, host and timeout, or
// operation_aborted), and the supervisor connects a new runner, which runs the initializer
// again. A timeout's clock starts when the item's claim reaches the pool (a timed frame is
// claimed item by item), later than the real start by the link's latency. A cancelled item
// that was sent to a worker behind another submission's running item is not stopped (that
// would fail the other): it runs, and its answer is ignored. A runner lost otherwise (killed,
// its connection reset) is replaced the same way while its supervisor lives; with
// per_worker a launcher run that ends after its worker had connected is started again (to
// notice a dead host sooner, give ssh -o ServerAliveInterval=N). The pool goes on with the
// workers it has.
//
// The constructor does not wait: tasks queue until workers connect, and size() is the
// number connected now. If none connects within connect_timeout, or the launcher exits
// before one did, unfinished and later tasks fail with a coproc::error naming the launcher
// command, its exit status and quoting its stderr (which is also copied to this process's
// stderr). close()/terminate() end every worker (a worker exits when its connection
// closes, even mid-task) and the launcher: join() returns once the launcher has exited
// (SIGTERM once the workers are gone, SIGKILL 2 s later).
#pragma once

#include <coproc/awaitable.hpp>

#include <chrono>
#include <string>
#include <vector>

namespace coproc {

struct remote_workers {
  std::vector<std::string> launcher{}; // e.g. {"srun", "--ntasks=8"}, {"mpirun", "-np", "8"},
                                       //      {"ssh", "hostB"}
  bool per_worker = false;             // true: one worker per run of the launcher (ssh),
                                       //   run once per worker, lost workers relaunched;
                                       //   false: one run starts them all (srun, mpirun)
  unsigned processes = 0;              // workers expected (0: what the launcher starts;
                                       //   with per_worker, 1); for default chunk sizes
  std::string listen = "0.0.0.0:0";    // where workers connect back (TCP)
  std::string advertise{};             // the address workers dial; "" → the listen address
                                       //   if it is not a wildcard, else this host's
                                       //   name's address
  duration heartbeat = std::chrono::seconds(1);
  duration connect_timeout = std::chrono::seconds(30);
  std::vector<std::string> worker_command{}; // default: this program's path, no arguments
};

} // namespace coproc
