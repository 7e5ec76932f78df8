#include "launch/system_info.hpp"

#include <dlfcn.h>
#include <fmt/format.h>
#include <mpi.h>
#include <oneapi/dnnl/dnnl_version.h>

#include <fstream>
#include <initializer_list>
#include <set>
#include <sstream>

#include "launch/flags.hpp"

namespace shardlm {
namespace {

// The first of `names` that loads, kept loaded for the life of the process.
void* open_library(std::initializer_list<const char*> names) {
  for (const char* name : names)
    if (void* handle = dlopen(name, RTLD_LAZY | RTLD_LOCAL)) return handle;
  return nullptr;
}

// A CUDA-style version integer (1000 * major + 10 * minor) as "major.minor".
std::string cuda_version(int v) {
  return fmt::format("{}.{}", v / 1000, (v % 1000) / 10);
}

using IntQuery = int (*)(int*);  // cuDriverGetVersion, cudaRuntimeGetVersion, ncclGetVersion

LibraryVersion query_version(const char* what, std::initializer_list<const char*> files,
                             const char* symbol, std::string (*format)(int)) {
  void* lib = open_library(files);
  if (!lib) return {what, fmt::format("not found ({})", *files.begin())};
  auto query = reinterpret_cast<IntQuery>(dlsym(lib, symbol));
  int v = 0;
  if (!query || query(&v) != 0) return {what, fmt::format("{} failed", symbol)};
  return {what, format(v)};
}

}  // namespace

std::string cpu_model() {
  std::ifstream cpuinfo("/proc/cpuinfo");
  for (std::string line; std::getline(cpuinfo, line);)
    if (line.rfind("model name", 0) == 0) return trim(line.substr(line.find(':') + 1));
  return "unknown";
}

std::vector<std::string> cpu_flags() {
  static const std::set<std::string> wanted = {
      "avx2",        "fma",         "f16c",     "avx512f",  "avx512bw", "avx512_bf16",
      "avx512_fp16", "avx512_vnni", "amx_bf16", "amx_int8", "amx_tile"};
  std::ifstream cpuinfo("/proc/cpuinfo");
  std::vector<std::string> found;
  for (std::string line; std::getline(cpuinfo, line);)
    if (line.rfind("flags", 0) == 0) {
      std::istringstream words(line.substr(line.find(':') + 1));
      for (std::string w; words >> w;)
        if (wanted.contains(w)) found.push_back(w);
      break;
    }
  return found;
}

std::string mpi_library_version() {
  char text[MPI_MAX_LIBRARY_VERSION_STRING] = {0};
  int len = 0;
  MPI_Get_library_version(text, &len);  // allowed before MPI_Init
  const std::string s(text);            // len may count the terminating NUL
  return trim(s.substr(0, s.find('\n')));
}

std::string onednn_version() {
  return fmt::format("{}.{}.{}", DNNL_VERSION_MAJOR, DNNL_VERSION_MINOR, DNNL_VERSION_PATCH);
}

std::vector<LibraryVersion> gpu_library_versions() {
  return {
      query_version("CUDA driver", {"libcuda.so.1", "libcuda.so"}, "cuDriverGetVersion",
                    cuda_version),
      query_version("CUDA runtime", {"libcudart.so.13", "libcudart.so.12", "libcudart.so"},
                    "cudaRuntimeGetVersion", cuda_version),
      // cublasLtGetVersion returns the version (major*10000 + minor*100 + patch) directly.
      [] {
        void* lib = open_library({"libcublasLt.so.13", "libcublasLt.so.12", "libcublasLt.so"});
        if (!lib) return LibraryVersion{"cuBLASLt", "not found (libcublasLt.so.13)"};
        auto get = reinterpret_cast<size_t (*)()>(dlsym(lib, "cublasLtGetVersion"));
        if (!get) return LibraryVersion{"cuBLASLt", "cublasLtGetVersion missing"};
        const size_t v = get();
        return LibraryVersion{"cuBLASLt",
                              fmt::format("{}.{}.{}", v / 10000, (v / 100) % 100, v % 100)};
      }(),
      query_version("NCCL", {"libnccl.so.2", "libnccl.so"}, "ncclGetVersion",
                    [](int v) {
                      // NCCL >= 2.9 encodes major*10000 + minor*100 + patch.
                      return fmt::format("{}.{}.{}", v / 10000, (v / 100) % 100, v % 100);
                    }),
  };
}

std::vector<GpuDevice> gpu_devices(std::string& why_none) {
  // The driver API through dlopen: the CLI does not link CUDA, so that it
  // starts, and this report works, on machines without it.
  void* lib = open_library({"libcuda.so.1", "libcuda.so"});
  if (!lib) {
    why_none = "no CUDA driver (libcuda.so.1 not found)";
    return {};
  }
  using Init = int (*)(unsigned);
  using Count = int (*)(int*);
  using Get = int (*)(int*, int);
  using Name = int (*)(char*, int, int);
  using Mem = int (*)(size_t*, int);
  using Attr = int (*)(int*, int, int);
  auto init = reinterpret_cast<Init>(dlsym(lib, "cuInit"));
  auto count = reinterpret_cast<Count>(dlsym(lib, "cuDeviceGetCount"));
  auto get = reinterpret_cast<Get>(dlsym(lib, "cuDeviceGet"));
  auto name = reinterpret_cast<Name>(dlsym(lib, "cuDeviceGetName"));
  auto mem = reinterpret_cast<Mem>(dlsym(lib, "cuDeviceTotalMem_v2"));
  auto attr = reinterpret_cast<Attr>(dlsym(lib, "cuDeviceGetAttribute"));
  if (!init || !count || !get || !name || !mem || !attr) {
    why_none = "the CUDA driver lacks the device queries";
    return {};
  }
  int n = 0;
  if (const int rc = init(0); rc != 0) {
    why_none = fmt::format("cuInit failed (CUresult {})", rc);
    return {};
  }
  if (count(&n) != 0 || n == 0) {
    why_none = "the CUDA driver sees no device (CUDA_VISIBLE_DEVICES?)";
    return {};
  }
  constexpr int kMajor = 75, kMinor = 76;  // CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_*
  std::vector<GpuDevice> devices;
  for (int i = 0; i < n; ++i) {
    int dev = 0;
    char text[256] = {0};
    size_t bytes = 0;
    GpuDevice d;
    if (get(&dev, i) != 0) continue;
    name(text, sizeof text - 1, dev);
    mem(&bytes, dev);
    attr(&d.compute_major, kMajor, dev);
    attr(&d.compute_minor, kMinor, dev);
    d.name = text;
    d.memory_bytes = static_cast<double>(bytes);
    devices.push_back(d);
  }
  return devices;
}

}  // namespace shardlm
