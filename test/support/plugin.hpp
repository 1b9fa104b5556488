// The test plugin (support/plugin.cpp), dlopened after main_guard at COPROC_TEST_PLUGIN.
#pragma once

#include <dlfcn.h>

#include <stdexcept>
#include <string>

namespace coproc_test {

// The plugin's function `name`, loading the plugin on first use (it stays loaded).
template <class Fn> Fn* plugin_function(const char* name) {
  static void* plugin = ::dlopen(COPROC_TEST_PLUGIN, RTLD_NOW | RTLD_LOCAL);
  if (!plugin)
    throw std::runtime_error(std::string("dlopen ") + COPROC_TEST_PLUGIN + ": " + ::dlerror());
  auto* fn = reinterpret_cast<Fn*>(::dlsym(plugin, name));
  if (!fn) throw std::runtime_error(std::string("dlsym ") + name + " in " + COPROC_TEST_PLUGIN);
  return fn;
}

} // namespace coproc_test
