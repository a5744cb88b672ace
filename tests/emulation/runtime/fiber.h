// User-level threads for the emulation's scheduler: a stack each, switched by a few instructions
// (no system call, unlike swapcontext, which saves the signal mask every time). Only the
// scheduler resumes fibers, and a fiber only yields back to it.
#pragma once

#include <cstddef>

namespace cuda_emulation {

// From the running fiber: back to the scheduler, to be resumed later.
void yield();
// From the running fiber, its last act: back to the scheduler for good.
[[noreturn]] void finish();

class Fiber {
 public:
  Fiber();
  ~Fiber();
  Fiber(const Fiber&) = delete;
  Fiber& operator=(const Fiber&) = delete;

  // Makes the next resume() start `entry` from the top of the stack; `entry` must end with
  // finish() (it cannot return: there is nothing to return to).
  void start(void (*entry)());
  // From the scheduler: runs this fiber until it yields or finishes.
  void resume();

 private:
  void check_canary() const;
  friend void yield();
  friend void finish();
  void* sp_ = nullptr;  // saved stack pointer while suspended
  void (*entry_)() = nullptr;
  unsigned char* stack_;
  std::size_t colour_;  // the top of the stack is moved down by this many cache-line steps
  void* fake_stack_ = nullptr;  // AddressSanitizer's bookkeeping for the suspended fiber
};

}  // namespace cuda_emulation
