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
  at::Tensor basis;          // [..., k, k] float64 (the projection): the next call's start
};

// W: a CUDA float32/float64 tensor [..., m, n] (checked by the caller). Enqueues the whole
// computation on the current stream without synchronising. `start` (the projection only;
// undefined: none): a start basis checked by check_start_basis, float64 [..., k, k] -- the
// eigensolvers start from it where it is finite and orthonormal (docs/cuda_svd.md, "Warm
// start").
DeviceSvd device_svd(const at::Tensor& W, const RankRule& rule, SvdProducts products,
                     const at::Tensor& start = at::Tensor());

}  // namespace trp::cuda
