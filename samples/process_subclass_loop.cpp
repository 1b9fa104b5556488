// Seed 000, "Process子类": a subclass overrides run(), which start() runs in the child.
// The seed's run() loops forever; this one stops after three rounds.
#include <coproc/coproc.hpp>

#include <chrono>
#include <cstdio>
#include <thread>

class new_process : public coproc::process {
protected:
  void run() override {
    for (int i = 0; i < 3; ++i) {
      std::printf("---1---\n");
      std::fflush(stdout);
      std::this_thread::sleep_for(std::chrono::seconds(1));
    }
  }
};

int main() {
  new_process p;
  p.start();
  coproc::block_on(p.join());
}
