// What a piece of the test wrote to one of its descriptors (test_process, and the
// fresh-image tests through fresh_image.hpp).
#pragma once

#include <doctest/doctest.h>

#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <functional>
#include <iostream>
#include <string>

namespace coproc_test {

// Runs f with descriptor fd redirected into a pipe; returns what was written to it (by
// this process and by the children f started and joined, which wrote to the same pipe).
// Both stdio layers are flushed on both sides, so nothing buffered crosses the boundary.
inline std::string capture(int fd, const std::function<void()>& f) {
  int p[2];
  REQUIRE(::pipe2(p, O_CLOEXEC) == 0);
  std::cout.flush();
  std::fflush(nullptr);
  int saved = ::dup(fd);
  ::dup2(p[1], fd);
  ::close(p[1]);
  f();
  std::cout.flush();
  std::fflush(nullptr);
  ::dup2(saved, fd);
  ::close(saved);
  std::string out;
  char buf[4096];
  ssize_t n;
  while ((n = ::read(p[0], buf, sizeof buf)) > 0) out.append(buf, static_cast<std::size_t>(n));
  ::close(p[0]);
  return out;
}

} // namespace coproc_test
