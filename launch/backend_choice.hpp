#pragma once
// `--backend cpu|cuda|auto`: the Backend a command runs on. The CPU backend
// is linked in; the CUDA backend is the plugin libshardlm_cuda.so beside the
// executable (kernels/cuda/plugin.hpp), loaded with dlopen only when a CUDA
// device is visible or asked for, so CPU runs never load the CUDA libraries.
#include <CLI/CLI.hpp>
#include <memory>
#include <optional>
#include <string>

#include "collectives/world.hpp"
#include "runtime/backend.hpp"

namespace shardlm {

enum class BackendKind { kCpu, kCuda };
const char* backend_name(BackendKind kind);  // "cpu", "cuda"

// Adds --backend to `cmd`, its text stored in `value` (default "auto").
void add_backend_flag(CLI::App* cmd, std::string& value);

// The backend `flag` (cpu, cuda or auto) names on this machine: auto is cuda
// where a device is visible and the plugin loads, else cpu. `--backend cuda`
// where either is missing is a UsageError naming --backend. What it checks
// is alike on every rank of a node, so it belongs before
// World::set_errors_agree(false).
BackendKind resolve_backend(const std::string& flag);

// The activation dtype a backend of `kind` runs with: `flag` (from
// parse_activation_dtype) when given, else BF16 on CUDA and F32 on the CPU.
DType resolved_activation_dtype(BackendKind kind, std::optional<DType> flag);

struct BackendSettings {
  int threads = 0;  // CPU backend only (<= 0: all the cores this process may use)
  std::optional<DType> weight_dtype;
  DType kv_dtype = DType::BF16;
  std::optional<DType> activation_dtype;  // nullopt: the backend's (cpu F32, cuda BF16)
  int64_t streaming_max_rows = 0;         // CPU backend only (CpuBackendOptions)
  int64_t amx_streaming_max_rows = 0;
};

// A backend that, for CUDA, takes its NCCL communicators with it: the
// device groups made on its stream are dropped before it is deleted (so one
// CUDA backend at a time: bench makes one per --weights value in turn).
using BackendPtr = std::unique_ptr<Backend, void (*)(Backend*)>;

// Makes the backend `kind` (resolved) for this rank. CUDA: the device is
// this rank's local rank modulo the visible devices, and World's device
// groups become NCCL communicators on the backend's stream, bootstrapped
// from the MPI group of the same ranks; the ParallelContext whose
// collectives move this backend's tensors then needs
// set_device_collectives(backend->device() == Device::CUDA).
BackendPtr make_backend(BackendKind kind, const BackendSettings& settings, World& world);

// What `shardlm doctor` says about the CUDA backend.
struct CudaPluginReport {
  std::string path;      // where the plugin is looked for
  bool present = false;  // the file is there
  bool loads = false;    // dlopen and the ABI check passed
  std::string error;     // why it does not load
  int devices = 0;       // devices the plugin's CUDA runtime sees
};
CudaPluginReport cuda_plugin_report();

}  // namespace shardlm
