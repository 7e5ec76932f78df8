#include "runtime/output_file.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <streambuf>

#include "runtime/errors.hpp"

namespace shardlm {
namespace fs = std::filesystem;
namespace {

// The temporary file and directory being written; empty when none. Plain
// arrays, so that a signal handler can read them.
char g_partial_file[4096];
char g_partial_dir[4096];

void publish(char (&slot)[4096], const fs::path& path) {
  std::snprintf(slot, sizeof slot, "%s", path.c_str());
}

// NAME.partial-PID beside NAME: unique per process, and found by anyone who
// looks for what NAME left behind.
fs::path temporary_beside(const fs::path& target) {
  fs::path name = target.filename();
  if (name.empty()) name = target.parent_path().filename();  // "dir/"
  return target.parent_path() / fmt::format("{}.partial-{}", name.string(), ::getpid());
}

fs::path directory_of(const fs::path& path) {
  const fs::path dir = path.parent_path();
  return dir.empty() ? fs::path(".") : dir;
}

void check_parent(const fs::path& path, std::string_view flag) {
  const fs::path dir = directory_of(path);
  std::error_code ec;
  const fs::file_status st = fs::status(dir, ec);
  if (!fs::exists(st))
    throw UsageError(
        fmt::format("{} {}: directory {} does not exist", flag, path.string(), dir.string()));
  if (!fs::is_directory(st))
    throw UsageError(
        fmt::format("{} {}: {} is not a directory", flag, path.string(), dir.string()));
  if (::access(dir.c_str(), W_OK | X_OK) != 0)
    throw UsageError(fmt::format("{} {}: cannot write in {}: {}", flag, path.string(), dir.string(),
                                 std::strerror(errno)));
}

// An ostream's buffer over a file descriptor, keeping the first write error
// (errno) so the message can say "No space left on device".
class FdBuffer : public std::streambuf {
 public:
  explicit FdBuffer(int fd) : fd_(fd) { setp(buffer_, buffer_ + sizeof buffer_); }
  int error() const { return error_; }
  // Writes what is buffered; false (and error() set) on failure.
  bool drain() {
    const char* p = pbase();
    while (p < pptr() && error_ == 0) {
      const ssize_t n = ::write(fd_, p, size_t(pptr() - p));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0)
        error_ = n < 0 ? errno : EIO;
      else
        p += n;
    }
    setp(buffer_, buffer_ + sizeof buffer_);
    return error_ == 0;
  }

 protected:
  int_type overflow(int_type c) override {
    if (!drain()) return traits_type::eof();
    if (!traits_type::eq_int_type(c, traits_type::eof())) {
      *pptr() = traits_type::to_char_type(c);
      pbump(1);
    }
    return traits_type::not_eof(c);
  }
  std::streamsize xsputn(const char* s, std::streamsize n) override {
    if (n >= std::streamsize(sizeof buffer_)) {  // large blocks bypass the buffer
      if (!drain()) return 0;
      for (std::streamsize done = 0; done < n;) {
        const ssize_t w = ::write(fd_, s + done, size_t(n - done));
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) {
          error_ = w < 0 ? errno : EIO;
          return done;
        }
        done += w;
      }
      return n;
    }
    return std::streambuf::xsputn(s, n);
  }
  int sync() override { return drain() ? 0 : -1; }

 private:
  int fd_;
  int error_ = 0;
  char buffer_[1 << 16];
};

// Removes every entry of a flat directory, then the directory, with system
// calls only (a signal handler may run it).
void remove_flat_directory(const char* dir) {
  const int fd = ::open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd >= 0) {
    alignas(8) char buffer[4096];
    for (;;) {
      const long n = ::syscall(SYS_getdents64, fd, buffer, sizeof buffer);
      if (n <= 0) break;
      for (long offset = 0; offset < n;) {
        struct Entry {
          uint64_t ino;
          int64_t off;
          unsigned short reclen;
          unsigned char type;
          char name[1];
        };
        const auto* e = reinterpret_cast<const Entry*>(buffer + offset);
        const bool dot =
            e->name[0] == '.' && (e->name[1] == '\0' || (e->name[1] == '.' && e->name[2] == '\0'));
        if (!dot) ::unlinkat(fd, e->name, 0);
        offset += e->reclen;
      }
    }
    ::close(fd);
  }
  ::rmdir(dir);
}

}  // namespace

void check_output_file(const fs::path& path, std::string_view flag) {
  std::error_code ec;
  if (fs::is_directory(path, ec))
    throw UsageError(fmt::format("{} {}: is a directory (expected the name of a file to write)",
                                 flag, path.string()));
  check_parent(path, flag);
  const long name_max = ::pathconf(directory_of(path).c_str(), _PC_NAME_MAX);
  // The temporary's name is the file's plus ".partial-PID".
  const size_t suffix =
      temporary_beside(path).filename().string().size() - path.filename().string().size();
  if (name_max > 0 && path.filename().string().size() + suffix > size_t(name_max))
    throw UsageError(fmt::format("{} {}: file name too long (at most {} bytes here)", flag,
                                 path.string(), size_t(name_max) - suffix));
}

