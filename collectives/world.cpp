#include "collectives/world.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <mpi.h>
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <numeric>
#include <stdexcept>
#include <thread>

#include "kernels/math.hpp"

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

// Sums of 16-bit elements: each pair is added in F32 and rounded back, as
// NCCL sums them. MPI has no BF16 or F16 type; the elements travel as
// MPI_UINT16_T with these operations.
template <float (*to_float)(uint16_t), uint16_t (*from_float)(float)>
void sum_16bit(void* in, void* inout, int* length, MPI_Datatype*) {
  const auto* a = static_cast<const uint16_t*>(in);
  auto* b = static_cast<uint16_t*>(inout);
  for (int i = 0; i < *length; ++i) b[i] = from_float(to_float(a[i]) + to_float(b[i]));
}

// The MPI datatype of an element type, and its sum (MPI_OP_NULL where the
// collectives sum none: I8 and I32 are only moved).
struct MpiElement {
  MPI_Datatype type;
  MPI_Op sum;
};

MpiElement mpi_element(DType dtype) {
  // Made on first use, after MPI_Init; freed by MPI_Finalize.
  static MPI_Op bf16_sum = MPI_OP_NULL, f16_sum = MPI_OP_NULL;
  switch (dtype) {
    case DType::F32: return {MPI_FLOAT, MPI_SUM};
    case DType::I8: return {MPI_INT8_T, MPI_OP_NULL};
    case DType::I32: return {MPI_INT32_T, MPI_OP_NULL};
    case DType::BF16:
      if (bf16_sum == MPI_OP_NULL)
        MPI_Op_create(&sum_16bit<math::bf16_to_float, math::float_to_bf16>, 1, &bf16_sum);
      return {MPI_UINT16_T, bf16_sum};
    case DType::F16:
      if (f16_sum == MPI_OP_NULL)
        MPI_Op_create(&sum_16bit<math::f16_to_float, math::float_to_f16>, 1, &f16_sum);
      return {MPI_UINT16_T, f16_sum};
  }
  throw std::logic_error("collective of an unknown element type");
}

