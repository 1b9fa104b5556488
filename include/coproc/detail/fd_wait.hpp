// coproc/detail/fd_wait.hpp — the descriptor waits behind queue and connection: one
// registration per io_context and fd, kept between waits (lib/fd_wait.cpp).
#pragma once

#include <coproc/detail/deadline.hpp>
#include <coproc/awaitable.hpp>

namespace coproc::detail {

// Sleeps on the awaiting coroutine's io_context until fd becomes readable (writable), or
// the deadline passes (false). The fd stays registered with that io_context until it
// ends or forget_fd(fd); a wake-up may be spurious, callers look again. A cancelled wait
// (the awaiting coroutine's cancellation state is cancelled when it ends, however it
// ended) throws boost::system::system_error(operation_aborted), so the caller does
// nothing more.
awaitable<bool> wait_readable(int fd, deadline until);
awaitable<bool> wait_writable(int fd, deadline until);
// Before closing an fd that may have been waited on: drops this process's registrations.
void forget_fd(int fd) noexcept;

} // namespace coproc::detail
