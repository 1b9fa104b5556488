// coproc/awaitable.hpp — the coroutine type and the duration every coproc API uses.
//
// The concept headers include only this of Asio's coroutine support; block_on, gather
// and sleep (which need co_spawn, parallel_group, io_context) are in coproc/run.hpp.
//
// Asio recycles coroutine frames through a per-thread cache that it reaches through a
// thread_local. clang keeps that thread_local's address across a suspension
// (llvm/llvm-project#47179, #63022: clang 16 is affected), so a frame freed after its
// coroutine resumed on another thread of a multi-threaded io_context goes to the first
// thread's cache: a data race and, in optimised builds, heap corruption (docs/platform.md).
// Frames come from operator new instead. Every translation unit that includes Asio must
// agree, so the define comes with the coproc::coproc CMake target and the .pc file.
#pragma once

#ifndef BOOST_ASIO_DISABLE_AWAITABLE_FRAME_RECYCLING
#error                                                                                             \
    "coproc needs BOOST_ASIO_DISABLE_AWAITABLE_FRAME_RECYCLING defined in every translation unit: link the coproc::coproc CMake target or use pkg-config --cflags coproc"
#endif

#include <boost/asio/awaitable.hpp>

#include <chrono>

namespace coproc {

template <class T> using awaitable = boost::asio::awaitable<T>;
using duration = std::chrono::steady_clock::duration;

} // namespace coproc
