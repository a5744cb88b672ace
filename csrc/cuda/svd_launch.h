// The CUDA SVD pipeline shared by the trp::truncated_svd and trp::lowrank_project launchers
// (ATen side: allocation, cuBLAS GEMMs through ATen, current stream; kernels in trp/svd/svd_cuda.h).
#pragma once

#include <ATen/ATen.h>

#include "trp/rank_rule.h"

namespace trp::cuda {

// What the op returns: the factors (truncated_svd) or the projection (lowrank_project).
enum class SvdProducts { kFactors, kProjection };

// Tensors shaped as the op returns them; those of the other kind of products are undefined.
struct DeviceSvd {
  at::Tensor U, S, V;        // [..., m, k], [..., k], [..., n, k]
  at::Tensor low, subgrad;   // [..., m, n]
  at::Tensor rank;           // [...] int64
};

// W: a CUDA float32/float64 tensor [..., m, n] (checked by the caller). Enqueues the whole
// computation on the current stream without synchronising.
DeviceSvd device_svd(const at::Tensor& W, const RankRule& rule, SvdProducts products);

}  // namespace trp::cuda
