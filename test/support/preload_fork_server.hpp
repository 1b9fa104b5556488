// Shared by the tests that start forkserver children (test_forkserver, test_fresh_children,
// test_fork_safety, test_threaded_server, test_pool_timeout, test_pool_tasks,
// test_sync_spawn).
#pragma once

#include <coproc/start_method.hpp>

#include <doctest/doctest.h>

namespace coproc_test {

// A listener that starts the fork server before the first case (register it with
// DOCTEST_REGISTER_LISTENER): the server is then the test program's child for the whole
// run, not a child a case leaves behind.
struct preload_fork_server : doctest::IReporter {
  explicit preload_fork_server(const doctest::ContextOptions&) {}
  void test_run_start() override {
    coproc::forkserver_preload();
    // Not a start: the default may still be set.
    coproc::set_start_method(coproc::get_start_method());
  }
  void report_query(const doctest::QueryData&) override {}
  void test_run_end(const doctest::TestRunStats&) override {}
  void test_case_start(const doctest::TestCaseData&) override {}
  void test_case_reenter(const doctest::TestCaseData&) override {}
  void test_case_end(const doctest::CurrentTestCaseStats&) override {}
  void test_case_exception(const doctest::TestCaseException&) override {}
  void subcase_start(const doctest::SubcaseSignature&) override {}
  void subcase_end() override {}
  void log_assert(const doctest::AssertData&) override {}
  void log_message(const doctest::MessageData&) override {}
  void test_case_skipped(const doctest::TestCaseData&) override {}
};

} // namespace coproc_test
