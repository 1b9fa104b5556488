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
// forkserver: a small server process, a fresh image of this program started on first use
// (or by forkserver_preload), forks each child; the child then runs as a spawn child does
// (what travels, main_guard, stdio as at start(), names and exit codes are the same) but
// costs the fork of a small single-threaded process, whatever this process's size or
// threads. One server per requesting process, which a forked child of it does not use (it
// starts its own); the server exits when its requester is gone, and SIGKILLs the
// requester's daemon children then (its plain children run on, as a forked plain child
// outlives its parent). A forkserver child's getppid() is the server's pid.
// (API.md speaks of the server's "last requester": with one server per process, that is
// the one process that started it; a forked child sharing it would interleave its
// requests with its parent's on the one socket.)
//
// What a forkserver child gets from the requester, and what from the server: at each
// start() only descriptors 0-2 (those open then) and the descriptors of queue and
// connection arguments travel, with the target. Everything else a fork copies is the
// server's, fixed when the server started: the environment (a setenv or putenv after
// that is not seen; spawn children get environ as it is at start()), the working
// directory, the umask, resource limits, the user and groups, the signal dispositions of
// a fresh image. Call forkserver_preload() after setting those up, or use spawn for a
// child that must see later changes.
//
// The server writes each child's wait status into a pipe whose other end the requester
// waits on, and signals a child (terminate, kill, interrupt) only until it reaps it, so a
// pid the kernel reused is never touched; no pidfd is needed. If the server dies, a child
// still running has lost its status: join() gives 255, as Python's forkserver does, and
// the child runs on, reparented and no longer this process's (terminate() and kill() leave
// it alone, as they do a child that exited).
#pragma once

namespace coproc {

enum class start_method { fork, forkserver, spawn };

// The method a process or pool uses when its options name none (default: fork). It may
// be set again and again until the first process or pool starts; after that,
// std::logic_error, even for the same method: children already started would disagree
// with later ones. A fresh image starts with its parent's default.
void set_start_method(start_method method);
start_method get_start_method() noexcept;

// Starts this process's fork server now unless it runs: before the program starts
// threads, or to keep the server's start out of the first start()'s latency. Not a start
// for set_start_method. std::logic_error without coproc::main_guard in main;
// std::system_error if the server cannot start.
void forkserver_preload();

} // namespace coproc
