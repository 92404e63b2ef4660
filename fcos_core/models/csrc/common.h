// Shared by the fused CPU training kernels of fcos_core/models (see fcos_core/models/cpu_kernels.py).
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

namespace fcos_kernels {

// The kernels read channels-last float32 tensors as row-major [N*H*W, C] matrices.
inline void check_channels_last(const at::Tensor& x, const char* op, const char* name) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kFloat && x.dim() == 4,
              "fcos ", op, ": ", name, " must be a 4-D float32 CPU tensor");
  TORCH_CHECK(x.is_contiguous(at::MemoryFormat::ChannelsLast),
              "fcos ", op, ": ", name, " must be channels-last contiguous");
}

// How many per-thread accumulator slots parallel_rows may hand out.
inline int64_t row_slots() { return at::in_parallel_region() ? 1 : at::get_num_threads(); }

// at::parallel_for over rows [0, n) that also passes each chunk its accumulator slot, in
// [0, row_slots()). Called from inside another parallel region it runs inline on slot 0 (the
// thread number there belongs to the outer team and could be out of range).
template <typename F>
void parallel_rows(int64_t n, int64_t grain, int64_t slots, const F& f) {
  if (at::in_parallel_region() || slots == 1) {
    f(0, n, 0);
    return;
  }
  at::parallel_for(0, n, grain, [&](int64_t begin, int64_t end) {
    const int64_t slot = at::get_thread_num();
    TORCH_CHECK(slot >= 0 && slot < slots, "fcos kernels: thread ", slot, " outside ", slots);
    f(begin, end, slot);
  });
}

}  // namespace fcos_kernels
