// Training-mode BatchNorm2d (+ optional ReLU) for channels-last float32 CPU tensors.
//
// Why: in eager CPU training ATen's channels-last batch norm makes several passes (statistics,
// normalisation, then ReLU and its backward as separate ops) and opens an OpenMP region per pass
// even for tiny tensors, where waking a sleeping thread (OMP_WAIT_POLICY=PASSIVE) costs more than
// the work. Here a channels-last tensor is a row-major [R = N*H*W, C] matrix and each direction is
// two passes over it, split over rows only when a thread gets enough rows to be worth waking.
//
// The backward does not read the forward's output: the ReLU's mask is recomputed from x with the
// same float expression (normalised() below, from the saved float mean and invstd), which is one
// stream fewer over memory in each of its two passes.
//
// Numerics: per-channel sums are accumulated in float over blocks of kBlock rows and the block
// sums in double; the variance uses data shifted by the first row (the "shifted data" algorithm),
// so a large mean does not cancel the variance away.
//
// Used by fcos_core/models/fast_batchnorm.py; built by fcos_core/models/cpu_kernels.py.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "common.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace {

constexpr int64_t kBlock = 64;  // rows summed in float before joining the double accumulator

// The smallest chunk of rows a thread is given: min_elements / C rows (so a tensor of fewer than
// 2 * min_elements elements is done by the calling thread alone).
int64_t row_grain(int64_t channels, int64_t min_elements) {
  return std::max<int64_t>(1, min_elements / std::max<int64_t>(1, channels));
}

void check_input(const at::Tensor& x, const char* name) {
  fcos_kernels::check_channels_last(x, "batch_norm_act", name);
}

// The normalised value before the ReLU, (x - mean) * scale + bias with scale = w * invstd. The
// forward and the backward evaluate this same float expression from the saved float statistics,
// so the ReLU masks agree bit for bit (the build passes -ffp-contract=off, so that the compiler
// cannot turn it into an FMA in one loop and not in the other). Subtracting the mean first keeps the error relative to the output even when
// the mean is large next to the spread (x * scale + shift would cancel).
inline float normalised(float x, float mean, float scale, float bias) {
  return (x - mean) * scale + bias;
}

void scale_of(const float* invstd, const float* w, int64_t C, float* scale) {
  for (int64_t c = 0; c < C; ++c)
    scale[c] = static_cast<float>(static_cast<double>(w[c]) * invstd[c]);
}

// Per-channel sums over rows [begin, end) of a [R, C] matrix: out_a += sum f_a(row), out_b +=
// sum f_b(row); `visit(row_index, acc_a, acc_b)` adds one row to float accumulators.
template <typename Visit>
void block_sums(int64_t begin, int64_t end, int64_t C, double* out_a, double* out_b,
                Visit visit) {
  std::vector<float> acc_a(C), acc_b(C);
  for (int64_t r0 = begin; r0 < end; r0 += kBlock) {
    std::fill(acc_a.begin(), acc_a.end(), 0.f);
    std::fill(acc_b.begin(), acc_b.end(), 0.f);
    const int64_t r1 = std::min(end, r0 + kBlock);
    for (int64_t r = r0; r < r1; ++r) visit(r, acc_a.data(), acc_b.data());
    for (int64_t c = 0; c < C; ++c) {
      out_a[c] += acc_a[c];
      out_b[c] += acc_b[c];
    }
  }
}

// Runs `body(begin, end, a, b)` over [0, R) in parallel chunks, each chunk with its own pair of
// length-C double accumulators a and b, and returns their totals (2*C doubles: a then b).
template <typename Body>
std::vector<double> parallel_sums(int64_t R, int64_t C, int64_t grain, Body body) {
  const int64_t slots = fcos_kernels::row_slots();
  std::vector<double> part(static_cast<size_t>(slots * 2 * C), 0.0);
  fcos_kernels::parallel_rows(R, grain, slots, [&](int64_t begin, int64_t end, int64_t t) {
    double* a = part.data() + t * 2 * C;
    body(begin, end, a, a + C);
  });
  std::vector<double> total(static_cast<size_t>(2 * C), 0.0);
  for (int64_t t = 0; t < slots; ++t)
    for (int64_t i = 0; i < 2 * C; ++i) total[i] += part[t * 2 * C + i];
  return total;
}

}  // namespace

