// lib/sha256.hpp — SHA-256 (FIPS 180-4) and HMAC-SHA-256 (RFC 2104), for the remote pool's
// challenge-response (lib/pool_remote.cpp): no crypto library is a dependency, and these
// two are small, well known and checked against their standards' test vectors
// (test/test_pool_remote.cpp).
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

namespace coproc::detail {

using sha256_digest = std::array<unsigned char, 32>;

sha256_digest sha256(std::string_view data);
sha256_digest hmac_sha256(std::string_view key, std::string_view message);
// Lower-case hex, for tests and messages.
std::string to_hex(const sha256_digest& d);
// Compares without an early exit (the time taken does not say where they differ).
bool equal_digests(const sha256_digest& a, const sha256_digest& b) noexcept;

} // namespace coproc::detail
