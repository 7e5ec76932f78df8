// Outputs are whole or absent: what a failed write, an abandoned model
// directory or a refused path leaves behind (nothing), and what a finished
// one leaves (exactly the new content).
#include <unistd.h>

#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <stdexcept>

#include "runtime/errors.hpp"
#include "runtime/output_file.hpp"

using namespace shardlm;
namespace fs = std::filesystem;

namespace {

struct ScratchDir {
  fs::path path;
  ScratchDir() {
    path = fs::temp_directory_path() / ("shardlm-output-test-" + std::to_string(::getpid()));
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~ScratchDir() { fs::remove_all(path); }
  std::set<std::string> names() const {
    std::set<std::string> out;
    for (const auto& e : fs::directory_iterator(path)) out.insert(e.path().filename().string());
    return out;
  }
};

std::string read(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

}  // namespace

TEST_CASE("a file is renamed into place whole, replacing the old one", "[output]") {
  ScratchDir dir;
  const fs::path file = dir.path / "out.txt";
  write_file_atomically(file, "old");
  write_file_atomically(file, std::string(1 << 20, 'x'));  // larger than the write buffer
  CHECK(read(file) == std::string(1 << 20, 'x'));
  CHECK(dir.names() == std::set<std::string>{"out.txt"});
}

TEST_CASE("a writer that fails leaves the old file and no temporary", "[output]") {
  ScratchDir dir;
  const fs::path file = dir.path / "out.txt";
  write_file_atomically(file, "old");
  CHECK_THROWS_AS(write_file_atomically(file,
                                        [](std::ostream& out) {
                                          out << "half";
                                          throw std::runtime_error("stop");
                                        }),
                  std::runtime_error);
  CHECK(read(file) == "old");
  CHECK(dir.names() == std::set<std::string>{"out.txt"});
}

TEST_CASE("output paths are checked before any work", "[output]") {
  ScratchDir dir;
  CHECK_THROWS_AS(check_output_file(dir.path, "--out"), UsageError);
  CHECK_THROWS_WITH(check_output_file(dir.path / "missing" / "x", "--out"),
                    Catch::Contains("--out") && Catch::Contains("does not exist"));
  CHECK_NOTHROW(check_output_file(dir.path / "x", "--out"));
  write_file_atomically(dir.path / "file", "");
  CHECK_THROWS_WITH(check_output_directory(dir.path / "file", "--out"),
                    Catch::Contains("not a directory"));
}

TEST_CASE("a directory appears whole on commit, and not at all without", "[output]") {
  ScratchDir dir;
  const fs::path target = dir.path / "model";
  auto model_file = [](const std::string& name) { return name == "a" || name == "b"; };
  {
    OutputDirectory out(target, "--out", model_file);
    write_file_atomically(out.staging() / "a", "1");
    CHECK_FALSE(fs::exists(target));
  }  // abandoned: as if the writer had thrown
  CHECK(dir.names().empty());
  {
    OutputDirectory out(target, "--out", model_file);
    write_file_atomically(out.staging() / "a", "1");
    write_file_atomically(out.staging() / "b", "2");
    out.commit();
  }
  CHECK(dir.names() == std::set<std::string>{"model"});
  {  // an earlier output is replaced whole: "b" does not survive
    OutputDirectory out(target, "--out", model_file);
    write_file_atomically(out.staging() / "a", "3");
    out.commit();
  }
  CHECK(read(target / "a") == "3");
  CHECK_FALSE(fs::exists(target / "b"));
  CHECK(dir.names() == std::set<std::string>{"model"});
  write_file_atomically(target / "notes", "mine");
  CHECK_THROWS_WITH(OutputDirectory(target, "--out", model_file), Catch::Contains("notes"));
  CHECK(read(target / "notes") == "mine");
}
