// Seed 002, "使用Process类继承创建子进程": ten subclass instances run at once.
// The seed joins only its last process and relies on Python joining the rest at
// exit; coproc leaves plain children running, so this twin joins all ten.
#include <coproc/coproc.hpp>

#include <chrono>
#include <cstdio>
#include <thread>
#include <vector>

class my_process : public coproc::process {
public:
  explicit my_process(int arg) : arg_(arg) {}

protected:
  void run() override {
    std::printf("nMask %d\n", arg_);
    std::fflush(stdout);
    std::this_thread::sleep_for(std::chrono::seconds(1));
  }

private:
  int arg_;
};

coproc::awaitable<void> main_process() {
  std::vector<my_process> procs;
  for (int i = 0; i < 10; ++i) procs.emplace_back(i);
  for (auto& p : procs) p.start();
  for (auto& p : procs) co_await p.join();
}

int main() { coproc::block_on(main_process()); }
