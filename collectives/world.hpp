#pragma once
// World: this process among all ranks of the job. Under mpirun it is the MPI
// world; started alone it is a world of one and MPI is never initialized.
// Groups of ranks get their communicator on first use and keep it: one per
// ordered rank list, created collectively by the group's members only.
#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "collectives/communicator.hpp"

namespace shardlm {

// How a communicator that waits by polling (NCCL: a stream and its async
// error) takes part in World's watchdog (--comm-timeout). Plain functions
// made by World, so a communicator built in the CUDA plugin (which carries
// its own copy of this code) reports to the process's one World.
struct CollectiveWatch {
  std::function<void(const char* what)> enter;  // World::enter_collective for the group
  std::function<void()> leave;                  // World::leave_collective
  std::function<double()> timeout_s;            // --comm-timeout now; 0: none
  std::string group;                            // "ranks 0,1": the group, for messages
};

// The cores this process may run on (its affinity mask).
int cores_allowed();

class World {
 public:
  // The process-wide world; initializes MPI on first call when launched by
  // an MPI launcher. Installs the handlers that turn a crash on one rank into
  // MPI_Abort of the whole job.
  static World& get();
  static bool launched_by_mpi();

  int rank() const { return rank_; }
  int size() const { return size_; }
  bool is_root() const { return rank_ == 0; }

  // Where the ranks run, learnt at start-up (one all-gather): the host name
  // of each rank, its node (hosts numbered in order of their first rank) and
  // its index among the ranks of its node.
  const std::string& host(int rank) const { return place(rank).host; }
  int node(int rank) const { return place(rank).node; }
  int local_rank(int rank) const { return place(rank).local_rank; }
  int ranks_on_node(int node) const;
  int nodes() const;
  // Node of every rank, in rank order (what the cost model calls a placement).
  std::vector<int> node_of_ranks() const;
  // Compute threads a rank should start when not told: the cores it may run
  // on (its CPU affinity) divided by the ranks of its node allowed on exactly
  // those cores, at least 1; OMP_NUM_THREADS wins when set.
  int default_threads(int rank) const;
  // "rank 3: host node1, local rank 1 of 2, 4 cores, 2 threads", one per rank.
  std::string placement_report() const;
  // "rank 3", or "rank 3 (node1)" when the job spans nodes: how messages name a rank.
  std::string rank_name(int rank) const;
  // "ranks 0,1 on node0, 2,3 on node1".
  std::string describe_ranks(const std::vector<int>& ranks) const;

  // The communicator of `ranks` (this process must be one of them).
  Communicator& group(const std::vector<int>& ranks);
  Communicator& all();

  // Communicators over device memory for the collectives of tensor
  // parallelism (ParallelContext::comm): NCCL where the backend is CUDA.
  // `factory` makes one from the MPI group of the same ranks (its
  // bootstrap) on first use of a rank list; they are kept until the factory
  // changes. An empty factory drops them all (the backend whose stream they
  // use is going away). Host-memory traffic (the pipeline's messages,
  // results) stays on group() and all(); the residual between pipeline stages
  // takes a device group of the two ranks (ParallelContext::device_link).
  using DeviceCommFactory = std::function<std::unique_ptr<Communicator>(
      Communicator& bootstrap, const CollectiveWatch& watch)>;
  void set_device_communicators(DeviceCommFactory factory);
  bool has_device_communicators() const { return bool(device_factory_); }
  Communicator& device_group(const std::vector<int>& ranks);

  // A collective that has not finished `seconds` after it started ends the
  // job with a message naming this rank, its host and the group it waits on
  // (a peer was stopped, or its node cut off). 0 turns the watch off.
  void set_comm_timeout(double seconds);
  double comm_timeout() const { return comm_timeout_s_.load(); }
  // Errors up to this point are ones every rank meets alike (flags, mesh,
  // config), so only rank 0 reports them; after it, each rank reports its own.
  void set_errors_agree(bool agree) { errors_agree_ = agree; }
  bool errors_agree() const { return errors_agree_; }
  // Names each rank's pipeline stage in messages: "rank 5 (stage 1)".
  void set_stages(std::vector<int> stage_of_rank);

  // Ends the whole job: MPI_Abort when several ranks run, exit otherwise.
  [[noreturn]] void abort(int exit_code);
  // MPI_Finalize when MPI was initialized; called at normal exit.
  void finalize();
  ~World();

  // Used by the communicators: marks the collective this rank is in, so that
  // the watchdog knows what it waits on. `what` must outlive the call.
  void enter_collective(const char* what, const std::vector<int>* ranks);
  void leave_collective();

 private:
  struct Place {
    std::string host;
    int node = 0, local_rank = 0, cores = 1, sharing = 1;
  };
  World();
  const Place& place(int rank) const;
  void learn_places();
  void watch();
  [[noreturn]] void comm_timed_out(const char* what, const std::vector<int>* ranks, double waited);

  int rank_ = 0;
  int size_ = 1;
  bool mpi_ = false;
  bool errors_agree_ = true;
  std::vector<Place> places_;
  std::atomic<bool> places_known_{false};  // read by the watchdog thread
  std::vector<int> stages_;                // pipeline stage of each rank, when pipelined
  std::map<std::vector<int>, std::unique_ptr<Communicator>> groups_;
  DeviceCommFactory device_factory_;
  std::map<std::vector<int>, std::unique_ptr<Communicator>> device_groups_;

  // The watchdog: the main thread publishes when its current collective
  // started (0: none), a thread checks it against the timeout.
  std::atomic<double> comm_timeout_s_{0};
  std::atomic<int64_t> collective_start_ns_{0};
  std::atomic<const char*> collective_what_{nullptr};
  std::atomic<const std::vector<int>*> collective_ranks_{nullptr};
  std::atomic<bool> stop_watch_{false};
  std::thread watchdog_;
};

}  // namespace shardlm
