// Where the measured choices of trp::lowrank_conv2d's implementation are kept: in memory for the
// process and, when a file is set, in that file for every later process (docs/cuda_conv.md,
// "Choosing an implementation"). Compiled into every build (csrc/aten/trp/conv_choice_store.cpp),
// so that the package sets the file the same way with or without CUDA; the CUDA launcher
// consults it, the emulated device's launcher through the ops of the same names.
//
// A choice is keyed by a line of text that names the device (its name, compute capability,
// SM count), the cuDNN version and every field of the problem key (measured_choice.h); the file
// name carries the library build and torch's version (trp_kernels/ops/backends.py), so a choice
// is never read back by a build or a device it was not measured on.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace trp {

// The implementation name chosen for `key`, from this process's choices or, when a file is set,
// the choices it holds (read once, when first needed); nullopt if there is none.
std::optional<std::string> stored_conv_choice(const std::string& key);

// Keeps the choice of `impl` for `key`, with what the measurement saw (`details`), in memory
// and, when a file is set, at the end of the file (one line, one write).
void store_conv_choice(const std::string& key, const std::string& impl,
                       const std::string& details);

// Bumped by clear_conv_choices: a launcher's faster cache of choices compares it on lookup.
int64_t conv_choice_generation();

}  // namespace trp
