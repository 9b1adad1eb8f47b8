// The CUDA backend tag: device memory from a caching pool, one stream for all work, and
// host <-> device copies. Kernels for this backend are free functions taking `cuda` first,
// one header per op family under backend/cuda/ (*.cuh, compiled by nvcc), beside the CPU ones:
//
//   #include "ternary/backend/cuda/all.cuh"
//   Tensor<float, cuda> x = to_device(Tensor<float>::randn({64, 64}, rng));
//   Tensor<float, cuda> y = exp(x) * 2 + 1;          // one CUDA kernel
//   Tensor<float> h = to_host(y);
//
// INCLUDE ORDER: the ops call kernels by qualified name (backend::gemm(B{}, ...)), and C++
// looks such names up where the op is defined, so the CUDA kernels must be declared before
// core/tensor.hpp and the ops headers are read. Include this header (or all.cuh) FIRST;
// it declares every CUDA entry point before it includes core/tensor.hpp. Included later,
// the build fails with "no instance of overloaded function ... (ternary::backend::cuda, ...)".
//
// This header is host code only (the CUDA runtime API and cuBLAS), so a .cpp compiled by the
// host compiler may include it too; it is never included by the CPU headers, and the CPU
// build never needs the CUDA toolkit (CMake builds it only with -DTERNARY_CUDA=ON).
//
// Every CUDA call is checked: a failure throws ternary::CudaError naming the call, the file
// and line, and CUDA's error string. Kernel launches are checked with cudaGetLastError.
#pragma once

#if !defined(__CUDACC__) && !__has_include(<cuda_runtime.h>)
#error "ternary/backend/cuda/cuda.hpp needs the CUDA toolkit (configure with -DTERNARY_CUDA=ON)"
#endif

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "ternary/backend/multi_update.hpp"
#include "ternary/core/error.hpp"
#include "ternary/core/shape.hpp"
#include "ternary/core/tensor_fwd.hpp"

