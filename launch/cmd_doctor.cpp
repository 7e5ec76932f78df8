// `shardlm doctor`: what this machine, its libraries and (under mpirun) the
// job's placement are: the text to paste into a bug report.
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <unistd.h>

#include <cstdlib>

#include "collectives/world.hpp"
#include "kernels/cpu/cpu_kernels.hpp"
#include "launch/backend_choice.hpp"
#include "launch/commands.hpp"
#include "launch/openmp_wait.hpp"
#include "launch/system_info.hpp"

namespace shardlm {
namespace {

void print_doctor() {
  const bool mpi = World::launched_by_mpi();
  World* world = mpi ? &World::get() : nullptr;
  // Every rank takes part in learning the placement (a collective on first
  // use); rank 0 prints.
  const int nodes = world ? world->nodes() : 1;
  if (world && !world->is_root()) return;
  fmt::print("shardlm doctor\n");
#ifdef __clang__
  fmt::print("  compiler:     clang {}\n", __clang_version__);
#else
  fmt::print("  compiler:     GCC {}\n", __VERSION__);
#endif
  fmt::print("  cpu:          {} ({} logical CPUs)\n", cpu_model(), sysconf(_SC_NPROCESSORS_ONLN));
  fmt::print("  cpu features: {}\n", fmt::join(cpu_flags(), " "));
  fmt::print("  oneDNN:       {}\n", onednn_version());
  if (cpu::amx_available())
    fmt::print(
        "  AMX:          BF16 weights multiply on AMX tiles above {} rows, int8 above its "
        "streaming limit\n",
        cpu::amx_streaming_max_rows());
  else
    fmt::print(
        "  AMX:          not used (the CPU lacks AMX-BF16, the kernel refused its state, or "
        "SHARDLM_AMX=0)\n");
  fmt::print("  OpenMP waits: {}\n", openmp_wait_description());
  fmt::print("  MPI:          {}\n", mpi_library_version());
  for (const LibraryVersion& lib : gpu_library_versions())
    fmt::print("  {:<13} {}\n", lib.name + ":", lib.version);
  const char* visible = std::getenv("CUDA_VISIBLE_DEVICES");
  fmt::print("  CUDA_VISIBLE_DEVICES: {}\n", visible ? visible : "(not set)");
  std::string why_none;
  const std::vector<GpuDevice> gpus = gpu_devices(why_none);
  if (gpus.empty()) fmt::print("  GPUs:         none: {}\n", why_none);
  for (size_t i = 0; i < gpus.size(); ++i)
    fmt::print("  GPU {}:        {}, {:.1f} GiB, compute capability {}.{}\n", i, gpus[i].name,
               gpus[i].memory_bytes / (1u << 30), gpus[i].compute_major, gpus[i].compute_minor);
  // The plugin is loaded here even without a device: whether its libraries
  // (CUDA runtime, cuBLASLt, NCCL) resolve is half of what --backend cuda needs.
  const CudaPluginReport plugin = cuda_plugin_report();
  if (!plugin.present)
    fmt::print("  CUDA backend: not built (no {} beside the executable)\n", plugin.path);
  else if (!plugin.loads)
    fmt::print("  CUDA backend: {} does not load: {}\n", plugin.path, plugin.error);
  else
    fmt::print("  CUDA backend: {} loads; its CUDA runtime sees {} device{}\n", plugin.path,
               plugin.devices, plugin.devices == 1 ? "" : "s");
  fmt::print("  --backend auto: {}\n", backend_name(resolve_backend("auto")));
  if (world) {
    fmt::print("  job:          {} ranks on {} node{}\n", world->size(), nodes,
               nodes == 1 ? "" : "s");
    fmt::print("{}", world->placement_report());
  } else {
    fmt::print("  job:          one process (not under mpirun)\n");
  }
}

}  // namespace

void add_doctor_command(CLI::App& app) {
  CLI::App* cmd = app.add_subcommand(
      "doctor",
      "Print the machine, library versions, GPUs and (under mpirun) where each rank runs: "
      "what a bug report needs");
  cmd->callback(print_doctor);
}

}  // namespace shardlm
