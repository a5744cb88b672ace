#include "fiber.h"

#include <sys/mman.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

#if !defined(__x86_64__)
#error "the emulation's context switch is written for x86-64"
#endif

// switch_stack(save, load): pushes the callee-saved registers on the current stack, stores the
// stack pointer at *save, continues on `load` (a stack saved by switch_stack, or prepared by
// Fiber::start) and pops the same there. The floating-point control words (rounding, exception
// masks) are not switched: every fiber runs with those of the launching thread, as no kernel
// changes them.
extern "C" void cuda_emulation_switch_stack(void** save, void* load);
asm(R"(
  .pushsection .text
  .globl cuda_emulation_switch_stack
  .hidden cuda_emulation_switch_stack
  .type cuda_emulation_switch_stack, @function
cuda_emulation_switch_stack:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size cuda_emulation_switch_stack, .-cuda_emulation_switch_stack
  .popsection
)");

namespace cuda_emulation {
namespace {

// Kernel frames are small, but the emulation's own frames and AddressSanitizer's redzones are
// not; only the touched pages cost memory. A cooperative launch keeps tens of thousands of
// fibers alive, so stacks come in chunks of one mapping each (a guard page per stack would
// split the mapping, and the kernel limits a process to some 65,000 mappings); a canary at the
// bottom of each stack stands in for the guard page.
#if defined(__SANITIZE_ADDRESS__)
constexpr std::size_t kStackBytes = 256 * 1024;
#else
constexpr std::size_t kStackBytes = 64 * 1024;
#endif
constexpr std::size_t kStacksPerChunk = 256;
// Stacks are kStackBytes apart, so their tops would all fall in the same cache sets, and a pass
// over thousands of fibers would miss the cache on every switch: each stack's top is moved
// down by a different multiple of a cache line ("cache colouring").
constexpr std::size_t kColours = 64, kColourBytes = 64 + 128;
constexpr uint64_t kCanary = 0x5a17c0de5a17c0deull;

std::vector<unsigned char*> free_stacks;
std::size_t next_colour = 0;

unsigned char* take_stack() {
  if (free_stacks.empty()) {
    void* chunk = mmap(nullptr, kStackBytes * kStacksPerChunk, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (chunk == MAP_FAILED) {
      std::perror("emulation: fiber stacks");
      std::abort();
    }
    for (std::size_t i = 0; i < kStacksPerChunk; ++i) {
      free_stacks.push_back(static_cast<unsigned char*>(chunk) + i * kStackBytes);
    }
  }
  unsigned char* stack = free_stacks.back();
  free_stacks.pop_back();
  return stack;
}

void give_back_stack(unsigned char* stack) {
  madvise(stack, kStackBytes, MADV_DONTNEED);  // its pages go back to the system
  free_stacks.push_back(stack);
}

void* scheduler_sp = nullptr;
Fiber* running = nullptr;
void (*entry_of_running)() = nullptr;

#if defined(__SANITIZE_ADDRESS__)
void* scheduler_fake_stack = nullptr;
const void* scheduler_stack_bottom = nullptr;
std::size_t scheduler_stack_size = 0;
#endif

[[noreturn]] void fiber_main() {
#if defined(__SANITIZE_ADDRESS__)
  __sanitizer_finish_switch_fiber(nullptr, &scheduler_stack_bottom, &scheduler_stack_size);
#endif
  entry_of_running();
  std::fputs("emulation: a fiber's entry returned instead of calling finish()\n", stderr);
  std::abort();
}

}  // namespace

Fiber::Fiber() : stack_(take_stack()), colour_(next_colour++ % kColours) {}

Fiber::~Fiber() {
  check_canary();
  give_back_stack(stack_);
}

void Fiber::start(void (*entry)()) {
#if defined(__SANITIZE_ADDRESS__)
  // Frames of an abandoned run (a launch that faulted) may have left poisoned redzones.
  __asan_unpoison_memory_region(stack_, kStackBytes);
#endif
  check_canary();
  // The frame switch_stack pops: r15 .. rbp, then fiber_main as the return address, above
  // which a zero stands where fiber_main's own return address would be, so that fiber_main
  // starts with the stack alignment of a called function (rsp = 8 mod 16).
  auto* top = reinterpret_cast<uint64_t*>(stack_ + kStackBytes - colour_ * kColourBytes);
  uint64_t* sp = top - 8;
  for (int i = 0; i < 6; ++i) sp[i] = 0;
  sp[6] = reinterpret_cast<uint64_t>(&fiber_main);
  sp[7] = 0;
  sp_ = sp;
  entry_ = entry;
  std::memcpy(stack_, &kCanary, sizeof kCanary);
}

// Checked before a stack is used again, and when it is given back: not on every switch, where
// reading the far end of the stack would cost a cache miss each time.
void Fiber::check_canary() const {
  if (sp_ != nullptr && std::memcmp(stack_, &kCanary, sizeof kCanary) != 0) {
    std::fputs("emulation: a fiber overflowed its stack\n", stderr);
    std::abort();
  }
}

void Fiber::resume() {
  running = this;
  entry_of_running = entry_;
#if defined(__SANITIZE_ADDRESS__)
  __sanitizer_start_switch_fiber(&scheduler_fake_stack, stack_, kStackBytes);
#endif
  cuda_emulation_switch_stack(&scheduler_sp, sp_);
#if defined(__SANITIZE_ADDRESS__)
  __sanitizer_finish_switch_fiber(scheduler_fake_stack, nullptr, nullptr);
#endif
  running = nullptr;
}

void yield() {
  Fiber* self = running;
#if defined(__SANITIZE_ADDRESS__)
  __sanitizer_start_switch_fiber(&self->fake_stack_, scheduler_stack_bottom, scheduler_stack_size);
#endif
  cuda_emulation_switch_stack(&self->sp_, scheduler_sp);
#if defined(__SANITIZE_ADDRESS__)
  __sanitizer_finish_switch_fiber(self->fake_stack_, &scheduler_stack_bottom,
                                  &scheduler_stack_size);
#endif
}

void finish() {
  Fiber* self = running;
#if defined(__SANITIZE_ADDRESS__)
  __sanitizer_start_switch_fiber(nullptr, scheduler_stack_bottom, scheduler_stack_size);
#endif
  cuda_emulation_switch_stack(&self->sp_, scheduler_sp);
  std::abort();  // a finished fiber is never resumed before start() again
}

}  // namespace cuda_emulation
