// NcclCommunicator: the Communicator of a real data-parallel run, one process per GPU.
//
//   auto env = dist::require_dist_env();         // RANK, WORLD_SIZE, LOCAL_RANK (tools/launch)
//   dist::NcclCommunicator comm(env);            // cudaSetDevice(LOCAL_RANK), ncclCommInitRank
//   dist::DataParallel<float, cuda> dp(model, comm);
//
// Setup: rank 0 makes the NCCL unique id and writes it to env.nccl_id_path() atomically (a
// temporary file, then rename), so a reader never sees half an id; the other ranks poll for
// the file for up to env.timeout_seconds and fail with an error naming the file if it never
// comes. After every rank has joined, rank 0 removes the file (a later run cannot read a
// stale id from it).
//
// Streams: collectives are ordered after all work already issued on the library's stream
// (backend::cuda::stream()) through an event, and run on a stream of their own, so a bucket's
// all-reduce runs while backward keeps issuing kernels on the library stream. wait() makes
// the library stream wait for every collective issued so far (without blocking the host);
// broadcast() and barrier() do that before returning. With overlap = false everything runs on
// the library stream itself (simplest ordering, no overlap on the GPU).
//
// Buffers must be device memory (Tensor<T, cuda> data); a host pointer is an Error naming it.
// Every NCCL and CUDA call is checked; failures throw ternary::CudaError naming the call and
// ncclGetErrorString (plus NCCL's last error message).
//
// Compiled only with the CUDA toolkit and NCCL (link -lnccl); include it after (or instead of)
// backend/cuda/cuda.hpp, which it includes first.
#pragma once

#if !defined(__CUDACC__) && !__has_include(<cuda_runtime.h>)
#error "ternary/dist/nccl_communicator.hpp needs the CUDA toolkit and NCCL"
#endif

#include "ternary/backend/cuda/cuda.hpp"  // first: see its INCLUDE ORDER note

#include <nccl.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <sstream>
#include <string>
#include <thread>

#include "ternary/dist/communicator.hpp"
#include "ternary/dist/env.hpp"

