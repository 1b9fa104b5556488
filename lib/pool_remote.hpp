// lib/pool_remote.hpp — a pool whose workers run on other hosts (coproc/remote_workers.hpp):
// the parent's side (remote_core: lib/pool_remote_launch.cpp starts the launchers,
// lib/pool_remote.cpp serves the connections) and the handshake both sides share
// (the worker's side: lib/pool_remote_worker.cpp).
//
// The handshake, on a fresh TCP connection from a worker (fixed sizes, then the pool's
// frames and the worker's records of coproc/detail/pool_protocol.hpp):
//   worker -> pool  remote_hello: magic, a random nonce Nw, its pid, run and host name
//   pool -> worker  remote_challenge: magic, a random nonce Np,
//                   HMAC-SHA-256(secret, "coproc pool" Nw Np)
//   worker -> pool  remote_proof: HMAC-SHA-256(secret, "coproc worker" Np Nw)
//   pool -> worker  u64 length, then remote_welcome (wire-encoded)
// Each side checks the other's proof before it sends more; the secret never crosses the
// wire, and a recorded exchange proves nothing to a later connection (fresh nonces).
#pragma once

#include <coproc/detail/pool_scheduler.hpp>
#include <coproc/detail/pool_state.hpp>
#include <coproc/pool.hpp>
#include <coproc/subprocess.hpp>

#include "pool_protocol.hpp"
#include "sha256.hpp"

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>

#include <atomic>
#include <cstdint>
#include <exception>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <tuple>
#include <unordered_set>
#include <vector>

namespace coproc::detail {

constexpr char remote_magic[16] = "coproc remote 1";
constexpr const char* remote_address_env = "COPROC_REMOTE_ADDRESS";
constexpr const char* remote_secret_env = "COPROC_REMOTE_SECRET";
constexpr const char* remote_run_env = "COPROC_REMOTE_RUN"; // which launcher run (per_worker)
// worker_lost::exitcode() of a remote worker: its exit status is not known here (ssh's
// "connection lost" status).
constexpr int remote_lost_exitcode = 255;
// A remote worker that misses this many heartbeats is lost.
constexpr int remote_missed_heartbeats = 3;

struct remote_hello {
  char magic[16];
  unsigned char nonce[16];
  std::uint64_t pid;
  std::uint32_t run;
  char host[64]; // NUL-padded
};
struct remote_challenge {
  char magic[16];
  unsigned char nonce[16];
  sha256_digest proof;
};
struct remote_proof {
  sha256_digest proof;
};
// name, maxtasksperchild, initializer offset, heartbeat (ns), the offset of
// run_remote_worker from the anchor (the same executable on both sides, or no tasks), and
// the pool's layout (lib/image_map.hpp).
using remote_welcome =
    std::tuple<std::string, unsigned, std::int64_t, std::int64_t, std::int64_t, std::string>;

// HMAC-SHA-256(secret, label first second): the proofs of the handshake.
sha256_digest remote_proof_of(std::string_view secret, std::string_view label,
                              const unsigned char (&first)[16], const unsigned char (&second)[16]);
void random_bytes(unsigned char* out, std::size_t n);
// "host:port", or "[v6]:port": how errors and the workers' environment name an endpoint.
std::string format_endpoint(const boost::asio::ip::address& a, unsigned short port);

// The worker's entry (lib/pool_remote_worker.cpp): main_guard calls it when
// COPROC_REMOTE_ADDRESS is set. A worker that cannot connect or is refused exits 1.
[[noreturn]] void run_remote_worker();

class remote_core final : public std::enable_shared_from_this<remote_core>, public pool_canceller {
public:
  // Listens, then runs the launcher. std::invalid_argument for options that cannot work
  // (no launcher, a listen address that does not parse, an initializer that cannot
  // travel), std::system_error if the listening socket or the launcher cannot start.
  static std::shared_ptr<remote_core> start(boost::asio::any_io_executor ex, pool_options options);
  remote_core(boost::asio::any_io_executor ex, pool_options options);