// The element type's sum: F32, BF16 and F16 only.
MpiElement mpi_summed(DType dtype) {
  const MpiElement e = mpi_element(dtype);
  if (e.sum == MPI_OP_NULL)
    throw std::logic_error(
        fmt::format("sum of {} elements: F32, BF16 or F16 expected", dtype_name(dtype)));
  return e;
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

int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// Marks one call as a collective of `ranks` for the watchdog.
class Watched {
 public:
  Watched(World& world, const char* what, const std::vector<int>* ranks) : world_(world) {
    world_.enter_collective(what, ranks);
  }
  ~Watched() { world_.leave_collective(); }
  Watched(const Watched&) = delete;
  Watched& operator=(const Watched&) = delete;

 private:
  World& world_;
};

void wait_idle(MPI_Request& request, const char* call) {
  auto pause = std::chrono::microseconds(2);
  for (int done = 0;;) {
    check(MPI_Test(&request, &done, MPI_STATUS_IGNORE), call);
    if (done) return;
    std::this_thread::sleep_for(pause);
    pause = std::min(pause * 2, std::chrono::microseconds(200));
  }
}

class MpiCommunicator final : public Communicator {
 public:
  MpiCommunicator(MPI_Comm comm, World& world, std::vector<int> ranks)
      : comm_(comm), world_(world), ranks_(std::move(ranks)) {
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

  void all_gather(const void* send, void* recv, size_t count, DType type) override {
    const MPI_Datatype t = mpi_element(type).type;
    const Watched watched(world_, "all-gather", &ranks_);
    check(MPI_Allgather(send, checked_count(count), t, recv, checked_count(count), t, comm_),
          "MPI_Allgather");
  }
  void all_gatherv(const void* send, void* recv, const std::vector<size_t>& counts,
                   DType type) override {
    const Layout l(counts);
    const MPI_Datatype t = mpi_element(type).type;
    const Watched watched(world_, "all-gather", &ranks_);
    check(MPI_Allgatherv(send, l.counts[size_t(rank_)], t, recv, l.counts.data(), l.displs.data(),
                         t, comm_),
          "MPI_Allgatherv");
  }
  void reduce_scatter(const void* send, void* recv, size_t count, DType type) override {
    const MpiElement e = mpi_summed(type);
    const Watched watched(world_, "reduce-scatter", &ranks_);
    check(MPI_Reduce_scatter_block(send, recv, checked_count(count), e.type, e.sum, comm_),
          "MPI_Reduce_scatter_block");
  }
  void reduce_scatterv(const void* send, void* recv, const std::vector<size_t>& counts,
                       DType type) override {
    const Layout l(counts);
    const MpiElement e = mpi_summed(type);
    const Watched watched(world_, "reduce-scatter", &ranks_);
    check(MPI_Reduce_scatter(send, recv, l.counts.data(), e.type, e.sum, comm_),
          "MPI_Reduce_scatter");
  }
  void all_reduce(void* data, size_t count, DType type) override {
    const MpiElement e = mpi_summed(type);
    const Watched watched(world_, "all-reduce", &ranks_);
    check(MPI_Allreduce(MPI_IN_PLACE, data, checked_count(count), e.type, e.sum, comm_),
          "MPI_Allreduce");
  }
  void all_to_all(const void* send, void* recv, size_t count, DType type) override {
    const MPI_Datatype t = mpi_element(type).type;
    const Watched watched(world_, "all-to-all", &ranks_);
    check(MPI_Alltoall(send, checked_count(count), t, recv, checked_count(count), t, comm_),
          "MPI_Alltoall");
  }
  void all_to_allv(const void* send, const std::vector<size_t>& send_counts, void* recv,
                   const std::vector<size_t>& recv_counts, DType type) override {
    const Layout s(send_counts), r(recv_counts);
    const MPI_Datatype t = mpi_element(type).type;
    const Watched watched(world_, "all-to-all", &ranks_);
    check(MPI_Alltoallv(send, s.counts.data(), s.displs.data(), t, recv, r.counts.data(),
                        r.displs.data(), t, comm_),
          "MPI_Alltoallv");
  }
  void broadcast(void* data, size_t bytes, int root) override {
    const Watched watched(world_, "broadcast", &ranks_);
    check(MPI_Bcast(data, checked_count(bytes), MPI_BYTE, root, comm_), "MPI_Bcast");
  }
  // Point-to-point waits sleep between polls instead of spinning as MPI's
  // blocking calls do: a pipeline stage waiting for its neighbour must leave
  // the core (often a hyperthread sibling) to the ranks that compute. The
  // poll interval grows to 200 us, little beside a stage's work.
  void send(const void* data, size_t bytes, int to) override {
    const Watched watched(world_, "send", &ranks_);
    MPI_Request request;
    check(MPI_Isend(data, checked_count(bytes), MPI_BYTE, to, 0, comm_, &request), "MPI_Isend");
    wait_idle(request, "MPI_Send");
  }
  void recv(void* data, size_t bytes, int from) override {
    const Watched watched(world_, "receive", &ranks_);
    MPI_Request request;
    check(MPI_Irecv(data, checked_count(bytes), MPI_BYTE, from, 0, comm_, &request), "MPI_Irecv");
    wait_idle(request, "MPI_Recv");
  }
  std::function<void()> isend(const void* data, size_t bytes, int to) override {
    auto request = std::make_shared<MPI_Request>();
    check(MPI_Isend(data, checked_count(bytes), MPI_BYTE, to, 0, comm_, request.get()),
          "MPI_Isend");
    return [this, request] {
      const Watched watched(world_, "send", &ranks_);
      wait_idle(*request, "MPI_Isend");
    };
  }
  void barrier() override { check(MPI_Barrier(comm_), "MPI_Barrier"); }

 private:
  MPI_Comm comm_;
  World& world_;
  std::vector<int> ranks_;  // world ranks of the members, for the watchdog's message
  int rank_ = 0, size_ = 1;
};

// A group of one: every collective is a copy.
class SelfCommunicator final : public Communicator {
 public:
  int size() const override { return 1; }
  int rank() const override { return 0; }
  void all_gather(const void* send, void* recv, size_t count, DType type) override {
    copy(send, recv, count, type);
  }
  void all_gatherv(const void* send, void* recv, const std::vector<size_t>& counts,
                   DType type) override {
    copy(send, recv, counts.at(0), type);
  }
  void reduce_scatter(const void* send, void* recv, size_t count, DType type) override {
    copy(send, recv, count, type);
  }
  void reduce_scatterv(const void* send, void* recv, const std::vector<size_t>& counts,
                       DType type) override {
    copy(send, recv, counts.at(0), type);
  }
  void all_reduce(void*, size_t, DType) override {}
  void all_to_all(const void* send, void* recv, size_t count, DType type) override {
    copy(send, recv, count, type);
  }
  void all_to_allv(const void* send, const std::vector<size_t>& send_counts, void* recv,
                   const std::vector<size_t>&, DType type) override {
    copy(send, recv, send_counts.at(0), type);
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
  static void copy(const void* from, void* to, size_t count, DType type) {
    if (from != to && count) std::memmove(to, from, count * dtype_size(type));
  }
};

// "rank 3" or, when the job spans nodes, "rank 3 (node1)": set once MPI
// starts, read by the signal handler (no allocation there).
char g_rank_name[320] = "rank 0";

// A crashing rank must take the job down with it rather than leave the
// others waiting in a collective forever.
void abort_on_signal(int signal) {
  char message[448];
  const int length =
      std::snprintf(message, sizeof message, "shardlm: error: %s: fatal signal %d (%s)\n",
                    g_rank_name, signal, strsignal(signal));
  if (length > 0) (void)!::write(STDERR_FILENO, message, size_t(length));
  MPI_Abort(MPI_COMM_WORLD, 1);
  std::_Exit(1);
}

// MPI ranks that wait in a collective poll the network; when a node's ranks
// outnumber its cores that polling takes the cores the computing ranks need
// (measured: a 2-node decode step went from 456 ms to 57 ms). OpenMPI yields
// by itself when it knows the node is oversubscribed; a hostfile that
// promises more slots than there are cores hides it, so shardlm says so
// before MPI starts (an explicit setting wins).
void yield_when_oversubscribed() {
  const char* local = std::getenv("OMPI_COMM_WORLD_LOCAL_SIZE");
  if (!local) local = std::getenv("MPI_LOCALNRANKS");
  if (local && std::atoi(local) > cores_allowed()) setenv("OMPI_MCA_mpi_yield_when_idle", "1", 0);
}

}  // namespace

int cores_allowed() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof set, &set) != 0)
    return int(std::max(1L, sysconf(_SC_NPROCESSORS_ONLN)));
  return std::max(1, CPU_COUNT(&set));
}

