// The target that builds test/support/precompiled.hpp for every test file.
