// coproc::pool, the public wrapper: options resolved, then everything is the core's
// (lib/pool_core.cpp the parent's side, lib/pool_worker.cpp the workers',
// lib/pool_scheduler.cpp the decisions, lib/pool_protocol.cpp the bytes between them).
#include <coproc/pool.hpp>
#include <coproc/this_process.hpp>

#include "pool_core.hpp"
#include "pool_remote.hpp"
#include "start_method.hpp"

#include <algorithm>
#include <stdexcept>

namespace coproc {

namespace {
pool_options resolved(pool_options options) {
  options.method = detail::resolve_start_method(options.method);
  if (options.processes == 0) options.processes = cpu_count();
  if (options.concurrency == 0)
    throw std::invalid_argument("coproc::pool: pool_options::concurrency must be at least 1");
  return options;
}
} // namespace

pool::pool(boost::asio::any_io_executor ex, pool_options options)
    : buffersize_(options.buffersize) {
  if (options.remote) remote_ = detail::remote_core::start(std::move(ex), std::move(options));
  else core_ = detail::pool_core::start(std::move(ex), resolved(std::move(options)));
  detail::note_started();
}

pool::pool(boost::asio::any_io_executor ex, unsigned processes)
    : pool(std::move(ex), pool_options{.processes = processes}) {}

pool::~pool() {
  if (core_) core_->terminate();
  if (remote_) remote_->terminate();
}

void pool::submit(std::shared_ptr<detail::pool_job> job, const task_options& options,
                  const std::type_info& callable) {
  job->callable_type = &callable;
  if (remote_) return remote_->submit(std::move(job), options.timeout);
  core_->submit(std::move(job), options.timeout);
}

std::size_t pool::default_chunksize(std::size_t n) const {
  std::size_t groups = 4 * (remote_ ? remote_->expected_workers() : core_->size());
  return std::max<std::size_t>(1, (n + groups - 1) / groups);
}

void pool::close() { remote_ ? remote_->close() : core_->close(); }
void pool::terminate() { remote_ ? remote_->terminate() : core_->terminate(); }
namespace detail {
stream_port::stream_port(std::shared_ptr<pool_core> core, std::shared_ptr<remote_core> remote,
                         std::optional<duration> timeout, const std::type_info& callable)
    : core_(std::move(core)), remote_(std::move(remote)), timeout_(timeout), callable_(&callable) {
  if (core_) core_->stream_opened();
  else remote_->stream_opened();
}
stream_port::~stream_port() { done(); }
void stream_port::submit(std::shared_ptr<pool_job> job) {
  job->callable_type = callable_;
  if (core_) core_->submit(std::move(job), timeout_, true);
  else if (remote_) remote_->submit(std::move(job), timeout_, true);
}
void stream_port::done() noexcept {
  if (auto core = std::move(core_)) core->stream_closed();
  if (auto remote = std::move(remote_)) remote->stream_closed();
}
} // namespace detail

awaitable<void> pool::join() {
  if (remote_) return detail::remote_core::join(remote_);
  return detail::pool_core::join(core_);
}

std::size_t pool::size() const { return remote_ ? remote_->size() : core_->size(); }

} // namespace coproc
