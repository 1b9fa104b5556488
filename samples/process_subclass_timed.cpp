// Seed 001, "继承Process来创建进程": a subclass with its own constructor argument;
// the parent times the whole run.
#include <coproc/coproc.hpp>

#include <chrono>
#include <cstdio>
#include <thread>

class my_process : public coproc::process {
public:
  explicit my_process(int interval) : interval_(interval) {}

protected:
  void run() override {
    std::printf("子进程运行中，pid=%d，父进程：%d\n", coproc::getpid(), coproc::getppid());
    auto start = std::chrono::steady_clock::now();
    std::this_thread::sleep_for(std::chrono::seconds(interval_));
    std::chrono::duration<double> took = std::chrono::steady_clock::now() - start;
    std::printf("子进程运行结束，耗时：%0.2f秒\n", took.count());
  }

private:
  int interval_;
};

int main() {
  auto start = std::chrono::steady_clock::now();
  std::printf("父进程开始执行\n");
  my_process p(2);
  p.start();
  coproc::block_on(p.join());
  std::chrono::duration<double> took = std::chrono::steady_clock::now() - start;
  std::printf("父进程运行结束，耗时：%0.2f秒\n", took.count());
}
