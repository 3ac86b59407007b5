// Validation of one layer's arguments (clear errors for bad input) and their contiguous form.
#include "layer_ops.h"
#include "scratch.h"

namespace fusedrnn::cpu {

void check_tensor(const at::Tensor& t, const char* name, at::ScalarType dtype, const char* who) {
  TORCH_CHECK(t.device().is_cpu(), who, name, " must be a CPU tensor, got ", t.device());
  TORCH_CHECK(t.scalar_type() == dtype, who, name, " has dtype ", t.scalar_type(),
              " but x has dtype ", dtype);
}

std::pair<int64_t, int64_t> packed_shape(const at::Tensor& x, const at::Tensor& bs,
                                         const char* who) {
  TORCH_CHECK(bs.device().is_cpu() && bs.scalar_type() == at::kLong && bs.dim() == 1, who,
              "batch_sizes must be a 1-D int64 CPU tensor");
  TORCH_CHECK(x.dim() == 2, who, "packed x must be [N, I], got ", x.sizes());
  const int64_t T = bs.numel(), N = x.size(0);
  const int64_t total = T ? bs.sum().item<int64_t>() : 0;
  TORCH_CHECK(total == N, who, "sum(batch_sizes) = ", total, " but packed x has ", N, " rows");
  return {T, N};
}

namespace {
constexpr const char* kWho = "fusedrnn cpu backend: ";

void check_shape(const at::Tensor& t, const char* name, at::IntArrayRef shape) {
  TORCH_CHECK(t.sizes() == shape, kWho, name, " must have shape ", shape, ", got ", t.sizes());
}
}  // namespace

LayerArgs prepare(FRNN_LAYER_PARAMS) {
  LayerArgs a;
  a.cell = parse_cell(cell);
  const auto dtype = x.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble,
              "fusedrnn cpu backend supports float32 and float64, got ", dtype);
  check_tensor(x, "x", dtype, kWho);
  check_tensor(h0, "h0", dtype, kWho);
  check_tensor(w_ih, "w_ih", dtype, kWho);
  check_tensor(w_hh, "w_hh", dtype, kWho);
  a.packed = batch_sizes.has_value();
  a.reverse = reverse;
  const int64_t G = num_gates(a.cell);
  TORCH_CHECK(w_ih.dim() == 2 && w_ih.size(0) % G == 0,
              "fusedrnn cpu backend: w_ih must be [", G, "*H, I], got ", w_ih.sizes());
  a.H = w_ih.size(0) / G;
  a.I = w_ih.size(1);
  a.Hout = a.H;
  if (w_hr.has_value()) {
    TORCH_CHECK(a.cell == Cell::LSTM, "fusedrnn cpu backend: w_hr (proj_size) is LSTM only");
    check_tensor(*w_hr, "w_hr", dtype, kWho);
    TORCH_CHECK(w_hr->dim() == 2 && w_hr->size(1) == a.H,
                "fusedrnn cpu backend: w_hr must be [Hout, H=", a.H, "], got ", w_hr->sizes());
    a.Hout = w_hr->size(0);
    a.w_hr = w_hr->contiguous();
  }
  if (a.packed) {
    std::tie(a.T, a.N) = packed_shape(x, *batch_sizes, kWho);
    a.batch_sizes = batch_sizes->contiguous();
  } else {
    TORCH_CHECK(x.dim() == 3, "fusedrnn cpu backend: x must be [T, B, I], got ", x.sizes());
    a.T = x.size(0);
    TORCH_CHECK(x.size(1) == h0.size(0), "fusedrnn cpu backend: x has batch ", x.size(1),
                " but h0 has ", h0.size(0));
    a.N = a.T * x.size(1);
  }
  a.B = h0.size(0);
  TORCH_CHECK(x.size(-1) == a.I, "fusedrnn cpu backend: x has ", x.size(-1),
              " features but w_ih expects ", a.I);
  check_shape(w_hh, "w_hh", {G * a.H, a.Hout});
  check_shape(h0, "h0", {a.B, a.Hout});
  a.x = x.reshape({a.N, a.I}).contiguous();
  a.h0 = h0.contiguous();
  a.w_ih = w_ih.contiguous();
  a.w_hh = w_hh.contiguous();
  if (a.cell == Cell::LSTM) {
    TORCH_CHECK(c0.has_value(), "fusedrnn cpu backend: LSTM needs c0");
    check_tensor(*c0, "c0", dtype, kWho);
    check_shape(*c0, "c0", {a.B, a.H});
    a.c0 = c0->contiguous();
  }
  for (const auto* b : {&b_ih, &b_hh}) {
    if (b->has_value()) {
      check_tensor(**b, b == &b_ih ? "b_ih" : "b_hh", dtype, kWho);
      check_shape(**b, b == &b_ih ? "b_ih" : "b_hh", {G * a.H});
    }
  }
  // Biases are folded into one vector added inside the pointwise kernels (no extra pass).
  a.bias = b_ih.has_value() ? b_ih->contiguous().clone() : at::zeros({G * a.H}, x.options());
  if (a.cell == Cell::GRU) {
    if (b_hh.has_value()) {
      a.bias.narrow(0, 0, 2 * a.H).add_(b_hh->narrow(0, 0, 2 * a.H));
      a.bias_hn = b_hh->narrow(0, 2 * a.H, a.H).contiguous();
    } else {
      a.bias_hn = at::zeros({a.H}, x.options());
    }
  } else if (b_hh.has_value()) {
    a.bias.add_(*b_hh);
  }
  a.layout = ChunkLayout(a.H, G, a.T);
  if (!a.layout.identity()) {
    a.perm = at::empty({G * a.H}, at::TensorOptions().dtype(at::kLong));
    int64_t* p = a.perm.data_ptr<int64_t>();
    for (int64_t c = 0; c < a.layout.n; ++c)
      for (int64_t g = 0; g < G; ++g)
        for (int64_t j = 0; j < a.layout.width(c); ++j)
          p[a.layout.col(c) + g * a.layout.width(c) + j] = g * a.H + a.layout.start(c) + j;
    at::Tensor w_ih_l = scratch(Scratch::kPermIh, a.w_ih.sizes(), dtype);
    at::Tensor w_hh_l = scratch(Scratch::kPermHh, a.w_hh.sizes(), dtype);
    a.w_ih = at::index_select_out(w_ih_l, a.w_ih, 0, a.perm);
    a.w_hh = at::index_select_out(w_hh_l, a.w_hh, 0, a.perm);
    a.bias = a.bias.index_select(0, a.perm);
  }
  return a;
}

}  // namespace fusedrnn::cpu