void check_output_directory(const fs::path& path, std::string_view flag) {
  std::error_code ec;
  const fs::file_status st = fs::status(path, ec);
  if (fs::exists(st) && !fs::is_directory(st))
    throw UsageError(fmt::format("{} {}: exists and is not a directory", flag, path.string()));
}

void write_file_atomically(const fs::path& path, const std::function<void(std::ostream&)>& write) {
  const fs::path partial = temporary_beside(path);
  // Published before the file exists, so that a signal from here on removes it.
  publish(g_partial_file, partial);
  const int fd = ::open(partial.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
  if (fd < 0) {
    const int error = errno;
    g_partial_file[0] = '\0';
    throw DataError(fmt::format("{}: cannot create: {}", path.string(), std::strerror(error)));
  }
  auto discard = [&] {
    ::close(fd);
    ::unlink(partial.c_str());
    g_partial_file[0] = '\0';
  };
  FdBuffer buffer(fd);
  try {
    std::ostream out(&buffer);
    write(out);
  } catch (...) {
    discard();
    throw;
  }
  // Durable before it is visible: a crash after the rename finds it whole.
  int error = buffer.drain() ? 0 : buffer.error();
  if (error == 0 && ::fsync(fd) != 0) error = errno;
  if (::close(fd) != 0 && error == 0) error = errno;
  if (error != 0) {
    ::unlink(partial.c_str());
    g_partial_file[0] = '\0';
    throw DataError(fmt::format("{}: write failed: {}", path.string(), std::strerror(error)));
  }
  if (::rename(partial.c_str(), path.c_str()) != 0) {
    error = errno;
    ::unlink(partial.c_str());
    g_partial_file[0] = '\0';
    throw DataError(fmt::format("{}: cannot rename {} into place: {}", path.string(),
                                partial.filename().string(), std::strerror(error)));
  }
  g_partial_file[0] = '\0';
}

void write_file_atomically(const fs::path& path, std::string_view content) {
  write_file_atomically(
      path, [&](std::ostream& out) { out.write(content.data(), std::streamsize(content.size())); });
}

OutputDirectory::OutputDirectory(fs::path target, std::string_view flag,
                                 std::function<bool(const std::string&)> replaceable)
    : target_(std::move(target)) {
  check_output_directory(target_, flag);
  // "out/", "." and "a/../b" name the directory itself: the staging
  // directory must sit beside it, not in it.
  std::error_code absolute_error;
  target_ = fs::absolute(target_, absolute_error).lexically_normal();
  if (!target_.has_filename()) target_ = target_.parent_path();
  if (absolute_error || target_ == target_.root_path())
    throw UsageError(
        fmt::format("{} {}: not a directory this command can replace", flag, target_.string()));
  std::error_code ec;
  if (fs::is_directory(target_, ec))
    for (const fs::directory_entry& e : fs::directory_iterator(target_, ec))
      if (!e.is_regular_file(ec) || !replaceable(e.path().filename().string()))
        throw UsageError(fmt::format(
            "{} {}: holds {}, which this command does not write; give a new or empty directory",
            flag, target_.string(), e.path().filename().string()));
  // Missing parents are created (`--out models-out/tiny` in a fresh checkout).
  const fs::path parent = directory_of(target_);
  fs::create_directories(parent, ec);
  if (ec)
    throw UsageError(fmt::format("{} {}: cannot create {}: {}", flag, target_.string(),
                                 parent.string(), ec.message()));
  staging_ = temporary_beside(target_);
  publish(g_partial_dir, staging_);
  if (::mkdir(staging_.c_str(), 0777) != 0) {
    const int error = errno;
    g_partial_dir[0] = '\0';
    throw UsageError(fmt::format("{} {}: cannot create {}: {}", flag, target_.string(),
                                 staging_.string(), std::strerror(error)));
  }
}

OutputDirectory::~OutputDirectory() {
  if (committed_) return;
  remove_flat_directory(staging_.c_str());
  g_partial_dir[0] = '\0';
}

void OutputDirectory::commit() {
  // rename() replaces a missing or empty directory; a directory of earlier
  // outputs is swapped with the new one in one step, then removed.
  if (::rename(staging_.c_str(), target_.c_str()) != 0) {
    if ((errno != ENOTEMPTY && errno != EEXIST) ||
        ::renameat2(AT_FDCWD, staging_.c_str(), AT_FDCWD, target_.c_str(), RENAME_EXCHANGE) != 0)
      throw DataError(fmt::format("{}: cannot rename {} into place: {}", target_.string(),
                                  staging_.filename().string(), std::strerror(errno)));
    remove_flat_directory(staging_.c_str());  // now the earlier outputs
  }
  committed_ = true;
  g_partial_dir[0] = '\0';
}

void remove_partial_output() {
  if (g_partial_file[0]) ::unlink(g_partial_file);
  if (g_partial_dir[0]) remove_flat_directory(g_partial_dir);
}

}  // namespace shardlm
