"""Which custom CUDA kernels have been validated on real hardware, and the committed evidence.

Each default on CUDA stays on the composite path (torch calls, correct on any device) until the
custom kernel's CUDA tests and compute-sanitizer memcheck have passed on an H100/H200. Flipping a
default is one edit here: set the constant to the committed result file under bench/results/
that shows those passes. None means "not validated yet".
"""

from __future__ import annotations

# The Jacobi SVD kernels behind truncated_svd / lowrank_project / lowrank_project_groups on CUDA.
CUDA_SVD_VALIDATED_BY: str | None = None

# The fused low-rank conv kernel (TRP_CONV_IMPL=fused, and a candidate of the automatic choice).
FUSED_CONV_VALIDATED_BY: str | None = None
