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
  const Cell kind = parse_cell(cell);
  const bool lstm = kind == Cell::LSTM;
  TORCH_CHECK(lstm || kind == Cell::GRU ||
                  !(ln_ih_w.has_value() || mask_h.has_value() || zoneout_h > 0),
              kWho, "cell variants exist for lstm and gru, got '", cell, "'");
  TORCH_CHECK(lstm || !(cifg || w_ch.has_value() || ln_c_w.has_value() || mask_c.has_value() ||
                        zoneout_c > 0),
              kWho, "cifg, peephole, layer norm of c and zoneout of c are LSTM-only");
  a.cell = kind;
  const int64_t G = a.G = lstm && cifg ? 3 : num_gates(kind);
  const auto dtype = x.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble, kWho,
              "supports float32 and float64, got ", dtype);
  check_tensor(x, "x", dtype);
  check_tensor(w_ih, "w_ih", dtype);
  TORCH_CHECK(w_ih.dim() == 2 && w_ih.size(0) % G == 0 && w_ih.size(0) > 0, kWho,
              "w_ih must be [", G, "*H, I], got ", w_ih.sizes());
  a.Hout = a.H = w_ih.size(0) / G;
  a.I = w_ih.size(1);
  if (w_hr.has_value()) {
    TORCH_CHECK(lstm, kWho, "w_hr (proj_size) is LSTM only");
    check_tensor(*w_hr, "w_hr", dtype);
    TORCH_CHECK(w_hr->dim() == 2 && w_hr->size(1) == a.H, kWho, "w_hr must be [Hout, H=", a.H,
                "], got ", w_hr->sizes());
    a.Hout = w_hr->size(0);
    a.w_hr = w_hr->contiguous();
  }
  a.packed = batch_sizes.has_value();
  a.reverse = reverse;
  TORCH_CHECK(h0.dim() == 2, kWho, "h0 must be [B, Hout], got ", h0.sizes());
  if (a.packed) {
    const at::Tensor& bs = *batch_sizes;
    TORCH_CHECK(bs.device().is_cpu() && bs.scalar_type() == at::kLong && bs.dim() == 1, kWho,
                "batch_sizes must be a 1-D int64 CPU tensor");
    TORCH_CHECK(x.dim() == 2, kWho, "packed x must be [N, I], got ", x.sizes());
    a.T = bs.numel();
    a.N = x.size(0);
    const int64_t total = a.T ? bs.sum().item<int64_t>() : 0;
    TORCH_CHECK(total == a.N, kWho, "sum(batch_sizes) = ", total, " but packed x has ", a.N,
                " rows");
    a.batch_sizes = bs.contiguous();
  } else {
    TORCH_CHECK(x.dim() == 3, kWho, "x must be [T, B, I], got ", x.sizes());
    TORCH_CHECK(x.size(1) == h0.size(0), kWho, "x has batch ", x.size(1), " but h0 has ",
                h0.size(0));
    a.T = x.size(0);
    a.N = a.T * x.size(1);
  }
  a.B = h0.size(0);
  TORCH_CHECK(x.size(-1) == a.I, kWho, "x has ", x.size(-1), " features but w_ih expects ", a.I);
  a.x = x.reshape({a.N, a.I}).contiguous();
  a.h0 = checked(h0, "h0", dtype, {a.B, a.Hout});
  a.w_ih = w_ih.contiguous();
  a.w_hh = checked(w_hh, "w_hh", dtype, {G * a.H, a.Hout});
  TORCH_CHECK(!lstm || c0.has_value(), kWho, "LSTM needs c0");
  if (lstm) a.c0 = checked(*c0, "c0", dtype, {a.B, a.H});
  const int64_t GH = G * a.H;
  const auto opts = a.x.options();
  // an optional argument, checked and contiguous; undefined when absent
  auto opt = [&](const OptTensor& t, const char* name, at::IntArrayRef shape) {
    return t.has_value() ? checked(*t, name, dtype, shape) : at::Tensor();
  };
  a.b_ih = opt(b_ih, "b_ih", {GH});
  a.b_hh = opt(b_hh, "b_hh", {GH});
  a.ln_ih_b = opt(ln_ih_b, "ln_ih_b", {GH});
  a.ln_hh_b = opt(ln_hh_b, "ln_hh_b", {GH});

  // After these checks and the LSTM-only one above, the gains are given exactly when ln
  // (ln_c_w: and LSTM), the biases only then.
  const bool ln = a.flags.ln = ln_ih_w.has_value();
  TORCH_CHECK(ln == ln_hh_w.has_value() && (!lstm || ln == ln_c_w.has_value()), kWho,
              "layer norm needs ln_ih_w, ln_hh_w (and ln_c_w for LSTM) together");
  TORCH_CHECK(ln || !(ln_ih_b.has_value() || ln_hh_b.has_value() || ln_c_b.has_value()), kWho,
              "layer-norm biases given without the layer-norm gains");
  a.ln_ih_w = opt(ln_ih_w, "ln_ih_w", {GH});
  a.ln_hh_w = opt(ln_hh_w, "ln_hh_w", {GH});
  a.ln_c_w = opt(ln_c_w, "ln_c_w", {a.H});
  if (a.ln_c_w.defined())  // the bias zeros when absent
    a.ln_c_b = ln_c_b.has_value() ? opt(ln_c_b, "ln_c_b", {a.H}) : at::zeros({a.H}, opts);
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