std::string World::describe_ranks(const std::vector<int>& ranks) const {
  // "ranks 0,1 on node0, 2,3 on node1" (grouped by host, in order of first rank).
  if (!places_known_) return fmt::format("ranks {}", fmt::join(ranks, ","));
  std::vector<std::string> hosts;
  std::map<std::string, std::vector<int>> by_host;
  for (int r : ranks) {
    const std::string& h = host(r);
    if (!by_host.count(h)) hosts.push_back(h);
    by_host[h].push_back(r);
  }
  std::vector<std::string> parts;
  for (const auto& h : hosts)
    parts.push_back(fmt::format("{} on {}", fmt::join(by_host[h], ","), h));
  return fmt::format("ranks {}", fmt::join(parts, ", "));
}

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
    yield_when_oversubscribed();
    int provided = 0;
    MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided);
  }
  mpi_ = true;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
  MPI_Comm_size(MPI_COMM_WORLD, &size_);
  // Errors come back as codes, and become exceptions naming the call.
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  std::snprintf(g_rank_name, sizeof g_rank_name, "rank %d", rank_);
  if (size_ > 1)
    for (int s : {SIGSEGV, SIGABRT, SIGBUS, SIGFPE, SIGILL}) std::signal(s, abort_on_signal);
}

World::~World() {
  stop_watch_ = true;
  if (watchdog_.joinable()) watchdog_.join();
}