namespace ternary::dist {

namespace nccl_detail {

inline void check(ncclResult_t r, const char* what, const char* file, int line) {
  if (r == ncclSuccess) return;
  const char* last = ncclGetLastError(nullptr);
  throw CudaError(detail::cat("NCCL error in ", what, " (", file, ":", line,
                              "): ", ncclGetErrorString(r),
                              last && *last ? detail::cat(" (", last, ")") : std::string()));
}
#define TERNARY_NCCL_CHECK(call) \
  ::ternary::dist::nccl_detail::check((call), #call, __FILE__, __LINE__)

constexpr const char* kIdMagic = "ternary-nccl-id-v1";

// Rank 0: writes the id (hex) and the world size to `path` through a temporary + rename.
inline void write_id_file(const std::string& path, const ncclUniqueId& id, int world_size) {
  const std::string tmp = detail::cat(path, ".tmp.", ::getpid());
  {
    std::ofstream f(tmp, std::ios::trunc);
    if (!f)
      throw IOError(detail::cat("NcclCommunicator: rank 0 cannot create ", tmp,
                                " (for the NCCL id file ", path, ")"));
    f << kIdMagic << ' ' << world_size << ' ';
    static const char* hex = "0123456789abcdef";
    for (unsigned char c : id.internal) f << hex[c >> 4] << hex[c & 15];
    f << '\n';
    f.flush();
    if (!f) throw IOError(detail::cat("NcclCommunicator: rank 0 cannot write ", tmp));
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    throw IOError(detail::cat("NcclCommunicator: rank 0 cannot rename ", tmp, " to ", path));
  }
}

// Other ranks: polls for `path` until `timeout_s`; checks the magic and the world size.
inline ncclUniqueId read_id_file(const std::string& path, int rank, int world_size,
                                 double timeout_s) {
  const auto start = std::chrono::steady_clock::now();
  for (;;) {
    std::ifstream f(path);
    if (f) {
      std::string magic, hexid;
      int world = -1;
      f >> magic >> world >> hexid;
      ncclUniqueId id{};
      if (magic != kIdMagic || hexid.size() != 2 * sizeof(id.internal))
        throw IOError(detail::cat("NcclCommunicator: rank ", rank, ": ", path,
                                  " is not an NCCL id file written by ternary"));
      if (world != world_size)
        throw IOError(detail::cat("NcclCommunicator: rank ", rank, ": ", path,
                                  " was written for WORLD_SIZE=", world, " but this rank has ",
                                  world_size, " (a stale file from another run?)"));
      auto nib = [&](char c) { return c <= '9' ? c - '0' : c - 'a' + 10; };
      for (size_t i = 0; i < sizeof(id.internal); ++i)
        id.internal[i] = char(nib(hexid[2 * i]) * 16 + nib(hexid[2 * i + 1]));
      return id;
    }
    const double waited =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (waited >= timeout_s)
      throw IOError(detail::cat("NcclCommunicator: rank ", rank, " waited ", timeout_s,
                                " s for the NCCL id file ", path,
                                " that rank 0 writes; is rank 0 running, with the same "
                                "TERNARY_DIST_ID_FILE / TERNARY_RUN_ID? (TERNARY_DIST_TIMEOUT "
                                "sets the wait)"));
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

template <class T>
constexpr ncclDataType_t nccl_type() {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>);
  return std::is_same_v<T, float> ? ncclFloat32 : ncclFloat64;
}

}  // namespace nccl_detail

class NcclCommunicator final : public Communicator {
 public:
  explicit NcclCommunicator(const DistEnv& env, bool overlap = true)
      : rank_(env.rank), world_(env.world_size) {
    const int devices = cuda::device_count();
    if (env.local_rank >= devices)
      throw CudaError(detail::cat("NcclCommunicator: LOCAL_RANK=", env.local_rank, " but only ",
                                  devices, " CUDA device(s) are visible to rank ", env.rank));
    TERNARY_CUDA_CHECK(cudaSetDevice(env.local_rank));
    ncclUniqueId id{};
    if (world_ > 1) {
      const std::string path = env.nccl_id_path();
      if (rank_ == 0) {
        TERNARY_NCCL_CHECK(ncclGetUniqueId(&id));
        nccl_detail::write_id_file(path, id, world_);
      } else {
        id = nccl_detail::read_id_file(path, rank_, world_, env.timeout_seconds);
      }
    } else {
      TERNARY_NCCL_CHECK(ncclGetUniqueId(&id));
    }
    lib_stream_ = cuda::stream();  // creates the library's stream on this device
    // If anything ran on the GPU before this constructor, the stream and cuBLAS handle belong
    // to the device that was current then (device 0): every kernel of this rank would run
    // there, and NCCL would wait for a peer that never comes.
    if (const int made_on = backend::cuda_detail::Context::instance().device;
        made_on != env.local_rank)
      throw CudaError(detail::cat(
          "NcclCommunicator: rank ", env.rank, ": the library's CUDA stream was made on device ",
          made_on, " before the communicator selected LOCAL_RANK's device ", env.local_rank,
          "; create the communicator before any tensor, "
          "model or GEMM touches the GPU"));
    if (overlap) {
      TERNARY_CUDA_CHECK(cudaStreamCreateWithFlags(&comm_stream_, cudaStreamNonBlocking));
      TERNARY_CUDA_CHECK(cudaEventCreateWithFlags(&issued_, cudaEventDisableTiming));
      TERNARY_CUDA_CHECK(cudaEventCreateWithFlags(&done_, cudaEventDisableTiming));
    } else {
      comm_stream_ = lib_stream_;
    }
    TERNARY_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&scratch_), sizeof(float)));
    TERNARY_NCCL_CHECK(ncclCommInitRank(&comm_, world_, id, rank_));
    barrier();  // every rank has joined: the id file has done its job
    if (world_ > 1 && rank_ == 0) std::remove(env.nccl_id_path().c_str());
  }
  ~NcclCommunicator() override {
    if (comm_) {
      cudaStreamSynchronize(comm_stream_);  // errors ignored: may run during unwinding
      ncclCommDestroy(comm_);
    }
    if (comm_stream_ && comm_stream_ != lib_stream_) cudaStreamDestroy(comm_stream_);
    if (scratch_) cudaFree(scratch_);
    if (issued_) cudaEventDestroy(issued_);
    if (done_) cudaEventDestroy(done_);
  }
  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;