namespace ternary {

struct bf16;  // core/dtype.hpp

// A failed CUDA runtime or cuBLAS call (the message names the call and CUDA's error string).
struct CudaError : Error {
  using Error::Error;
};

namespace backend::cuda_detail {

inline void check(cudaError_t e, const char* what, const char* file, int line) {
  if (e != cudaSuccess)
    throw CudaError(detail::cat("CUDA error in ", what, " (", file, ":", line,
                                "): ", cudaGetErrorName(e), ": ", cudaGetErrorString(e)));
}
inline void check(cublasStatus_t s, const char* what, const char* file, int line) {
  if (s != CUBLAS_STATUS_SUCCESS)
    throw CudaError(detail::cat("cuBLAS error in ", what, " (", file, ":", line,
                                "): ", cublasGetStatusName(s), ": ", cublasGetStatusString(s)));
}

#define TERNARY_CUDA_CHECK(call) \
  ::ternary::backend::cuda_detail::check((call), #call, __FILE__, __LINE__)
// After a kernel launch: launch errors (bad configuration, no device code for this GPU).
#define TERNARY_CUDA_CHECK_LAUNCH(name) \
  ::ternary::backend::cuda_detail::check(cudaGetLastError(), "launch of " name, __FILE__, __LINE__)

// Caching allocator: cudaMalloc/cudaFree synchronise the device and cost tens of µs, and a
// training step allocates the same sizes every iteration. Freed blocks go to a free list
// keyed by their rounded size and are handed out again; all work runs on one stream, so a
// block reused by a later kernel is ordered after every earlier use. On out-of-memory the
// cache is released and the allocation retried once. Everything is freed at process exit.
class Pool {
 public:
  static Pool& instance() {
    static Pool pool;
    return pool;
  }
  // Rounding: 512 B steps up to 1 MiB, 2 MiB steps above (bounded waste, few distinct sizes).
  static size_t round(size_t bytes) {
    constexpr size_t kSmall = 512, kLarge = size_t(2) << 20;
    if (bytes == 0) bytes = 1;
    return bytes <= (size_t(1) << 20) ? (bytes + kSmall - 1) / kSmall * kSmall
                                      : (bytes + kLarge - 1) / kLarge * kLarge;
  }
  void* allocate(size_t bytes) {
    const size_t size = round(bytes);
    std::lock_guard<std::mutex> lock(mutex_);
    auto& list = free_[size];
    void* p = nullptr;
    if (!list.empty()) {
      p = list.back();
      list.pop_back();
      cached_bytes_ -= size;
    } else {
      cudaError_t e = cudaMalloc(&p, size);
      if (e == cudaErrorMemoryAllocation) {
        (void)cudaGetLastError();  // clear the sticky-free error, release the cache, retry
        release_locked();
        e = cudaMalloc(&p, size);
      }
      if (e != cudaSuccess)
        check(e,
              detail::cat("cudaMalloc of ", size, " bytes (", live_bytes_, " in use, ",
                          cached_bytes_, " cached)")
                  .c_str(),
              __FILE__, __LINE__);
    }
    live_[p] = size;
    live_bytes_ += size;
    peak_bytes_ = std::max(peak_bytes_, live_bytes_);
    return p;
  }
  void deallocate(void* p) {
    if (!p) return;
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = live_.find(p);
    if (it == live_.end()) return;  // not ours (cannot happen through Storage)
    free_[it->second].push_back(p);
    live_bytes_ -= it->second;
    cached_bytes_ += it->second;
    live_.erase(it);
  }
  // Returns every cached (free) block to CUDA.
  void release() {
    std::lock_guard<std::mutex> lock(mutex_);
    release_locked();
  }
  size_t live_bytes() const { return live_bytes_; }
  size_t cached_bytes() const { return cached_bytes_; }
  size_t peak_bytes() const { return peak_bytes_; }
  ~Pool() {
    // At exit the runtime may already be shutting down: errors here are ignored.
    release_locked();
    for (auto& [p, size] : live_) cudaFree(p);
  }

 private:
  Pool() = default;
  void release_locked() {
    for (auto& [size, list] : free_)
      for (void* p : list) cudaFree(p);
    free_.clear();
    cached_bytes_ = 0;
  }
  std::mutex mutex_;
  std::unordered_map<size_t, std::vector<void*>> free_;
  std::unordered_map<void*, size_t> live_;
  size_t live_bytes_ = 0, cached_bytes_ = 0, peak_bytes_ = 0;
};

// The stream all of the backend's work runs on (kernels, cuBLAS, copies), and the cuBLAS
// handle bound to it. Created on first use, on the current device.
// The library's stream and cuBLAS handle, made on first use on the device current then (so a
// data-parallel rank must select its GPU before any kernel, copy or GEMM runs: see
// dist/nccl_communicator.hpp, which checks it).
struct Context {
  cudaStream_t stream = nullptr;
  cublasHandle_t blas = nullptr;
  int device = -1;  // the device the stream and handle belong to
  static Context& instance() {
    static Context ctx;
    return ctx;
  }
  ~Context() {
    if (blas) cublasDestroy(blas);
    if (stream) cudaStreamDestroy(stream);
  }

 private:
  Context() {
    TERNARY_CUDA_CHECK(cudaGetDevice(&device));
    TERNARY_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    TERNARY_CUDA_CHECK(cublasCreate(&blas));
    TERNARY_CUDA_CHECK(cublasSetStream(blas, stream));
    TERNARY_CUDA_CHECK(cublasSetMathMode(blas, CUBLAS_DEFAULT_MATH));
  }
};

// Matrix-math switches. Plain flags, apart from Context: setting them touches no device.
struct MathMode {
  bool tf32 = false;
  bool bf16 = false;
  // Bound on the tensor-core attention backward's score-gradient scratch (cuda::set_attention_
  // scratch); 512 MiB: the golf micro-batch (64 x 8 heads x 1024^2 bf16 = 1 GiB) in two chunks.
  size_t attention_scratch = size_t(512) << 20;
  static MathMode& instance() {
    static MathMode m;
    return m;
  }
};

// Index checks made by kernels instead of host copies (the embedding's ids, cross-entropy's
// targets): a host check would copy the indices to the host and wait for the device once per
// forward, and the device would idle until the host caught up again. A kernel that meets an
// index outside its range reports the first one into a fault slot in device memory, treats it
// as harmless (a zero row, an ignored target), and the host throws IndexError at its next
// synchronisation with the device (copies to the host, cuda::synchronize()), naming the op, the
// index and its position, as the host check did, only later. The host side of each check (op,
// shape, range) is registered at launch; the kernel reports its number. A fault is thrown once,
// then cleared. A synchronisation with no check registered since the last one costs nothing
// more; otherwise one 24-byte copy.
struct IndexCheck {
  std::string op, what;  // e.g. "embedding", "id"
  Shape shape;           // the indices' shape (a position is reported in it)
  std::string range;     // the valid range in words ("a table of 1024 rows")
};
// What a kernel writes (backend/cuda/index_fault.cuh).
struct IndexFault {
  unsigned int flag;  // 0: none; set once by atomicCAS
  int check;          // the IndexCheck's number
  long long position, value;
};
class IndexFaults {
 public:
  static IndexFaults& instance() {
    static IndexFaults f;
    return f;
  }
  // Registers a check; returns the device slot a kernel reports through, and the check's number.
  std::pair<IndexFault*, int> add(IndexCheck c, cudaStream_t stream) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!device_) {
      TERNARY_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&device_), sizeof(IndexFault)));
      TERNARY_CUDA_CHECK(cudaMemsetAsync(device_, 0, sizeof(IndexFault), stream));
    }
    checks_.push_back(std::move(c));
    return {device_, int(checks_.size() - 1)};
  }
  // Whether so many checks wait that the caller should synchronise first (a loop that never
  // reads a device value would otherwise grow the list without bound).
  bool crowded() const { return checks_.size() >= 4096; }
  // After `stream` has synchronised: throws the reported fault, if any; forgets the checks.
  void raise_if_any(cudaStream_t stream) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (checks_.empty()) return;
    IndexFault f{};
    TERNARY_CUDA_CHECK(cudaMemcpyAsync(&f, device_, sizeof f, cudaMemcpyDeviceToHost, stream));
    TERNARY_CUDA_CHECK(cudaStreamSynchronize(stream));
    if (f.flag == 0) {
      checks_.clear();
      return;
    }
    TERNARY_CUDA_CHECK(cudaMemsetAsync(device_, 0, sizeof(IndexFault), stream));
    const IndexCheck c =
        f.check >= 0 && size_t(f.check) < checks_.size() ? checks_[size_t(f.check)] : IndexCheck{};
    checks_.clear();
    throw IndexError(detail::cat(c.op, ": ", c.what, " ", f.value, " at position ",
                                 unravel_index(f.position, c.shape), " of ", c.what, "s ", c.shape,
                                 " is out of range for ", c.range,
                                 " (found by the kernel; reported at the next synchronisation "
                                 "with the device)"));
  }

 private:
  IndexFaults() = default;
  IndexFault* device_ = nullptr;  // (never freed: it lives as long as the process)
  std::vector<IndexCheck> checks_;
  std::mutex mutex_;
};

}  // namespace backend::cuda_detail

