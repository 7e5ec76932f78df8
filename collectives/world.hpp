#pragma once
// World: this process among all ranks of the job. Under mpirun it is the MPI
// world; started alone it is a world of one and MPI is never initialized.
// Groups of ranks get their communicator on first use and keep it: one per
// ordered rank list, created collectively by the group's members only.
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "collectives/communicator.hpp"

namespace shardlm {

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

  // The communicator of `ranks` (this process must be one of them).
  Communicator& group(const std::vector<int>& ranks);
  Communicator& all();

  // How messages name this rank: "rank R", or with a pipeline "rank R (stage S)".
  const std::string& label() const { return label_; }
  void set_label(std::string label);

  // Ends the whole job: MPI_Abort when several ranks run, exit otherwise.
  [[noreturn]] void abort(int exit_code);
  // MPI_Finalize when MPI was initialized; called at normal exit.
  void finalize();

 private:
  World();
  int rank_ = 0;
  int size_ = 1;
  bool mpi_ = false;
  std::string label_ = "rank 0";
  std::map<std::vector<int>, std::unique_ptr<Communicator>> groups_;
};

}  // namespace shardlm
