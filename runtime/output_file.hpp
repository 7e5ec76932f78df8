#pragma once
// Every file shardlm writes is whole or absent. A file is written under a
// temporary name in its target's directory and renamed into place once it is
// complete and flushed; a directory of files (a model) is built under a
// temporary name beside its target and renamed into place once every file in
// it is written. A failure (a full disk, a write error) removes the temporary,
// and so does SIGINT/SIGTERM through remove_partial_output(). Paths are
// checked before any work: a path that is a directory, or whose directory is
// missing, is a UsageError naming the flag.
#include <filesystem>
#include <functional>
#include <ostream>
#include <string>
#include <string_view>

namespace shardlm {

// UsageError unless `path` can become a file: not an existing directory, its
// directory existing and writable. `flag` names where the path came from.
void check_output_file(const std::filesystem::path& path, std::string_view flag);

// UsageError unless `path` can become a directory of outputs: absent or a
// directory, its parent existing and writable.
void check_output_directory(const std::filesystem::path& path, std::string_view flag);

// Writes `path` through `write` into a temporary file beside it, then renames
// it into place. DataError naming `path` when anything fails (nothing is left).
void write_file_atomically(const std::filesystem::path& path,
                           const std::function<void(std::ostream&)>& write);
void write_file_atomically(const std::filesystem::path& path, std::string_view content);

// A directory built under a temporary name beside `target`. Files go into
// staging(); commit() renames it to `target`, replacing a directory there
// whose files are all named in `replaceable` (an earlier output of the same
// kind); any other non-empty directory is refused before work starts. Without
// commit() the staging directory and what it holds are removed.
class OutputDirectory {
 public:
  OutputDirectory(std::filesystem::path target, std::string_view flag,
                  std::function<bool(const std::string& file_name)> replaceable);
  ~OutputDirectory();
  OutputDirectory(const OutputDirectory&) = delete;
  OutputDirectory& operator=(const OutputDirectory&) = delete;

  const std::filesystem::path& staging() const { return staging_; }
  void commit();

 private:
  std::filesystem::path target_, staging_;
  bool committed_ = false;
};

// Removes the temporary file and directory of writes in progress, if any;
// async-signal-safe, for the SIGINT/SIGTERM handler (an interrupted job
// leaves no partial output).
void remove_partial_output();

}  // namespace shardlm