namespace backend {

struct cuda {
  static constexpr const char* name = "cuda";
  // Device memory: Tensor's element references throw; item/to_vector copy through the host.
  static constexpr bool on_host = false;

  static void* allocate(size_t bytes) { return cuda_detail::Pool::instance().allocate(bytes); }
  static void deallocate(void* p) { cuda_detail::Pool::instance().deallocate(p); }
  static void copy(void* dst, const void* src, size_t bytes) {
    TERNARY_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream()));
  }
  static void zero(void* dst, size_t bytes) {
    TERNARY_CUDA_CHECK(cudaMemsetAsync(dst, 0, bytes, stream()));
  }
  // Host <-> device: synchronous (the host buffer may be reused as soon as these return).
  // Each synchronisation also raises an index fault a kernel reported (IndexFaults).
  static void copy_to_host(void* dst, const void* src, size_t bytes) {
    if (bytes == 0) return;
    TERNARY_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream()));
    synchronize();
  }
  static void copy_from_host(void* dst, const void* src, size_t bytes) {
    if (bytes == 0) return;
    TERNARY_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream()));
    synchronize();
  }

  static cudaStream_t stream() { return cuda_detail::Context::instance().stream; }
  static cublasHandle_t blas() { return cuda_detail::Context::instance().blas; }
  static void synchronize() {
    TERNARY_CUDA_CHECK(cudaStreamSynchronize(stream()));
    cuda_detail::IndexFaults::instance().raise_if_any(stream());
  }
  // The device slot for a kernel's index check, and the check's number (IndexFaults).
  static std::pair<cuda_detail::IndexFault*, int> index_check(cuda_detail::IndexCheck c) {
    auto& faults = cuda_detail::IndexFaults::instance();
    if (faults.crowded()) synchronize();
    return faults.add(std::move(c), stream());
  }
  // fp32 GEMMs on tensor cores in TF32 (10-bit mantissa inputs, fp32 accumulation): about
  // 1e-3 relative error instead of ~1e-6, several times faster. Off by default.
  static void set_tf32(bool on) { cuda_detail::MathMode::instance().tf32 = on; }
  static bool tf32() { return cuda_detail::MathMode::instance().tf32; }
  // linear()'s products with bf16 operands (x, w and the output gradient rounded once per
  // pass; the tensors, and so the master weights, stay fp32) and fp32 accumulation and
  // output: ~3e-3 relative error, the fastest tensor-core path. Other float GEMMs (matmul:
  // Muon's Newton-Schulz) run in TF32 meanwhile. Off by default.
  static void set_bf16(bool on) { cuda_detail::MathMode::instance().bf16 = on; }
  static bool bf16() { return cuda_detail::MathMode::instance().bf16; }
  // The tensor-core attention backward (head sizes up to 64) writes the score gradients ds of
  // each batch row's causal tiles (bf16, heads x T^2 x 2 bytes, T rounded up to 64) into
  // scratch of at most this many bytes, then takes dq = ds k as one product from it (batch rows
  // in chunks that fit) instead of recomputing the scores in a second pass. Where one batch
  // row's ds does not fit (long sequences) or at 0, dq recomputes them: no T x T memory.
  static void set_attention_scratch(size_t bytes) {
    cuda_detail::MathMode::instance().attention_scratch = bytes;
  }
  static size_t attention_scratch() { return cuda_detail::MathMode::instance().attention_scratch; }

  // Number of usable devices; 0 (not an exception) when there is no GPU or no driver.
  static int device_count() {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
      (void)cudaGetLastError();
      return 0;
    }
    return n;
  }
};