  int rank() const override { return rank_; }
  int world_size() const override { return world_; }
  bool device_buffers() const override { return true; }

  void all_reduce(float* data, size_t n, ReduceOp op) override { reduce(data, n, op); }
  void all_reduce(double* data, size_t n, ReduceOp op) override { reduce(data, n, op); }
  void broadcast(float* data, size_t n, int root) override { bcast(data, n, root); }
  void broadcast(double* data, size_t n, int root) override { bcast(data, n, root); }

  void barrier() override {
    // NCCL has no barrier: a one-element all-reduce, then the host waits for it.
    TERNARY_NCCL_CHECK(
        ncclAllReduce(scratch_, scratch_, 1, ncclFloat32, ncclSum, comm_, comm_stream_));
    TERNARY_CUDA_CHECK(cudaStreamSynchronize(comm_stream_));
  }
  void wait() override {
    if (comm_stream_ == lib_stream_) return;  // same stream: already ordered
    TERNARY_CUDA_CHECK(cudaEventRecord(done_, comm_stream_));
    TERNARY_CUDA_CHECK(cudaStreamWaitEvent(lib_stream_, done_, 0));
  }

 private:
  // After everything issued so far on the library stream (the buffer's producers).
  void order_after_library_stream() {
    if (comm_stream_ == lib_stream_) return;
    TERNARY_CUDA_CHECK(cudaEventRecord(issued_, lib_stream_));
    TERNARY_CUDA_CHECK(cudaStreamWaitEvent(comm_stream_, issued_, 0));
  }
  static void check_device_pointer(const void* p, const char* who) {
    cudaPointerAttributes a{};
    TERNARY_CUDA_CHECK(cudaPointerGetAttributes(&a, p));
    if (a.type != cudaMemoryTypeDevice && a.type != cudaMemoryTypeManaged)
      throw Error(detail::cat("NcclCommunicator::", who, ": buffer ", p,
                              " is host memory; NCCL needs device buffers (Tensor<T, cuda>)"));
  }
  template <class T>
  void reduce(T* data, size_t n, ReduceOp op) {
    if (n == 0) return;
    check_device_pointer(data, "all_reduce");
    order_after_library_stream();
    TERNARY_NCCL_CHECK(ncclAllReduce(data, data, n, nccl_detail::nccl_type<T>(),
                                     op == ReduceOp::sum ? ncclSum : ncclAvg, comm_, comm_stream_));
  }
  template <class T>
  void bcast(T* data, size_t n, int root) {
    if (root < 0 || root >= world_)
      throw Error(
          detail::cat("NcclCommunicator::broadcast: root ", root, " is outside [0, ", world_, ")"));
    if (n == 0) return;
    check_device_pointer(data, "broadcast");
    order_after_library_stream();
    TERNARY_NCCL_CHECK(
        ncclBroadcast(data, data, n, nccl_detail::nccl_type<T>(), root, comm_, comm_stream_));
    wait();
  }

  int rank_, world_;
  ncclComm_t comm_ = nullptr;
  cudaStream_t lib_stream_ = nullptr, comm_stream_ = nullptr;
  cudaEvent_t issued_ = nullptr, done_ = nullptr;
  float* scratch_ = nullptr;  // the barrier's one element
};

}  // namespace ternary::dist
