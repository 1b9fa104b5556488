// coproc::pool, the public wrapper: options resolved, then everything is the core's
// (lib/pool_core.cpp the parent's side, lib/pool_worker.cpp the workers',
// lib/pool_scheduler.cpp the decisions, lib/pool_protocol.cpp the bytes between them).
#include <coproc/pool.hpp>
#include <coproc/this_process.hpp>

#include "pool_core.hpp"
#include "start_method.hpp"

#include <algorithm>
#include <stdexcept>

namespace coproc {

namespace {
pool_options resolved(pool_options options) {
  options.method = detail::resolve_start_method(options.method);
  if (options.processes == 0) options.processes = cpu_count();
  return options;
}
} // namespace

pool::pool(boost::asio::any_io_executor ex, pool_options options)
    : core_(detail::pool_core::start(std::move(ex), resolved(std::move(options)))) {
  detail::note_started();
}

pool::pool(boost::asio::any_io_executor ex, unsigned processes)
    : pool(std::move(ex), pool_options{.processes = processes}) {}

pool::~pool() {
  if (core_) core_->terminate();
}

void pool::submit(std::shared_ptr<detail::pool_job> job, const task_options& options,
                  const std::type_info& callable) {
  job->callable_type = &callable;
  core_->submit(std::move(job), options.timeout);
}

std::size_t pool::default_chunksize(std::size_t n) const {
  std::size_t groups = 4 * core_->size();
  return std::max<std::size_t>(1, (n + groups - 1) / groups);
}

void pool::close() { core_->close(); }
void pool::terminate() { core_->terminate(); }

awaitable<void> pool::join() { return detail::pool_core::join(core_); }

std::size_t pool::size() const { return core_->size(); }

} // namespace coproc
