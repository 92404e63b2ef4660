// Used by fcos_core/models/fast_conv.py; built by fcos_core/models/cpu_kernels.py.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "common.h"

namespace {

// Weight gradient of a depthwise conv (groups == channels, no dilation) on channels-last
// tensors: dw[c, i, j] = sum_{n, oh, ow} g[n, oh, ow, c] * x[n, oh*sh - ph + i, ow*sw - pw + j, c].
// oneDNN's backward-weights kernel is fast only for 3x3 at batch 1; its generic path for 5x5
// runs on one thread and copies. Here, for 8 channels at a time, the kh*kw tap sums stay in
// registers (K is a template constant for 3, 5 and 7) while one output row streams past;
// each row's sums are joined in double.
typedef float v8f __attribute__((vector_size(32)));

static inline v8f load8(const float* p) {
  v8f v;
  __builtin_memcpy(&v, p, sizeof(v));
  return v;
}

struct DwGeometry {
  int64_t N, C, H, W, Ho, Wo, sh, sw, ph, pw;
};

// One output row (n, oh) into acc[t * C + c] (float), taps t = i * kw + j.
template <int K>
void dw_row_fixed(const DwGeometry& d, const float* gp, const float* xp, int64_t n, int64_t oh,
                  float* acc) {
  const int64_t C = d.C;
  int64_t cb = 0;
  for (; cb + 8 <= C; cb += 8) {
    v8f a[K * K];
#pragma GCC unroll 49
    for (int t = 0; t < K * K; ++t) a[t] = v8f{0, 0, 0, 0, 0, 0, 0, 0};
    for (int64_t ow = 0; ow < d.Wo; ++ow) {
      const v8f g = load8(gp + ((n * d.Ho + oh) * d.Wo + ow) * C + cb);
      const int64_t iw0 = ow * d.sw - d.pw;
#pragma GCC unroll 7
      for (int i = 0; i < K; ++i) {
        const int64_t ih = oh * d.sh - d.ph + i;
        if (ih < 0 || ih >= d.H) continue;
        const float* xrow = xp + ((n * d.H + ih) * d.W) * C + cb;
        if (iw0 >= 0 && iw0 + K <= d.W) {
#pragma GCC unroll 7
          for (int j = 0; j < K; ++j) a[i * K + j] += g * load8(xrow + (iw0 + j) * C);
        } else {
#pragma GCC unroll 7
          for (int j = 0; j < K; ++j) {
            const int64_t iw = iw0 + j;
            if (iw >= 0 && iw < d.W) a[i * K + j] += g * load8(xrow + iw * C);
          }
        }
      }
    }
#pragma GCC unroll 49
    for (int t = 0; t < K * K; ++t)
      for (int l = 0; l < 8; ++l) acc[t * C + cb + l] += a[t][l];
  }
  for (; cb < C; ++cb)  // channels left over from the blocks of 8
    for (int64_t ow = 0; ow < d.Wo; ++ow) {
      const float g = gp[((n * d.Ho + oh) * d.Wo + ow) * C + cb];
      for (int i = 0; i < K; ++i) {
        const int64_t ih = oh * d.sh - d.ph + i;
        if (ih < 0 || ih >= d.H) continue;
        for (int j = 0; j < K; ++j) {
          const int64_t iw = ow * d.sw - d.pw + j;
          if (iw >= 0 && iw < d.W) acc[(i * K + j) * C + cb] += g * xp[((n * d.H + ih) * d.W + iw) * C + cb];
        }
      }
    }
}

// Any kernel size (the sums in memory rather than registers).
void dw_row_generic(const DwGeometry& d, int64_t kh, int64_t kw, const float* gp,
                    const float* xp, int64_t n, int64_t oh, float* acc) {
  const int64_t C = d.C;
  for (int64_t i = 0; i < kh; ++i) {
    const int64_t ih = oh * d.sh - d.ph + i;
    if (ih < 0 || ih >= d.H) continue;
    for (int64_t j = 0; j < kw; ++j) {
      float* __restrict__ a = acc + (i * kw + j) * C;
      for (int64_t ow = 0; ow < d.Wo; ++ow) {
        const int64_t iw = ow * d.sw - d.pw + j;
        if (iw < 0 || iw >= d.W) continue;
        const float* __restrict__ gr = gp + ((n * d.Ho + oh) * d.Wo + ow) * C;
        const float* __restrict__ xr = xp + ((n * d.H + ih) * d.W + iw) * C;
        for (int64_t c = 0; c < C; ++c) a[c] += gr[c] * xr[c];
      }
    }
  }
}

}  // namespace

