// Stand-in for c10/cuda/CUDAGuard.h when the launchers run on the emulated device
// (tests/emulation/torch), which has one device: the guard checks that it is given that device.
#pragma once

#include <c10/core/Device.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/Exception.h>

namespace c10::cuda {

struct CUDAGuard {
  explicit CUDAGuard(c10::Device device) {
    TORCH_CHECK(device.type() == c10::DeviceType::PrivateUse1 && device.index() <= 0,
                "expected the emulated CUDA device, got ", device);
  }
};

struct CUDAStreamGuard {
  explicit CUDAStreamGuard(CUDAStream stream) : previous_(getCurrentCUDAStream()) {
    setCurrentCUDAStream(stream);
  }
  ~CUDAStreamGuard() { setCurrentCUDAStream(previous_); }
  CUDAStreamGuard(const CUDAStreamGuard&) = delete;
  CUDAStreamGuard& operator=(const CUDAStreamGuard&) = delete;

 private:
  CUDAStream previous_;
};

}  // namespace c10::cuda
