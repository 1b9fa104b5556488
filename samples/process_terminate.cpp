// Seed 003, "实例1": positional and keyword arguments (a map stands in for **kwargs);
// the parent terminates the child after one second, so it prints only twice.
#include <coproc/coproc.hpp>

#include <chrono>
#include <cstdio>
#include <map>
#include <string>
#include <thread>

using namespace std::chrono_literals;

void run_proc(const std::string& name, int age, const std::map<std::string, int>& kwargs) {
  for (int i = 0; i < 10; ++i) {
    std::printf("子进程运行中，name= %s,age=%d ,pid=%d...\n", name.c_str(), age, coproc::getpid());
    std::printf("{");
    for (auto& [key, value] : kwargs) std::printf("'%s': %d", key.c_str(), value);
    std::printf("}\n");
    std::fflush(stdout);
    std::this_thread::sleep_for(500ms);
  }
}

coproc::awaitable<void> main_process() {
  std::printf("父进程 %d.\n", coproc::getpid());
  coproc::process p(run_proc, std::string("test"), 18, std::map<std::string, int>{{"m", 20}});
  std::printf("子进程将要执行\n");
  p.start();
  // 0.75 s rather than the seed's 1 s: the child's third line (at 1.0 s) would race it.
  co_await coproc::sleep(750ms);
  p.terminate();
  co_await p.join();
  std::printf("子进程已结束\n");
}

int main() { coproc::block_on(main_process()); }