namespace cuda_detail {
// Device scratch from the pool, returned on scope exit (stream-ordered reuse: a later kernel on
// the one stream may take the memory only after every earlier one has run).
struct Scratch {
  void* p = nullptr;
  explicit Scratch(size_t bytes) : p(cuda::allocate(bytes)) {}
  ~Scratch() { cuda::deallocate(p); }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
};
// Above 48 KB a kernel must opt in to its dynamic shared memory, once per kernel.
template <class Kernel>
void allow_dynamic_smem(Kernel kernel, size_t bytes) {
  if (bytes > 48 * 1024)
    TERNARY_CUDA_CHECK(
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)));
}
}  // namespace cuda_detail

// ---- every CUDA kernel entry point, declared before core/tensor.hpp and the ops ----------
// (definitions: backend/cuda/<family>.cuh; signatures must match them exactly)
template <class T, class E>
void assign_expr(cuda, Tensor<T, cuda>& dst, const E& expr);
template <class T>
Tensor<T, cuda> reduce_sum(cuda, const Tensor<T, cuda>& x, const std::vector<int>& axes);
template <class T>
struct MatView;
template <class T>
void gemm(cuda, const MatView<const T>& a, const MatView<const T>& b, const MatView<T>& c, T alpha,
          T beta);
// bf16 operands (linear()'s tensor-core products, behind cuda::set_bf16)
inline bool bf16_products(cuda) {
  return cuda::bf16();
}
template <class T>
Tensor<bf16, cuda> to_bf16(cuda, const Tensor<T, cuda>& x);
template <class T>
Tensor<bf16, cuda> relu2_to_bf16(cuda, const Tensor<T, cuda>& x);
template <class T>
void gemm_bf16(cuda, const MatView<const bf16>& a, const MatView<const bf16>& b,
               const MatView<T>& c, T alpha, T beta);
