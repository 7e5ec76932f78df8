#include "collectives/world.hpp"

#include <fmt/format.h>
#include <mpi.h>
#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <numeric>
#include <stdexcept>

namespace shardlm {
namespace {

int checked_count(size_t count) {
  if (count > size_t(std::numeric_limits<int>::max()))
    throw std::runtime_error(
        fmt::format("collective of {} elements exceeds MPI's int count", count));
  return int(count);
}

void check(int status, const char* call) {
  if (status != MPI_SUCCESS) {
    char text[MPI_MAX_ERROR_STRING];
    int length = 0;
    MPI_Error_string(status, text, &length);
    throw std::runtime_error(fmt::format("{} failed: {}", call, std::string(text, size_t(length))));
  }
}

// Counts and displacements as MPI's v-collectives want them.
struct Layout {
  std::vector<int> counts, displs;
  explicit Layout(const std::vector<size_t>& sizes) {
    size_t offset = 0;
    for (size_t s : sizes) {
      counts.push_back(checked_count(s));
      displs.push_back(checked_count(offset));
      offset += s;
    }
  }
};

class MpiCommunicator final : public Communicator {
 public:
  explicit MpiCommunicator(MPI_Comm comm) : comm_(comm) {
    MPI_Comm_rank(comm_, &rank_);
    MPI_Comm_size(comm_, &size_);
  }
  ~MpiCommunicator() override {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized && comm_ != MPI_COMM_WORLD) MPI_Comm_free(&comm_);
  }
  int size() const override { return size_; }
  int rank() const override { return rank_; }

  void all_gather(const float* send, float* recv, size_t count) override {
    check(MPI_Allgather(send, checked_count(count), MPI_FLOAT, recv, checked_count(count),
                        MPI_FLOAT, comm_),
          "MPI_Allgather");
  }
  void all_gather_bytes(const void* send, void* recv, size_t bytes) override {
    check(MPI_Allgather(send, checked_count(bytes), MPI_BYTE, recv, checked_count(bytes), MPI_BYTE,
                        comm_),
          "MPI_Allgather");
  }
  void all_gatherv(const float* send, float* recv, const std::vector<size_t>& counts) override {
    const Layout l(counts);
    check(MPI_Allgatherv(send, l.counts[size_t(rank_)], MPI_FLOAT, recv, l.counts.data(),
                         l.displs.data(), MPI_FLOAT, comm_),
          "MPI_Allgatherv");
  }
  void reduce_scatter(const float* send, float* recv, size_t count) override {
    check(MPI_Reduce_scatter_block(send, recv, checked_count(count), MPI_FLOAT, MPI_SUM, comm_),
          "MPI_Reduce_scatter_block");
  }
  void reduce_scatterv(const float* send, float* recv, const std::vector<size_t>& counts) override {
    const Layout l(counts);
    check(MPI_Reduce_scatter(send, recv, l.counts.data(), MPI_FLOAT, MPI_SUM, comm_),
          "MPI_Reduce_scatter");
  }
  void all_reduce(float* data, size_t count) override {
    check(MPI_Allreduce(MPI_IN_PLACE, data, checked_count(count), MPI_FLOAT, MPI_SUM, comm_),
          "MPI_Allreduce");
  }
  void all_to_all(const float* send, float* recv, size_t count) override {
    check(MPI_Alltoall(send, checked_count(count), MPI_FLOAT, recv, checked_count(count), MPI_FLOAT,
                       comm_),
          "MPI_Alltoall");
  }
  void all_to_allv(const float* send, const std::vector<size_t>& send_counts, float* recv,
                   const std::vector<size_t>& recv_counts) override {
    const Layout s(send_counts), r(recv_counts);
    check(MPI_Alltoallv(send, s.counts.data(), s.displs.data(), MPI_FLOAT, recv, r.counts.data(),
                        r.displs.data(), MPI_FLOAT, comm_),
          "MPI_Alltoallv");
  }
  void broadcast(void* data, size_t bytes, int root) override {
    check(MPI_Bcast(data, checked_count(bytes), MPI_BYTE, root, comm_), "MPI_Bcast");
  }
  void send(const void* data, size_t bytes, int to) override {
    check(MPI_Send(data, checked_count(bytes), MPI_BYTE, to, 0, comm_), "MPI_Send");
  }
  void recv(void* data, size_t bytes, int from) override {
    check(MPI_Recv(data, checked_count(bytes), MPI_BYTE, from, 0, comm_, MPI_STATUS_IGNORE),
          "MPI_Recv");
  }
  std::function<void()> isend(const void* data, size_t bytes, int to) override {
    auto request = std::make_shared<MPI_Request>();
    check(MPI_Isend(data, checked_count(bytes), MPI_BYTE, to, 0, comm_, request.get()),
          "MPI_Isend");
    return [this, request] { check(MPI_Wait(request.get(), MPI_STATUS_IGNORE), "MPI_Wait"); };
  }
  void barrier() override { check(MPI_Barrier(comm_), "MPI_Barrier"); }

