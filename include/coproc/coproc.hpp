// coproc/coproc.hpp — Python's multiprocessing and subprocess as Boost.Asio coroutines.
#pragma once

#include <coproc/awaitable.hpp>
#include <coproc/errors.hpp>
#include <coproc/main_guard.hpp>
#include <coproc/partial.hpp>
#include <coproc/pipeline.hpp>
#include <coproc/pool.hpp>
#include <coproc/process.hpp>
#include <coproc/queue.hpp>
#include <coproc/run.hpp>
#include <coproc/shared_memory.hpp>
#include <coproc/start_method.hpp>
#include <coproc/subprocess.hpp>
#include <coproc/sync.hpp>
#include <coproc/this_process.hpp>
#include <coproc/wire.hpp>