template <class T>
void cross_entropy_forward(cuda, const Tensor<T, cuda>& logits,
                           const Tensor<int32_t, cuda>& targets, int32_t ignore_index, T cap,
                           const Tensor<T, cuda>& zmax, const Tensor<T, cuda>& logsum,
                           const Tensor<T, cuda>& loss, const Tensor<double, cuda>& count,
                           const char* op, const Shape& targets_shape);
template <class T, class DX>
void cross_entropy_backward(cuda, const Tensor<T, cuda>& logits,
                            const Tensor<int32_t, cuda>& targets, int32_t ignore_index, T cap,
                            const Tensor<T, cuda>& zmax, const Tensor<T, cuda>& logsum,
                            const Tensor<T, cuda>& g, const Tensor<double, cuda>& count,
                            const Tensor<DX, cuda>& dx);
// norm.cuh
template <class T>
void rms_norm_forward(cuda, const Tensor<T, cuda>& x, const Tensor<T, cuda>& gain,
                      const Tensor<T, cuda>& y, const Tensor<T, cuda>& rstd, double eps,
                      bool int8_output = false);
template <class T>
void rms_norm_backward(cuda, const Tensor<T, cuda>& x, const Tensor<T, cuda>& gain,
                       const Tensor<T, cuda>& rstd, const Tensor<T, cuda>& g,
                       const Tensor<T, cuda>& dx, const Tensor<T, cuda>& dgain,
                       const Tensor<T, cuda>& dx_addend = Tensor<T, cuda>());
// embedding.cuh
template <class T>
void embedding_forward(cuda, const Tensor<T, cuda>& table, const Tensor<int32_t, cuda>& ids,
                       const Tensor<T, cuda>& out);
template <class T>
void embedding_backward(cuda, const Tensor<int32_t, cuda>& ids, const Tensor<T, cuda>& g,
                        const Tensor<T, cuda>& dtable);
// rope.cuh
template <class T>
struct RopeTable;
template <class T>
std::shared_ptr<const RopeTable<T>> rope_table(cuda, int64_t positions, int64_t half, double base);
template <class T>
void rope_rotate(cuda, const T* x, T* out, int64_t rows, int64_t seq_len, int64_t position_offset,
                 const RopeTable<T>& table, bool inverse);
// head_norm_rope.cuh
struct HeadRows;
template <class T>
void head_norm_rope_forward(cuda, const T* x, const HeadRows& xl, const T* gain, T* y,
                            const HeadRows& yl, const RopeTable<T>& table, double eps);
template <class T>
void head_norm_rope_backward(cuda, const T* x, const HeadRows& xl, const T* gain, const T* g,
                             const HeadRows& gl, T* dx, const HeadRows& dxl, T* row_dot,
                             const RopeTable<T>& table, double eps);
template <class T>
void head_row_sums(cuda, const T* row_dot, int64_t batch, int64_t heads, int64_t seq, T* out,
                   const T* prior);
// channel_mix.cuh
template <class T>
void channel_mix_forward(cuda, const T* a, const T* x, const T* b, const T* y, T* out, int64_t rows,
                         int64_t D);
