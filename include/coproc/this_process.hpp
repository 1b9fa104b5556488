// coproc/this_process.hpp — os.getpid/getppid/fork, cpu_count, the process name.
#pragma once

#include <string>

namespace coproc {

int getpid();
int getppid();

// os.fork(): 0 in the child, the child's pid in the parent. C stdio and the standard
// iostreams are flushed first, so nothing buffered is printed twice. In the child,
// coproc's own bookkeeping (children of the parent, the background reaper) is reset;
// an io_context of the parent must not be run in the child (use block_on of coproc/run.hpp, or call
// notify_fork(fork_child) on it first). std::system_error when fork fails.
int fork();

unsigned cpu_count();

namespace this_process {
// "MainProcess" in the program, the process's name in a coproc::process child,
// "ForkPoolWorker-N" in a pool worker.
std::string name();
} // namespace this_process

} // namespace coproc
