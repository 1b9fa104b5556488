// line_reader: lines from a pipe as they arrive, with a bound on their length.
#include <coproc/subprocess.hpp>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <system_error>

namespace coproc {

namespace {
constexpr std::size_t read_size = 64 * 1024;

line_too_long too_long(std::size_t bound, int fd) {
  return line_too_long("coproc::line_reader: a line longer than " + std::to_string(bound) +
                       " bytes on descriptor " + std::to_string(fd) +
                       " (dropped through its newline)");
}
} // namespace

line_reader::line_reader(boost::asio::readable_pipe& pipe, std::size_t max_line)
    : pipe_(&pipe), max_line_(max_line) {}

awaitable<std::optional<std::string>> line_reader::next() {
  for (;;) {
    auto newline = buffer_.find('\n', scanned_);
    if (newline != std::string::npos) {
      std::size_t begin = start_, length = newline - start_;
      bool skipped = skipping_;
      start_ = scanned_ = newline + 1;
      skipping_ = false;
      if (skipped) continue;
      if (length > max_line_) throw too_long(max_line_, pipe_->native_handle());
      co_return buffer_.substr(begin, length);
    }
    scanned_ = buffer_.size();
    if (skipping_) {
      buffer_.clear();
      start_ = scanned_ = 0;
    } else if (buffer_.size() - start_ > max_line_) {
      // Not split: the caller learns that the line was too long, and the next call
      // starts at the line after it.
      buffer_.clear();
      start_ = scanned_ = 0;
      skipping_ = true;
      throw too_long(max_line_, pipe_->native_handle());
    }
    if (eof_) {
      if (start_ == buffer_.size()) co_return std::nullopt;
      std::string last = buffer_.substr(start_);
      buffer_.clear();
      start_ = scanned_ = 0;
      co_return last;
    }
    // What was returned is dropped before reading more, so the buffer holds at most
    // one line and one read.
    buffer_.erase(0, start_);
    scanned_ -= start_;
    start_ = 0;
    std::size_t filled = buffer_.size();
    buffer_.resize(filled + read_size);
    auto [ec, n] =
        co_await pipe_->async_read_some(boost::asio::buffer(buffer_.data() + filled, read_size),
                                        boost::asio::as_tuple(boost::asio::use_awaitable));
    buffer_.resize(filled + n);
    if (ec == boost::asio::error::eof) {
      eof_ = true;
    } else if (ec == boost::asio::error::operation_aborted) {
      throw boost::system::system_error(ec);
    } else if (ec) {
      throw std::system_error(ec.value(), std::generic_category(),
                              "coproc::line_reader: reading descriptor " +
                                  std::to_string(pipe_->native_handle()));
    }
  }
}

} // namespace coproc
