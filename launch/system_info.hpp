#pragma once
// What this machine and its libraries are: the facts a bug report or a sweep's
// provenance needs. GPU libraries are looked up at run time (dlopen), so the
// report works, and says what is missing, on machines without them.
#include <string>
#include <vector>

namespace shardlm {

struct LibraryVersion {
  std::string name;     // "CUDA driver", "NCCL", ...
  std::string version;  // "13.0", or why it is unknown ("libnccl.so.2 not found")
};

struct GpuDevice {
  std::string name;
  double memory_bytes = 0;
  int compute_major = 0, compute_minor = 0;
};

std::string cpu_model();               // /proc/cpuinfo "model name"
std::vector<std::string> cpu_flags();  // the SIMD features the CPU kernels care about
std::string mpi_library_version();     // first line of MPI_Get_library_version
std::string onednn_version();
std::vector<LibraryVersion> gpu_library_versions();  // driver, runtime, cuBLASLt, NCCL
// The devices the CUDA driver sees (empty without a driver or a device), and
// why there are none.
std::vector<GpuDevice> gpu_devices(std::string& why_none);

}  // namespace shardlm
