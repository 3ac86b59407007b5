// Validation of the layer entry points' arguments (clear errors for bad input) and their
// contiguous form (prepare).
#include "layer_ops.h"

namespace fusedrnn::cpu {

namespace {
constexpr const char* kWho = "fusedrnn cpu backend: ";

void check_tensor(const at::Tensor& t, const char* name, at::ScalarType dtype) {
  TORCH_CHECK(t.device().is_cpu(), kWho, name, " must be a CPU tensor, got ", t.device());
  TORCH_CHECK(t.scalar_type() == dtype, kWho, name, " has dtype ", t.scalar_type(),
              " but x has dtype ", dtype);
}

at::Tensor checked(const at::Tensor& t, const char* name, at::ScalarType dtype,
                   at::IntArrayRef shape) {
  check_tensor(t, name, dtype);
  TORCH_CHECK(t.sizes() == shape, kWho, name, " must have shape ", shape, ", got ", t.sizes());
  return t.contiguous();
}

// Zoneout keep values: the mask as [N, K] (stride K), or a [K] row of p (stride 0).
void keep_values(const OptTensor& mask, double p, int64_t K, const char* name,
                 const LayerArgs& a, at::Tensor& keep, int64_t& stride) {
  if (mask.has_value()) {
    const at::Tensor& m = *mask;
    TORCH_CHECK(m.device().is_cpu(), kWho, name, " must be a CPU tensor");
    const bool ok = a.packed ? m.dim() == 2 && m.size(0) == a.N && m.size(1) == K
                             : m.dim() == 3 && m.size(0) == a.T && m.size(1) == a.B &&
                                   m.size(2) == K;
    TORCH_CHECK(ok, kWho, name, " must have the leading shape of the input and ", K,
                " features (", a.packed ? "[N, K]" : "[T, B, K]", "), got ", m.sizes());
    keep = m.reshape({a.N, K}).to(a.x.scalar_type()).contiguous();
    stride = K;
  } else if (p > 0) {
    keep = at::full({K}, p, a.x.options());
    stride = 0;
  }
}
}  // namespace

LayerArgs prepare(FRNN_LAYER_PARAMS) {
  LayerArgs a;
  const auto need = [](bool ok, const auto&... m) { TORCH_CHECK(ok, kWho, m...); };
  a.cell = parse_cell(cell);
  const bool lstm = a.cell == Cell::LSTM;
  // as fusedrnn/ops/checks.py, for direct calls: the kernels below take these cells' layouts
  need(lstm || a.cell == Cell::GRU ||
           !(ln_ih_w.has_value() || mask_h.has_value() || zoneout_h > 0),
       "cell variants exist for lstm and gru, got '", cell, "'");
  need(lstm || !(cifg || w_ch.has_value() || ln_c_w.has_value() || mask_c.has_value() ||
                 zoneout_c > 0),
       "cifg, peephole, layer norm of c and zoneout of c are LSTM-only");
  const int64_t G = a.G = lstm && cifg ? 3 : num_gates(a.cell);
  const auto dtype = x.scalar_type();
  need(dtype == at::kFloat || dtype == at::kDouble, "supports float32 and float64, got ", dtype);
  check_tensor(x, "x", dtype);
  check_tensor(w_ih, "w_ih", dtype);
  need(w_ih.dim() == 2 && w_ih.size(0) % G == 0 && w_ih.size(0) > 0, "w_ih must be [", G,
       "*H, I], got ", w_ih.sizes());
  a.Hout = a.H = w_ih.size(0) / G;
  a.I = w_ih.size(1);
  if (w_hr.has_value()) {
    need(lstm, "w_hr (proj_size) is LSTM only");
    check_tensor(*w_hr, "w_hr", dtype);
    need(w_hr->dim() == 2 && w_hr->size(1) == a.H, "w_hr must be [Hout, H=", a.H, "], got ",
         w_hr->sizes());
    a.Hout = w_hr->size(0);
    a.w_hr = w_hr->contiguous();
  }
  a.packed = batch_sizes.has_value();
  a.reverse = reverse;
  need(h0.dim() == 2, "h0 must be [B, Hout], got ", h0.sizes());
  if (a.packed) {
    const at::Tensor& bs = *batch_sizes;
    need(bs.device().is_cpu() && bs.scalar_type() == at::kLong && bs.dim() == 1,
         "batch_sizes must be a 1-D int64 CPU tensor");
    need(x.dim() == 2, "packed x must be [N, I], got ", x.sizes());
    a.T = bs.numel();
    a.N = x.size(0);
    const int64_t total = a.T ? bs.sum().item<int64_t>() : 0;
    need(total == a.N, "sum(batch_sizes) = ", total, " but packed x has ", a.N, " rows");
    a.batch_sizes = bs.contiguous();
  } else {
    need(x.dim() == 3, "x must be [T, B, I], got ", x.sizes());
    need(x.size(1) == h0.size(0), "x has batch ", x.size(1), " but h0 has ", h0.size(0));
    a.T = x.size(0);
    a.N = a.T * x.size(1);
  }
  a.B = h0.size(0);
  need(x.size(-1) == a.I, "x has ", x.size(-1), " features but w_ih expects ", a.I);
  a.x = x.reshape({a.N, a.I}).contiguous();
  a.h0 = checked(h0, "h0", dtype, {a.B, a.Hout});
  a.w_ih = w_ih.contiguous();
  a.w_hh = checked(w_hh, "w_hh", dtype, {G * a.H, a.Hout});
  need(!lstm || c0.has_value(), "LSTM needs c0");
  if (lstm) a.c0 = checked(*c0, "c0", dtype, {a.B, a.H});
  const int64_t GH = G * a.H;
  // an optional argument, checked and contiguous; undefined when absent
  auto opt = [&](const OptTensor& t, const char* name, at::IntArrayRef shape) {
    return t.has_value() ? checked(*t, name, dtype, shape) : at::Tensor();
  };
  a.b_ih = opt(b_ih, "b_ih", {GH});
  a.b_hh = opt(b_hh, "b_hh", {GH});
  a.ln_ih_b = opt(ln_ih_b, "ln_ih_b", {GH});
  a.ln_hh_b = opt(ln_hh_b, "ln_hh_b", {GH});

  // After these checks and checks.py's (ln_c_w is LSTM-only), the gains are given exactly when
  // ln (ln_c_w: and LSTM), the biases only then.
  const bool ln = a.flags.ln = ln_ih_w.has_value();
  need(ln == ln_hh_w.has_value() && (!lstm || ln == ln_c_w.has_value()),
       "layer norm needs ln_ih_w, ln_hh_w (and ln_c_w for LSTM) together");
  need(ln || !(ln_ih_b || ln_hh_b || ln_c_b),
       "layer-norm biases given without the layer-norm gains");
  a.ln_ih_w = opt(ln_ih_w, "ln_ih_w", {GH});
  a.ln_hh_w = opt(ln_hh_w, "ln_hh_w", {GH});
  a.ln_c_w = opt(ln_c_w, "ln_c_w", {a.H});
  if (a.ln_c_w.defined())  // the bias zeros when absent
    a.ln_c_b = ln_c_b ? opt(ln_c_b, "ln_c_b", {a.H}) : at::zeros({a.H}, a.x.options());
  static_cast<BoolOptions&>(a.flags) = {FRNN_BOOL_OPTIONS(FRNN_BOOL_NAME)};
  a.flags.peep = w_ch.has_value();
  if (a.flags.peep) a.w_ch = opt(w_ch, "w_ch", {cifg ? 2 : 3, a.H}).view({-1});

  // As the reference: a mask means training zoneout whatever p is; p <= 0 without one is off.
  keep_values(mask_h, zoneout_h, a.Hout, "mask_h", a, a.keep_h, a.keep_h_stride);
  if (lstm) keep_values(mask_c, zoneout_c, a.H, "mask_c", a, a.keep_c, a.keep_c_stride);
  a.flags.zone_c = a.keep_c.defined();
  a.eps = eps;
  return a;
}

}  // namespace fusedrnn::cpu