// Forward. Returns (y, save_mean, save_invstd); updates running_mean/running_var in place with
// `momentum` (the unbiased variance, as torch does).
std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_act_forward(
    const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
    at::Tensor running_mean, at::Tensor running_var, double momentum, double eps, bool relu,
    int64_t min_elements) {
  check_input(x, "input");
  const int64_t C = x.size(1);
  const int64_t R = x.numel() / std::max<int64_t>(1, C);
  TORCH_CHECK(R > 1, "fcos batch_norm_act: expected more than 1 value per channel");
  const float* xp = x.data_ptr<float>();
  const int64_t grain = row_grain(C, min_elements);

  // pass 1: sums of (x - k) and (x - k)^2 with k = the first row
  std::vector<float> k(xp, xp + C);
  auto sums = parallel_sums(R, C, grain, [&](int64_t b, int64_t e, double* s1, double* s2) {
    const float* __restrict__ kp = k.data();
    block_sums(b, e, C, s1, s2, [&](int64_t r, float* __restrict__ a1, float* __restrict__ a2) {
      const float* __restrict__ row = xp + r * C;
      for (int64_t c = 0; c < C; ++c) {
        const float d = row[c] - kp[c];
        a1[c] += d;
        a2[c] += d * d;
      }
    });
  });

  auto save_mean = at::empty({C}, x.options());
  auto save_invstd = at::empty({C}, x.options());
  std::vector<float> scale(C);
  {
    float* m = save_mean.data_ptr<float>();
    float* is = save_invstd.data_ptr<float>();
    const float* w = weight.data_ptr<float>();
    const float* bi = bias.data_ptr<float>();
    float* rm = running_mean.data_ptr<float>();
    float* rv = running_var.data_ptr<float>();
    const double n = static_cast<double>(R);
    for (int64_t c = 0; c < C; ++c) {
      const double d_mean = sums[c] / n;
      const double var = std::max(0.0, sums[C + c] / n - d_mean * d_mean);
      const double mean = k[c] + d_mean;
      const double invstd = 1.0 / std::sqrt(var + eps);
      m[c] = static_cast<float>(mean);
      is[c] = static_cast<float>(invstd);
      rm[c] = static_cast<float>((1.0 - momentum) * rm[c] + momentum * mean);
      rv[c] = static_cast<float>((1.0 - momentum) * rv[c] + momentum * var * n / (n - 1.0));
    }
    scale_of(is, w, C, scale.data());
  }

  // pass 2: y = (x - mean) * scale + bias (then ReLU)
  auto y = at::empty_like(x, at::MemoryFormat::ChannelsLast);
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, R, grain, [&](int64_t b, int64_t e) {
    const float* __restrict__ sc = scale.data();
    const float* __restrict__ mp = save_mean.data_ptr<float>();
    const float* __restrict__ bp = bias.data_ptr<float>();
    for (int64_t r = b; r < e; ++r) {
      const float* __restrict__ xr = xp + r * C;
      float* __restrict__ yr = yp + r * C;
      if (relu) {
        for (int64_t c = 0; c < C; ++c) yr[c] = std::max(normalised(xr[c], mp[c], sc[c], bp[c]), 0.f);
      } else {
        for (int64_t c = 0; c < C; ++c) yr[c] = normalised(xr[c], mp[c], sc[c], bp[c]);
      }
    }
  });
  return {y, save_mean, save_invstd};
}