template <class T>
void channel_mix_forward(cuda, const T* a, const T* x, const T* b, const bf16* y, T* out,
                         int64_t rows, int64_t D);
template <class T>
void channel_mix_backward(cuda, const T* g, const T* a, const T* x, const T* b, const T* y, T* dx,
                          T* dy, T* da, T* db, int64_t rows, int64_t D, const T* dx_prior = nullptr,
                          const T* dy_prior = nullptr);
template <class T>
void scaled_weight_backward(cuda, const T* G, const T* w, const T* scale, T* dw, const T* dw_prior,
                            T* dscale, const T* dscale_prior, bf16* wb16, int64_t out, int64_t in);
// attention.cuh. With saved_bf16, the tensor-core forward keeps its packed bf16 q, k, v there
// and the backward reads them instead of packing again (undefined: the backward packs).
template <class T>
void causal_attention_forward(cuda, const Tensor<T, cuda>& q, const Tensor<T, cuda>& k,
                              const Tensor<T, cuda>& v, T scale, Tensor<T, cuda>& out,
                              Tensor<T, cuda>* lse, Tensor<bf16, cuda>* saved_bf16 = nullptr);
template <class T>
void causal_attention_backward(cuda, const Tensor<T, cuda>& q, const Tensor<T, cuda>& k,
                               const Tensor<T, cuda>& v, const Tensor<T, cuda>& out,
                               const Tensor<T, cuda>& lse, const Tensor<T, cuda>& dout, T scale,
                               Tensor<T, cuda>& dq, Tensor<T, cuda>& dk, Tensor<T, cuda>& dv,
                               const Tensor<bf16, cuda>* saved_bf16 = nullptr);
// quant.cuh (reached from quant/ and optim/ by argument-dependent lookup on the tag)
template <class T>
Tensor<T, cuda> absmean_fake_quantize(cuda, const Tensor<T, cuda>& w, int64_t group, double eps);
template <class T>
Tensor<T, cuda> int8_fake_quantize(cuda, const Tensor<T, cuda>& x);
// optim.cuh (reached from optim/ by argument-dependent lookup on the tag)
template <class T>
double squared_norm(cuda, const Tensor<T, cuda>& x);
template <class T>
double squared_norm_sum(cuda, const std::vector<Tensor<T, cuda>>& xs);
template <class T>
void scale_by_inverse_norm(cuda, Tensor<T, cuda>& x, double eps);
template <class T>
void scale_by_inverse_norms(cuda, Tensor<T, cuda>& x, double eps);
template <class T>
void adamw_update_runs(cuda, const std::vector<AdamWRun<T>>& runs);
template <class T>
void momentum_runs(cuda, const std::vector<MomentumRun<T>>& runs);
template <class T>
void decay_step_runs(cuda, const std::vector<DecayStepRun<T>>& runs);
template <class T>
void scale_runs(cuda, const std::vector<ValueRun<T>>& runs, T factor);
// reduce_max.cuh
template <class T>
Tensor<T, cuda> reduce_max(cuda, const Tensor<T, cuda>& x, const std::vector<int>& axes,
                           std::vector<int64_t>* argmax);
template <class T>
void max_backward_scatter(cuda, const Tensor<T, cuda>& g, const std::vector<int64_t>& argmax,
                          int64_t inner, Tensor<T, cuda>& dx);

}  // namespace backend

using backend::cuda;

}  // namespace ternary

#include "ternary/core/tensor.hpp"

namespace ternary {

// Copies a tensor (any layout) to the device as a contiguous tensor, and back.
template <class T>
Tensor<T, cuda> to_device(const Tensor<T, cpu>& h) {
  return Tensor<T, cuda>::from(h.shape(), h.to_vector());
}
template <class T>
Tensor<T, cpu> to_host(const Tensor<T, cuda>& d) {
  return Tensor<T, cpu>::from(d.shape(), d.to_vector());
}

}  // namespace ternary
