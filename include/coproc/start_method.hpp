// coproc/start_method.hpp — how a process or a pool worker is started (Python's
// multiprocessing start methods), and the program's default.
//
// fork: the child is a copy of this process now — its memory, its globals, its open
// descriptors — and any target or argument can be passed. Safe in a single-threaded
// program; in a program whose other threads may hold a lock (a logger, malloc's arena in
// some allocators, a library's mutex) the child can deadlock on the first such lock it
// takes, because only the forking thread exists in it. coproc's own locks are held across
// fork (docs/design.md), other libraries' are not.
//
// spawn: the child is a fresh image of this program (posix_spawn of /proc/self/exe): it
// shares nothing with the parent but descriptors 0-2, so it is safe from any thread and
// its start cost does not grow with the parent's memory. The program must call
// coproc::main_guard(argc, argv) as the first statement of main (coproc/main_guard.hpp),
// and what the child runs must travel: a function pointer, a captureless lambda or a class
// with a cereal serialize, with wire-serializable arguments (coproc/process.hpp).
//
// forkserver: not implemented yet; a start with it is std::invalid_argument.
#pragma once

namespace coproc {

enum class start_method { fork, forkserver, spawn };

// The method a process or pool uses when its options name none (default: fork). It may
// be set again and again until the first process or pool starts; after that,
// std::logic_error, even for the same method: children already started would disagree
// with later ones. A fresh image starts with its parent's default.
void set_start_method(start_method method);
start_method get_start_method() noexcept;

} // namespace coproc
