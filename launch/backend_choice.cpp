#include "launch/backend_choice.hpp"

#include <dlfcn.h>
#include <fmt/format.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>

#include "kernels/cuda/plugin.hpp"
#include "launch/system_info.hpp"
#include "runtime/errors.hpp"

namespace shardlm {
namespace {

constexpr const char* kPluginFile = "libshardlm_cuda.so";

// The running executable: the plugin is built beside it.
std::filesystem::path executable_path() {
  std::error_code error;
  const std::filesystem::path exe = std::filesystem::read_symlink("/proc/self/exe", error);
  return error ? std::filesystem::current_path() / "shardlm" : exe;
}

// The plugin's entry points, loaded once per process and never unloaded (the
// backend's code and vtables live in it).
struct CudaPlugin {
  std::filesystem::path path;
  bool present = false;
  bool loaded = false;
  std::string error;  // why not loaded
  decltype(&shardlm_cuda_device_count) device_count = nullptr;
  decltype(&shardlm_make_cuda_backend) make_backend = nullptr;
  decltype(&shardlm_make_nccl_communicator) make_communicator = nullptr;
};

const CudaPlugin& cuda_plugin() {
  static const CudaPlugin plugin = [] {
    CudaPlugin p;
    p.path = executable_path().parent_path() / kPluginFile;
    p.present = std::filesystem::exists(p.path);
    if (!p.present) {
      p.error = "not found";
      return p;
    }
    void* handle = dlopen(p.path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!handle) {
      const char* why = dlerror();
      p.error = why ? why : "dlopen failed";
      return p;
    }
    auto symbol = [&](const char* name) {
      void* s = dlsym(handle, name);
      if (!s && p.error.empty()) p.error = fmt::format("{} lacks {}", p.path.string(), name);
      return s;
    };
    auto abi =
        reinterpret_cast<decltype(&shardlm_cuda_plugin_abi)>(symbol("shardlm_cuda_plugin_abi"));
    p.device_count =
        reinterpret_cast<decltype(p.device_count)>(symbol("shardlm_cuda_device_count"));
    p.make_backend =
        reinterpret_cast<decltype(p.make_backend)>(symbol("shardlm_make_cuda_backend"));
    p.make_communicator =
        reinterpret_cast<decltype(p.make_communicator)>(symbol("shardlm_make_nccl_communicator"));
    if (!p.error.empty()) return p;
    if (const int version = abi(); version != kShardlmCudaPluginAbi) {
      p.error = fmt::format("plugin ABI {} where this shardlm expects {} (rebuild both)", version,
                            kShardlmCudaPluginAbi);
      return p;
    }
    p.loaded = true;
    return p;
  }();
  return plugin;
}

std::string visible_devices_setting() {
  const char* visible = std::getenv("CUDA_VISIBLE_DEVICES");
  return fmt::format("CUDA_VISIBLE_DEVICES={}", visible ? visible : "(not set)");
}

}  // namespace

const char* backend_name(BackendKind kind) {
  return kind == BackendKind::kCuda ? "cuda" : "cpu";
}

void add_backend_flag(CLI::App* cmd, std::string& value) {
  cmd->add_option("--backend", value,
                  "where the model runs: cpu, cuda (one GPU per rank: local rank modulo the "
                  "visible devices; needs libshardlm_cuda.so beside shardlm) or auto (cuda where "
                  "a device is visible, else cpu)")
      ->check(CLI::IsMember({"cpu", "cuda", "auto"}))
      ->capture_default_str();
}

BackendKind resolve_backend(const std::string& flag) {
  if (flag == "cpu") return BackendKind::kCpu;
  if (flag != "cuda" && flag != "auto")
    throw UsageError(fmt::format("--backend {}: expected cpu, cuda or auto", flag));
  const bool required = flag == "cuda";
  // The driver is asked first (system_info dlopens libcuda alone): without a
  // device, auto never loads the plugin and its CUDA libraries.
  const std::filesystem::path plugin_path = executable_path().parent_path() / kPluginFile;
  if (!std::filesystem::exists(plugin_path)) {
    if (!required) return BackendKind::kCpu;
    throw UsageError(fmt::format(
        "--backend cuda: this shardlm was built without the CUDA backend (no {} beside {})",
        kPluginFile, executable_path().string()));
  }
  std::string why_none;
  if (gpu_devices(why_none).empty()) {
    if (!required) return BackendKind::kCpu;
    throw UsageError(fmt::format("--backend cuda: no CUDA device is visible ({}): {}",
                                 visible_devices_setting(), why_none));
  }
  const CudaPlugin& plugin = cuda_plugin();
  if (!plugin.loaded) {
    if (required)
      throw UsageError(
          fmt::format("--backend cuda: {} did not load: {}", plugin.path.string(), plugin.error));
    warn(fmt::format(
        "--backend auto: a CUDA device is visible but {} did not load ({}); running on the CPU",
        plugin.path.string(), plugin.error));
    return BackendKind::kCpu;
  }
  if (plugin.device_count() == 0) {
    // The driver sees a device the CUDA runtime cannot use (a driver older
    // than the runtime the plugin was built with, say).
    if (!required) return BackendKind::kCpu;
    throw UsageError(fmt::format(
        "--backend cuda: no CUDA device is visible ({}): the driver lists one but the CUDA "
        "runtime {} was built with cannot use it (a driver older than that runtime?)",
        visible_devices_setting(), plugin.path.string()));
  }
  return BackendKind::kCuda;
}

DType resolved_activation_dtype(BackendKind kind, std::optional<DType> flag) {
  return flag.value_or(kind == BackendKind::kCuda ? DType::BF16 : DType::F32);
}

BackendPtr make_backend(BackendKind kind, const BackendSettings& settings, World& world) {
  if (kind == BackendKind::kCpu) {
    CpuBackendOptions options;
    options.threads = settings.threads;
    options.weight_dtype = settings.weight_dtype;
    options.kv_dtype = settings.kv_dtype;
    options.activation_dtype = resolved_activation_dtype(kind, settings.activation_dtype);
    options.streaming_max_rows = settings.streaming_max_rows;
    options.amx_streaming_max_rows = settings.amx_streaming_max_rows;
    std::unique_ptr<Backend> cpu = make_cpu_backend(options);
    return BackendPtr(cpu.release(), [](Backend* b) { delete b; });
  }
  const CudaPlugin& plugin = cuda_plugin();
  if (!plugin.loaded)
    throw std::logic_error("make_backend: the CUDA plugin is not loaded (resolve_backend first)");
  CudaBackendOptions options;
  options.local_rank = world.local_rank(world.rank());
  options.weight_dtype = settings.weight_dtype;
  options.kv_dtype = settings.kv_dtype;
  options.activation_dtype = resolved_activation_dtype(kind, settings.activation_dtype);
  BackendPtr backend(plugin.make_backend(&options), [](Backend* b) {
    // The NCCL communicators queue on this backend's stream: they go first.
    World::get().set_device_communicators(nullptr);
    delete b;
  });
  world.set_device_communicators([make = plugin.make_communicator, raw = backend.get()](
                                     Communicator& bootstrap, const CollectiveWatch& watch) {
    return std::unique_ptr<Communicator>(make(&bootstrap, raw, &watch));
  });
  return backend;
}

CudaPluginReport cuda_plugin_report() {
  CudaPluginReport report;
  const CudaPlugin& plugin = cuda_plugin();
  report.path = plugin.path.string();
  report.present = plugin.present;
  report.loads = plugin.loaded;
  report.error = plugin.error;
  if (plugin.loaded) report.devices = plugin.device_count();
  return report;
}

}  // namespace shardlm