 private:
  MPI_Comm comm_;
  int rank_ = 0, size_ = 1;
};

// A group of one: every collective is a copy.
class SelfCommunicator final : public Communicator {
 public:
  int size() const override { return 1; }
  int rank() const override { return 0; }
  void all_gather(const float* send, float* recv, size_t count) override {
    copy(send, recv, count);
  }
  void all_gather_bytes(const void* send, void* recv, size_t bytes) override {
    if (send != recv && bytes) std::memmove(recv, send, bytes);
  }
  void all_gatherv(const float* send, float* recv, const std::vector<size_t>& counts) override {
    copy(send, recv, counts.at(0));
  }
  void reduce_scatter(const float* send, float* recv, size_t count) override {
    copy(send, recv, count);
  }
  void reduce_scatterv(const float* send, float* recv, const std::vector<size_t>& counts) override {
    copy(send, recv, counts.at(0));
  }
  void all_reduce(float*, size_t) override {}
  void all_to_all(const float* send, float* recv, size_t count) override {
    copy(send, recv, count);
  }
  void all_to_allv(const float* send, const std::vector<size_t>& send_counts, float* recv,
                   const std::vector<size_t>&) override {
    copy(send, recv, send_counts.at(0));
  }
  void broadcast(void*, size_t, int) override {}
  void send(const void*, size_t, int) override {
    throw std::logic_error("send within a group of one");
  }
  void recv(void*, size_t, int) override { throw std::logic_error("recv within a group of one"); }
  std::function<void()> isend(const void*, size_t, int) override {
    throw std::logic_error("send within a group of one");
  }
  void barrier() override {}

 private:
  static void copy(const float* from, float* to, size_t count) {
    if (from != to && count) std::memmove(to, from, count * sizeof(float));
  }
};

// The rank's label, copied where a signal handler may read it.
char g_signal_label[64] = "rank 0";

// A crashing rank must take the job down with it rather than leave the
// others waiting in a collective forever.
void abort_on_signal(int signal) {
  char message[160];
  const int length =
      std::snprintf(message, sizeof message, "shardlm: error: %s: fatal signal %d (%s)\n",
                    g_signal_label, signal, strsignal(signal));
  if (length > 0) (void)!::write(STDERR_FILENO, message, size_t(length));
  MPI_Abort(MPI_COMM_WORLD, 1);
  std::_Exit(1);
}

}  // namespace

bool World::launched_by_mpi() {
  for (const char* var : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS"})
    if (std::getenv(var)) return true;
  return false;
}

World::World() {
  if (!launched_by_mpi()) return;
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (!initialized) {
    int provided = 0;
    MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided);
  }
  mpi_ = true;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
  MPI_Comm_size(MPI_COMM_WORLD, &size_);
  // Errors come back as codes, and become exceptions naming the call.
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  set_label(fmt::format("rank {}", rank_));
  if (size_ > 1)
    for (int s : {SIGSEGV, SIGABRT, SIGBUS, SIGFPE, SIGILL}) std::signal(s, abort_on_signal);
}

void World::set_label(std::string label) {
  label_ = std::move(label);
  std::snprintf(g_signal_label, sizeof g_signal_label, "%s", label_.c_str());
}

World& World::get() {
  static World world;
  return world;
}

Communicator& World::group(const std::vector<int>& ranks) {
  auto it = groups_.find(ranks);
  if (it != groups_.end()) return *it->second;
  if (std::find(ranks.begin(), ranks.end(), rank_) == ranks.end())
    throw std::logic_error(fmt::format("rank {} asked for a group it is not in", rank_));
  std::unique_ptr<Communicator> comm;
  if (ranks.size() == 1) {
    comm = std::make_unique<SelfCommunicator>();
  } else {
    MPI_Group world_group, sub_group;
    MPI_Comm_group(MPI_COMM_WORLD, &world_group);
    MPI_Group_incl(world_group, int(ranks.size()), ranks.data(), &sub_group);
    MPI_Comm sub_comm;
    check(MPI_Comm_create_group(MPI_COMM_WORLD, sub_group, 0, &sub_comm), "MPI_Comm_create_group");
    MPI_Group_free(&sub_group);
    MPI_Group_free(&world_group);
    MPI_Comm_set_errhandler(sub_comm, MPI_ERRORS_RETURN);
    comm = std::make_unique<MpiCommunicator>(sub_comm);
  }
  return *groups_.emplace(ranks, std::move(comm)).first->second;
}

Communicator& World::all() {
  std::vector<int> ranks(static_cast<size_t>(size_));
  std::iota(ranks.begin(), ranks.end(), 0);
  return group(ranks);
}

void World::abort(int exit_code) {
  std::fflush(stdout);
  std::fflush(stderr);
  if (mpi_ && size_ > 1) MPI_Abort(MPI_COMM_WORLD, exit_code);
  finalize();
  std::exit(exit_code);
}

void World::finalize() {
  groups_.clear();
  int finalized = 0;
  if (mpi_) MPI_Finalized(&finalized);
  if (mpi_ && !finalized) MPI_Finalize();
}

}  // namespace shardlm
