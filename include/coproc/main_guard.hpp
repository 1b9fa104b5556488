// coproc/main_guard.hpp — the entry of a fresh image of this program.
//
//   int main(int argc, char** argv) {
//     coproc::main_guard(argc, argv); // first statement
//     ...
//   }
//
// start_method::spawn starts a child as a fresh image of this program (posix_spawn of
// /proc/self/exe), which runs the program's static initialization and then main, as any
// run does; main_guard is where it turns into the child (forkserver starts its server so,
// and forks its children inside it). In an ordinary run it returns at once. In a
// fresh image started by coproc it runs the child's work (a process's target, a pool
// worker, a fork server) and never returns: main's own work never runs in the child, and
// every static object of the program is constructed before a target runs, whatever the
// link order and whether libcoproc is a static or a shared library. Python's
// `if __name__ == "__main__":` guard plays the same part.
//
// argc and argv are main's own: the fresh images this program starts get the same
// argv, so ps, top and pkill -f see a spawn child (and the fork server) as they see a fork
// child. An argc below 0, or a null argv with an argc above 0, is std::invalid_argument.
//
// A program that starts a spawn or forkserver child without having called main_guard gets
// a std::logic_error from process::start(), the pool's constructor or forkserver_preload(). A
// program started with a coproc environment that coproc did not make (COPROC_FRESH_IMAGE by hand)
// prints what is wrong on stderr and exits with status 70.
#pragma once

namespace coproc {

void main_guard(int argc, char** argv);

} // namespace coproc