const World::Place& World::place(int rank) const {
  // Learnt on first use rather than at start-up, so that the exchange is
  // watched by --comm-timeout like any other collective (a node that cannot
  // reach the others hangs here first).
  if (!places_known_) const_cast<World*>(this)->learn_places();
  return places_.at(size_t(rank));
}

void World::learn_places() {
  // Host name, allowed cores and the affinity mask of every rank.
  struct Raw {
    char host[256];
    int cores;
    cpu_set_t mask;
  };
  Raw mine{};
  gethostname(mine.host, sizeof mine.host - 1);
  sched_getaffinity(0, sizeof mine.mask, &mine.mask);
  mine.cores = cores_allowed();
  std::vector<Raw> all(size_t(size_), Raw{});
  if (size_ > 1) {
    std::vector<int> everyone(static_cast<size_t>(size_));
    std::iota(everyone.begin(), everyone.end(), 0);
    const Watched watched(*this, "start-up exchange of host names", &everyone);
    check(MPI_Allgather(&mine, sizeof(Raw), MPI_BYTE, all.data(), sizeof(Raw), MPI_BYTE,
                        MPI_COMM_WORLD),
          "MPI_Allgather");
  } else {
    all[0] = mine;
  }
  std::vector<std::string> hosts;
  places_.resize(size_t(size_));
  for (size_t r = 0; r < all.size(); ++r) {
    Place& p = places_[r];
    p.host = all[r].host;
    p.cores = all[r].cores;
    auto it = std::find(hosts.begin(), hosts.end(), p.host);
    p.node = int(it - hosts.begin());
    if (it == hosts.end()) hosts.push_back(p.host);
    p.sharing = 0;
    for (size_t q = 0; q < all.size(); ++q) {
      if (all[q].host != p.host) continue;
      if (q < r) ++p.local_rank;
      if (CPU_EQUAL(&all[q].mask, &all[r].mask)) ++p.sharing;
    }
  }
  places_known_ = true;
  std::snprintf(g_rank_name, sizeof g_rank_name, "%s", rank_name(rank_).c_str());
}

int World::nodes() const {
  int n = 0;
  for (int r = 0; r < size_; ++r) n = std::max(n, node(r) + 1);
  return n;
}

int World::ranks_on_node(int node_index) const {
  int n = 0;
  for (int r = 0; r < size_; ++r) n += node(r) == node_index;
  return n;
}

std::vector<int> World::node_of_ranks() const {
  std::vector<int> out;
  for (int r = 0; r < size_; ++r) out.push_back(node(r));
  return out;
}

int World::default_threads(int rank) const {
  if (const char* env = std::getenv("OMP_NUM_THREADS"); env && std::atoi(env) > 0)
    return std::atoi(env);
  const Place& p = place(rank);
  return std::max(1, p.cores / std::max(1, p.sharing));
}

std::string World::rank_name(int rank) const {
  // Before the hosts are known (an early error, or the exchange itself
  // failing) a rank is named by its number alone, and its stage if pipelined.
  std::vector<std::string> where;
  if (places_known_ && nodes() > 1) where.push_back(host(rank));
  if (size_t(rank) < stages_.size())
    where.push_back(fmt::format("stage {}", stages_[size_t(rank)]));
  if (where.empty()) return fmt::format("rank {}", rank);
  return fmt::format("rank {} ({})", rank, fmt::join(where, ", "));
}

void World::set_stages(std::vector<int> stage_of_rank) {
  stages_ = std::move(stage_of_rank);
  std::snprintf(g_rank_name, sizeof g_rank_name, "%s", rank_name(rank_).c_str());
}