at::Tensor depthwise_weight_grad(const at::Tensor& grad_out, const at::Tensor& x, int64_t kh,
                                 int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw,
                                 int64_t min_elements) {
  fcos_kernels::check_channels_last(x, "depthwise_weight_grad", "input");
  fcos_kernels::check_channels_last(grad_out, "depthwise_weight_grad", "grad_output");
  const DwGeometry d{x.size(0), x.size(1), x.size(2), x.size(3), grad_out.size(2),
                     grad_out.size(3), sh, sw, ph, pw};
  TORCH_CHECK(grad_out.size(0) == d.N && grad_out.size(1) == d.C,
              "fcos depthwise_weight_grad: grad_output and input disagree in N or C");
  const int64_t C = d.C;
  const float* xp = x.data_ptr<float>();
  const float* gp = grad_out.data_ptr<float>();
  const int64_t taps = kh * kw;
  const int64_t rows = d.N * d.Ho;
  const int64_t grain = std::max<int64_t>(1, min_elements / std::max<int64_t>(1, d.Wo * C));
  const int64_t slots = fcos_kernels::row_slots();
  std::vector<double> part(static_cast<size_t>(slots * taps * C), 0.0);
  fcos_kernels::parallel_rows(rows, grain, slots, [&](int64_t begin, int64_t end, int64_t slot) {
    double* acc_d = part.data() + slot * taps * C;
    std::vector<float> acc(static_cast<size_t>(taps * C));
    for (int64_t r = begin; r < end; ++r) {
      const int64_t n = r / d.Ho, oh = r % d.Ho;
      std::fill(acc.begin(), acc.end(), 0.f);
      if (kh == 3 && kw == 3) dw_row_fixed<3>(d, gp, xp, n, oh, acc.data());
      else if (kh == 5 && kw == 5) dw_row_fixed<5>(d, gp, xp, n, oh, acc.data());
      else if (kh == 7 && kw == 7) dw_row_fixed<7>(d, gp, xp, n, oh, acc.data());
      else dw_row_generic(d, kh, kw, gp, xp, n, oh, acc.data());
      for (int64_t t = 0; t < taps * C; ++t) acc_d[t] += acc[t];
    }
  });
  // [taps, C] sums -> the weight layout [C, 1, kh, kw]
  auto grad_weight = at::empty({C, 1, kh, kw}, x.options().memory_format(at::MemoryFormat::Contiguous));
  float* out = grad_weight.data_ptr<float>();
  for (int64_t c = 0; c < C; ++c)
    for (int64_t t = 0; t < taps; ++t) {
      double v = 0.0;
      for (int64_t s = 0; s < slots; ++s) v += part[(s * taps + t) * C + c];
      out[c * taps + t] = static_cast<float>(v);
    }
  return grad_weight;
}

TORCH_LIBRARY_FRAGMENT(fcos_kernels, m) {
  m.def("depthwise_weight_grad(Tensor grad_out, Tensor x, int kh, int kw, int sh, int sw, "
        "int ph, int pw, int min_elements) -> Tensor");
}

TORCH_LIBRARY_IMPL(fcos_kernels, CPU, m) {
  m.impl("depthwise_weight_grad", &depthwise_weight_grad);
}
