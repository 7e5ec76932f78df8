#pragma once
// The NCCL Communicator: the same collectives as the MPI one, on device
// memory, for ranks that each drive one GPU. Built only where the CUDA
// toolkit and NCCL are found; MPI carries the ncclUniqueId to the members.
#include <memory>

#include "collectives/communicator.hpp"
#include "collectives/world.hpp"

namespace shardlm {

// True when this process can see a CUDA device (any CUDA error means no).
bool cuda_device_available();

// A NCCL communicator over the members of `bootstrap` (an MPI group of the
// same ranks, same order), on the current CUDA device. Its collectives run
// on `stream` (a cudaStream_t: a backend's compute stream, so they queue
// behind the kernels that produce their inputs), or on a stream of its own
// when null.
//
// Each collective returns once its stream has finished it. With `watch`
// (World::device_group passes one) every set-up and collective is marked for
// World's watchdog, and a wait that outlasts watch->timeout_s(), or an
// asynchronous NCCL error (a peer gone), aborts the NCCL communicator and
// throws a message naming the collective and the group: main() then ends the
// job, naming this rank. Without `watch` only NCCL's errors end a wait.
std::unique_ptr<Communicator> make_nccl_communicator(Communicator& bootstrap,
                                                     void* stream = nullptr,
                                                     const CollectiveWatch* watch = nullptr);

}  // namespace shardlm
