// A library the tests dlopen after main_guard: a fresh image (spawn, forkserver, a remote
// worker) does not load it, so a pool must refuse its code with those methods.
extern "C" {
int coproc_test_plugin_triple(int x) { return 3 * x; }
void coproc_test_plugin_init() {}
}
