// Shared by the fused CPU training kernels of fcos_core/models (see fcos_core/models/cpu_kernels.py).
#pragma once

#include <ATen/ATen.h>

namespace fcos_kernels {

// The kernels read channels-last float32 tensors as row-major [N*H*W, C] matrices.
inline void check_channels_last(const at::Tensor& x, const char* op, const char* name) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kFloat && x.dim() == 4,
              "fcos ", op, ": ", name, " must be a 4-D float32 CPU tensor");
  TORCH_CHECK(x.is_contiguous(at::MemoryFormat::ChannelsLast),
              "fcos ", op, ": ", name, " must be channels-last contiguous");
}

}  // namespace fcos_kernels
