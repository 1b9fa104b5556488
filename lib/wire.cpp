#include <coproc/wire.hpp>

#include <boost/core/demangle.hpp>

namespace coproc::wire {

void input_archive::fail(const std::string& why) const {
  throw coproc::error("coproc::wire: malformed " + boost::core::demangle(type_.name()) +
                      " frame of " + std::to_string(bytes_.size()) + " bytes: " + why);
}

} // namespace coproc::wire
