// coproc/start_method.hpp — how a process or a pool worker is started (Python's
// multiprocessing start methods).
#pragma once

namespace coproc {

// Only fork is implemented for coproc::process; start() refuses the others with
// std::invalid_argument until they are (they need serializable targets). The pool also
// implements spawn (coproc/pool.hpp).
enum class start_method { fork, forkserver, spawn };

} // namespace coproc
