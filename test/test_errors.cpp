#include <coproc/errors.hpp>

#include <doctest/doctest.h>

#include "support/checks.hpp"

using namespace std::chrono_literals;

TEST_CASE("every runtime error is a coproc::error and a std::runtime_error") {
  CHECK_THROWS_AS(throw coproc::queue_empty(), coproc::error);
  CHECK_THROWS_AS(throw coproc::pool_closed(), std::runtime_error);
  CHECK_THROWS_AS(throw coproc::timeout_expired({"sleep", "9"}, 1s), coproc::timeout_error);
}

TEST_CASE("called_process_error names the command and how it ended") {
  coproc::called_process_error exited(3, {"grep", "-q", "a b", "it's"}, "out", "err");
  CHECK(std::string(exited.what()) ==
        "command 'grep -q 'a b' 'it'\"'\"'s'' returned non-zero exit status 3");
  CHECK(exited.returncode() == 3);
  CHECK(exited.cmd() == std::vector<std::string>{"grep", "-q", "a b", "it's"});
  CHECK(exited.output() == "out");
  CHECK(exited.errors() == "err");
  coproc::called_process_error killed(-9, {"yes"});
  CHECK(std::string(killed.what()) == "command 'yes' died with SIGKILL");
}

TEST_CASE("timeout_expired gives the timeout in seconds") {
  CHECK(std::string(coproc::timeout_expired({"sleep", "10"}, 250ms).what()) ==
        "command 'sleep 10' timed out after 0.25 seconds");
  CHECK(std::string(coproc::timeout_expired({"sleep", "10"}, 2s).what()) ==
        "command 'sleep 10' timed out after 2 seconds");
  CHECK(coproc::timeout_expired({"x"}, 2s, "partial").output() == "partial");
}

TEST_CASE("pool errors name the worker pid") {
  coproc::remote_error remote("std::invalid_argument", "bad input", 4242);
  CHECK(std::string(remote.what()) == "std::invalid_argument: bad input (in worker pid 4242)");
  CHECK(remote.type_name() == "std::invalid_argument");
  CHECK(remote.message() == "bad input");
  CHECK(remote.pid() == 4242);
  CHECK(std::string(coproc::worker_lost(-9, 77).what()) ==
        "worker pid 77 died with SIGKILL while running the task");
  CHECK(std::string(coproc::worker_lost(3, 77).what()) ==
        "worker pid 77 exited with status 3 while running the task");
  CHECK(std::string(coproc::worker_lost(-64, 77).what()).find("signal 64") != std::string::npos);
}

TEST_CASE("exception_type_name demangles the dynamic type") {
  std::runtime_error base("x");
  coproc::queue_full derived;
  const std::exception& as_base = derived;
  CHECK(coproc::detail::exception_type_name(base) == "std::runtime_error");
  CHECK(coproc::detail::exception_type_name(as_base) == "coproc::queue_full");
}