// Backward (of ReLU too when `relu`). Returns (grad_input, grad_weight, grad_bias).
std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_act_backward(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight,
    const at::Tensor& bias, const at::Tensor& save_mean, const at::Tensor& save_invstd,
    bool relu, int64_t min_elements) {
  check_input(x, "input");
  check_input(grad_out, "grad_output");
  TORCH_CHECK(grad_out.sizes() == x.sizes(), "fcos batch_norm_act: grad_output has shape ",
              grad_out.sizes(), ", input ", x.sizes());
  const int64_t C = x.size(1);
  const int64_t R = x.numel() / C;
  const float* xp = x.data_ptr<float>();
  const float* gp = grad_out.data_ptr<float>();
  const float* mean = save_mean.data_ptr<float>();
  const float* invstd = save_invstd.data_ptr<float>();
  const float* w = weight.data_ptr<float>();
  const int64_t grain = row_grain(C, min_elements);
  std::vector<float> scale(C);
  scale_of(invstd, w, C, scale.data());
  const float* __restrict__ mp = mean;
  const float* __restrict__ sc = scale.data();
  const float* __restrict__ bp = bias.data_ptr<float>();

  // pass 1: sum of g' and of g' * (x - mean), g' = g where the forward's ReLU passed
  auto sums = parallel_sums(R, C, grain, [&](int64_t b, int64_t e, double* sg, double* sgx) {
    block_sums(b, e, C, sg, sgx, [&](int64_t r, float* __restrict__ a1, float* __restrict__ a2) {
      const float* __restrict__ xr = xp + r * C;
      const float* __restrict__ gr = gp + r * C;
      if (relu) {
        for (int64_t c = 0; c < C; ++c) {
          const float g = normalised(xr[c], mp[c], sc[c], bp[c]) > 0.f ? gr[c] : 0.f;
          a1[c] += g;
          a2[c] += g * (xr[c] - mp[c]);
        }
      } else {
        for (int64_t c = 0; c < C; ++c) {
          a1[c] += gr[c];
          a2[c] += gr[c] * (xr[c] - mp[c]);
        }
      }
    });
  });

  auto grad_weight = at::empty({C}, weight.options());
  auto grad_bias = at::empty({C}, weight.options());
  // grad_input = k1 * (g' - k3) + k2 * (x - mean) per channel, k3 = mean of g' (subtracted
  // first: where g' is close to its mean the difference is exact)
  std::vector<float> k1(C), k2(C), k3(C);
  {
    float* gw = grad_weight.data_ptr<float>();
    float* gb = grad_bias.data_ptr<float>();
    const double n = static_cast<double>(R);
    for (int64_t c = 0; c < C; ++c) {
      const double is = invstd[c];
      gb[c] = static_cast<float>(sums[c]);
      gw[c] = static_cast<float>(sums[C + c] * is);
      const double a = w[c] * is;
      k1[c] = static_cast<float>(a);
      k2[c] = static_cast<float>(-a * is * is * sums[C + c] / n);
      k3[c] = static_cast<float>(sums[c] / n);
    }
  }

  // pass 2: grad_input
  auto grad_input = at::empty_like(x, at::MemoryFormat::ChannelsLast);
  float* gip = grad_input.data_ptr<float>();
  at::parallel_for(0, R, grain, [&](int64_t b, int64_t e) {
    const float* __restrict__ q1 = k1.data();
    const float* __restrict__ q2 = k2.data();
    const float* __restrict__ q3 = k3.data();
    for (int64_t r = b; r < e; ++r) {
      const float* __restrict__ xr = xp + r * C;
      const float* __restrict__ gr = gp + r * C;
      float* __restrict__ out = gip + r * C;
      if (relu) {
        for (int64_t c = 0; c < C; ++c) {
          const float g = normalised(xr[c], mp[c], sc[c], bp[c]) > 0.f ? gr[c] : 0.f;
          out[c] = q1[c] * (g - q3[c]) + q2[c] * (xr[c] - mp[c]);
        }
      } else {
        for (int64_t c = 0; c < C; ++c)
          out[c] = q1[c] * (gr[c] - q3[c]) + q2[c] * (xr[c] - mp[c]);
      }
    }
  });
  return {grad_input, grad_weight, grad_bias};
}

TORCH_LIBRARY_FRAGMENT(fcos_kernels, m) {
  m.def("batch_norm_act_forward(Tensor x, Tensor weight, Tensor bias, Tensor(a!) running_mean, "
        "Tensor(b!) running_var, float momentum, float eps, bool relu, int min_elements) "
        "-> (Tensor, Tensor, Tensor)");
  m.def("batch_norm_act_backward(Tensor grad_out, Tensor x, Tensor weight, Tensor bias, "
        "Tensor save_mean, Tensor save_invstd, bool relu, int min_elements) "
        "-> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(fcos_kernels, CPU, m) {
  m.impl("batch_norm_act_forward", &batch_norm_act_forward);
  m.impl("batch_norm_act_backward", &batch_norm_act_backward);
}
