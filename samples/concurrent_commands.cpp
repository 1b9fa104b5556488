// A script author's subprocess sample: several commands run at once, each output line
// is printed as it arrives with the command's tag, and every exit code is reported.
// One thread, one io_context; no command waits for another.
#include <coproc/run.hpp>
#include <coproc/subprocess.hpp>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/read_until.hpp>

#include <cstdio>
#include <string>
#include <vector>

namespace asio = boost::asio;

struct command {
  std::string tag;
  std::vector<std::string> args;
};

// Streams one command's stdout and stderr (merged, 2>&1) line by line; returns its
// exit code.
coproc::awaitable<int> stream(command cmd) {
  auto ex = co_await asio::this_coro::executor;
  coproc::popen p(ex, cmd.args, {.out = coproc::stdio::pipe, .err = coproc::stdio::to_stdout});
  std::string buffer;
  for (;;) {
    auto [ec, n] = co_await asio::async_read_until(p.stdout_pipe(), asio::dynamic_buffer(buffer),
                                                   '\n', asio::as_tuple(asio::use_awaitable));
    if (ec) break; // EOF: the command closed its output
    std::printf("[%s] %.*s", cmd.tag.c_str(), static_cast<int>(n), buffer.data());
    std::fflush(stdout);
    buffer.erase(0, n);
  }
  if (!buffer.empty())
    std::printf("[%s] %s\n", cmd.tag.c_str(), buffer.c_str()); // no final newline
  int code = co_await p.wait();
  std::printf("[%s] exit code %d\n", cmd.tag.c_str(), code);
  co_return code;
}

coproc::awaitable<void> main_coroutine() {
  std::vector<command> commands{
      {"count", {"sh", "-c", "for i in 1 2 3; do echo tick $i; sleep 0.3; done"}},
      {"kernel", {"uname", "-sr"}},
      {"slow", {"sh", "-c", "sleep 0.5; echo woke up; echo something went wrong >&2; exit 3"}},
      {"list", {"ls", "-d", "/bin", "/etc", "/usr"}},
  };
  std::vector<coproc::awaitable<int>> runs;
  for (auto& c : commands) runs.push_back(stream(c));
  auto codes = co_await coproc::gather(std::move(runs));

  int failed = 0;
  for (std::size_t i = 0; i < codes.size(); ++i)
    if (codes[i] != 0) {
      std::printf("%s failed with exit code %d\n", commands[i].tag.c_str(), codes[i]);
      ++failed;
    }
  std::printf("%zu commands, %d failed\n", codes.size(), failed);
}

int main() { coproc::block_on(main_coroutine()); }