  // std::invalid_argument for a timeout of zero or less, or one for coroutine tasks.
  // nullopt: the pool's task_timeout. std::logic_error once the pool is closed or
  // terminated; for a lazy stream's items (from_stream) only once it is terminated.
  void submit(std::shared_ptr<pool_job> job, std::optional<duration> timeout,
              bool from_stream = false);
  // A lazy stream that may still submit items: close() keeps the workers while one is
  // open (as pool_core's). stream_opened is std::logic_error once the pool is closed.
  void stream_opened();
  void stream_closed() noexcept;
  bool cancel(pool_sink& sink) override;
  void close();
  void terminate() noexcept;
  static awaitable<void> join(std::shared_ptr<remote_core> self);
  // Workers connected now.
  std::size_t size() const;
  // The workers map's default chunk size assumes.
  std::size_t expected_workers() const;

private:
  struct worker : scheduled_worker, std::enable_shared_from_this<worker> {
    explicit worker(const boost::asio::any_io_executor& ex)
        : scheduled_worker(&claimed_counter), socket(ex) {
      stealable = false;
    }
    std::atomic<std::uint64_t> claimed_counter{0}; // from its claimed records
    boost::asio::ip::tcp::socket socket;
    std::string out, writing;
    std::string start_error;
    std::string name, host, peer; // peer: address:port
    int pid = 0;
    std::uint32_t run = 0;
    std::int64_t last_heard = 0;  // ns
    std::int64_t claim_heard = 0; // ns: when its last claim came (a timed item's start)
    std::unique_ptr<boost::asio::steady_timer> timeout_timer;
    std::int64_t timer_due = 0; // ns, 0: not armed
    std::int64_t stop_sent = 0; // ns: when it was told to stop its task
    std::string lost_why;       // set when the pool gave up on it
  };
  struct launch {
    std::uint32_t run = 0;
    std::unique_ptr<popen> proc;
    std::string err; // the first bytes of its stderr
    bool exited = false;
    bool connected = false; // a worker of this run connected (per_worker: relaunch it)
    int code = 0;
  };

  void listen_locked();
  void start_launch_locked();
  std::vector<std::string> launch_args(std::uint32_t run) const;
  bool is_ssh() const;
  static awaitable<void> watch_launch(std::shared_ptr<remote_core> self, std::shared_ptr<launch> l);
  static awaitable<void> accept_loop(std::shared_ptr<remote_core> self);
  static awaitable<void> handshake(std::shared_ptr<remote_core> self,
                                   boost::asio::ip::tcp::socket socket);
  static awaitable<void> read_loop(std::shared_ptr<remote_core> self, std::shared_ptr<worker> w);
  void tick_locked();
  void arm_tick_locked();

  bool take_results_locked(worker& w, byte_buffer& in);
  void deliver_locked(worker& w, bool failed, std::string_view bytes);
  void schedule_dispatch_locked();
  void dispatch_locked();
  bool encode_chunk(worker& w, const pool_chunk& c);
  void start_write(const std::shared_ptr<worker>& w);
  void check_reaches_workers_locked(const pool_job& job);

  void arm_timeout_locked(const std::shared_ptr<worker>& w, std::int64_t due);
  void check_timeouts_locked(worker& w);
  void stop_locked(worker& w, std::uint64_t seq, std::exception_ptr error) noexcept;
  void worker_gone_locked(worker& w, const std::string& why);
  void drop_locked(worker& w, std::string why) noexcept;
  void end_launches_locked() noexcept;
  void kill_launches_later_locked();
  std::string launcher_report_locked() const;
  void fail_pool_locked(std::exception_ptr error) noexcept;
  void terminate_locked() noexcept;
  bool done_locked() const;
  void settle_locked();

  mutable std::mutex mutex_;
  boost::asio::any_io_executor ex_;
  const pool_options options_;
  const remote_workers remote_;
  std::intptr_t initializer_offset_ = 0;
  std::string secret_, address_;
  boost::asio::ip::tcp::acceptor acceptor_{ex_};
  pool_scheduler scheduler_;
  std::vector<std::shared_ptr<worker>> workers_;
  std::vector<std::shared_ptr<launch>> launches_;
  std::shared_ptr<launch> last_launch_; // for messages once it is reaped
  std::uint32_t next_run_ = 0;
  std::unordered_set<std::intptr_t> checked_offsets_;
  std::size_t ever_connected_ = 0, most_connected_ = 0;
  std::size_t handshakes_ = 0; // connections being checked
  std::exception_ptr failed_;
  waiter_list join_waiters_;
  boost::asio::steady_timer tick_timer_{ex_}, connect_timer_{ex_}, kill_timer_{ex_};
  bool closed_ = false, terminated_ = false, dispatch_posted_ = false, tick_armed_ = false;
  std::size_t open_streams_ = 0; // lazy streams that may still submit
  bool launches_ending_ = false;
};

} // namespace coproc::detail
