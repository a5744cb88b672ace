// Stand-in for c10/cuda/CUDAStream.h when the launchers run on the emulated device
// (tests/emulation/torch): streams of the emulated device are ids only. The emulation runs
// every kernel to completion when it is launched, so whatever order streams, events and waits
// ask for holds already.
#pragma once

#include <c10/core/Device.h>
#include <c10/core/Stream.h>
#include <cuda_runtime_api.h>

#include <cstdint>

namespace c10::cuda {

class CUDAStream {
 public:
  explicit CUDAStream(c10::StreamId id) : id_(id) {}
  cudaStream_t stream() const {
    return reinterpret_cast<cudaStream_t>(static_cast<intptr_t>(id_));
  }
  operator cudaStream_t() const { return stream(); }
  c10::DeviceIndex device_index() const { return 0; }
  c10::Device device() const { return {c10::DeviceType::PrivateUse1, 0}; }
  c10::Stream unwrap() const { return c10::Stream(c10::Stream::UNSAFE, device(), id_); }
  operator c10::Stream() const { return unwrap(); }
  c10::StreamId id() const { return id_; }

 private:
  c10::StreamId id_;
};

namespace emulated {
inline thread_local c10::StreamId current_stream = 0;  // 0: the default stream
constexpr c10::StreamId kPoolSize = 32;
}  // namespace emulated

inline CUDAStream getCurrentCUDAStream(c10::DeviceIndex = -1) {
  return CUDAStream(emulated::current_stream);
}

inline void setCurrentCUDAStream(CUDAStream stream) { emulated::current_stream = stream.id(); }

// Streams 1 .. kPoolSize in turn, as the real pool hands them out.
inline CUDAStream getStreamFromPool(bool = false, c10::DeviceIndex = -1) {
  static thread_local c10::StreamId next = 0;
  next = next % emulated::kPoolSize + 1;
  return CUDAStream(next);
}

}  // namespace c10::cuda