std::string World::placement_report() const {
  std::string out;
  for (int r = 0; r < size_; ++r) {
    const Place& p = place(r);
    out += fmt::format("rank {}: host {}, local rank {} of {}, {} core{}, {} thread{}\n", r, p.host,
                       p.local_rank, ranks_on_node(p.node), p.cores, p.cores == 1 ? "" : "s",
                       default_threads(r), default_threads(r) == 1 ? "" : "s");
  }
  return out;
}

void World::set_comm_timeout(double seconds) {
  comm_timeout_s_ = seconds;
  if (seconds > 0 && mpi_ && size_ > 1 && !watchdog_.joinable())
    watchdog_ = std::thread([this] { watch(); });
}

void World::enter_collective(const char* what, const std::vector<int>* ranks) {
  collective_what_ = what;
  collective_ranks_ = ranks;
  collective_start_ns_ = now_ns();
}

void World::leave_collective() {
  collective_start_ns_ = 0;
}

void World::watch() {
  while (!stop_watch_) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    const int64_t start = collective_start_ns_;
    const double timeout = comm_timeout_s_;
    if (start == 0 || timeout <= 0) continue;
    const double waited = double(now_ns() - start) * 1e-9;
    if (waited > timeout) comm_timed_out(collective_what_, collective_ranks_, waited);
  }
}

void World::comm_timed_out(const char* what, const std::vector<int>* ranks, double waited) {
  const std::string group = ranks ? describe_ranks(*ranks) : "all ranks";
  fmt::print(stderr,
             "shardlm: error: {}: {} over {} made no progress for {:.1f} s (--comm-timeout {:g}): "
             "a rank of the group stopped responding or its node is unreachable\n",
             rank_name(rank_), what ? what : "collective", group, waited, comm_timeout_s_.load());
  std::fflush(stderr);
  // MPI_Abort asks this node's MPI daemon to end the job; when the daemon
  // has lost its own peers that request may never return, so the rank ends
  // itself a little later in any case.
  std::thread([] {
    std::this_thread::sleep_for(std::chrono::seconds(3));
    std::_Exit(1);
  }).detach();
  MPI_Abort(MPI_COMM_WORLD, 1);
  std::_Exit(1);
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
    {
      const Watched watched(*this, "communicator set-up", &ranks);
      check(MPI_Comm_create_group(MPI_COMM_WORLD, sub_group, 0, &sub_comm),
            "MPI_Comm_create_group");
    }
    MPI_Group_free(&sub_group);
    MPI_Group_free(&world_group);
    MPI_Comm_set_errhandler(sub_comm, MPI_ERRORS_RETURN);
    comm = std::make_unique<MpiCommunicator>(sub_comm, *this, ranks);
  }
  return *groups_.emplace(ranks, std::move(comm)).first->second;
}

void World::set_device_communicators(DeviceCommFactory factory) {
  device_groups_.clear();  // before their factory (and its backend) goes
  device_factory_ = std::move(factory);
}

Communicator& World::device_group(const std::vector<int>& ranks) {
  if (!device_factory_)
    throw std::logic_error(
        "World::device_group: no device communicators (a CUDA backend sets them)");
  auto it = device_groups_.find(ranks);
  if (it != device_groups_.end()) return *it->second;
  Communicator& bootstrap = group(ranks);  // checks that this rank is a member
  // The map's key outlives the communicator: the watchdog's message reads it.
  const std::vector<int>* members = &device_groups_.emplace(ranks, nullptr).first->first;
  CollectiveWatch watch{[this, members](const char* what) { enter_collective(what, members); },
                        [this] { leave_collective(); }, [this] { return comm_timeout(); },
                        describe_ranks(ranks)};
  try {
    device_groups_[ranks] = device_factory_(bootstrap, watch);
  } catch (...) {
    device_groups_.erase(ranks);
    throw;
  }
  return *device_groups_[ranks];
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
  stop_watch_ = true;
  if (watchdog_.joinable()) watchdog_.join();
  device_groups_.clear();  // NCCL communicators bootstrapped from the MPI groups
  groups_.clear();
  int finalized = 0;
  if (mpi_) MPI_Finalized(&finalized);
  if (mpi_ && !finalized) MPI_Finalize();
}

}  // namespace shardlm
