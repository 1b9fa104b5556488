// coproc/awaitable.hpp — the coroutine type and the duration every coproc API uses.
//
// The concept headers include only this of Asio's coroutine support; block_on, gather
// and sleep (which need co_spawn, parallel_group, io_context) are in coproc/run.hpp.
#pragma once

#include <boost/asio/awaitable.hpp>

#include <chrono>

namespace coproc {

template <class T> using awaitable = boost::asio::awaitable<T>;
using duration = std::chrono::steady_clock::duration;

} // namespace coproc
