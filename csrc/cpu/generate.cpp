// The sampling entry points over StackStep (stack_step.h). stack_step: one time step through a
// whole unidirectional stack (T = 1, no autograd) per call. generate: the sampling loop of a
// character model (embedding -> recurrent stack -> linear decoder -> next character) as one
// call, so that no Python runs between characters.
//
// generate reproduces fusedrnn/charlm/sample.py's per-character loop operation for operation:
// the choice uses the same ATen ops and the same generator draws as sample.pick (softmax, then
// torch.multinomial's one-sample rule argmax(p / q) with q ~ Exp(1) drawn by exponential_),
// the plain stack runs StackStep (the arithmetic of stack_step, which the modules' single-step
// path calls), the variant layers run layer_fwd with T = 1 (what the modules call), and the
// decoder is the addmm that nn.Linear runs. The same seed therefore gives the same text.
// With half_weights the plain stack keeps w_ih and w_hh rounded to float16 (StackStep): the
// text is then the one the same loop gives a model whose w_ih and w_hh were rounded so.
#include <cmath>
#include <limits>

#include "layer_ops.h"
#include "stack_step.h"

namespace fusedrnn::cpu {

namespace {

constexpr int kVariantWeights = 7;  // ln_ih_w, ln_ih_b, ln_hh_w, ln_hh_b, ln_c_w, ln_c_b, w_ch

// ids [B] <- the first index of each row's largest value of v [B, V] (torch.argmax: a NaN
// ranks above everything).
void argmax_rows(const float* v, int64_t B, int64_t V, int64_t* ids) {
  for (int64_t b = 0; b < B; ++b) {
    const float* row = v + b * V;
    int64_t best = 0;
    for (int64_t k = 0; k < V; ++k) {
      if (std::isnan(row[k])) {
        best = k;
        break;
      }
      if (row[k] > row[best]) best = k;
    }
    ids[b] = best;
  }
}

// logits [B, V] float32 -> ids [B] (sample.pick); top_k <= 0 or >= V: all characters.
void pick(const at::Tensor& logits, double temperature, int64_t top_k, bool argmax,
          const std::optional<at::Generator>& gen, at::Tensor& q, int64_t* ids) {
  const int64_t B = logits.size(0), V = logits.size(1);
  if (argmax || temperature == 0) return argmax_rows(logits.const_data_ptr<float>(), B, V, ids);
  at::Tensor l = at::div(logits, temperature);
  if (top_k > 0 && top_k < V) {
    const at::Tensor kth = std::get<0>(at::topk(l, top_k, -1)).narrow(-1, top_k - 1, 1);
    l = l.masked_fill(l < kth, -std::numeric_limits<double>::infinity());
  }
  const at::Tensor probs = at::softmax(l, -1);
  const float* p = probs.const_data_ptr<float>();
  for (int64_t i = 0; i < B * V; ++i)
    TORCH_CHECK(std::isfinite(p[i]) && p[i] >= 0,
                "probability tensor contains either `inf`, `nan` or element < 0");
  q.exponential_(1, gen);  // torch.multinomial's draw for one sample: argmax of p / q
  float* r = q.data_ptr<float>();
  for (int64_t i = 0; i < B * V; ++i) r[i] = p[i] / r[i];
  argmax_rows(r, B, V, ids);
}

}  // namespace

std::vector<at::Tensor> stack_step(const std::string& cell_name, const at::Tensor& x,
                                   const OptTensor& hx, const OptTensor& cx,
                                   const std::vector<at::Tensor>& w, int64_t L, bool has_bias,
                                   int64_t proj, bool batch_first, bool fallback) {
  const Cell cell = parse_cell(cell_name);
  c10::NoGradGuard no_grad;
  // Tensors that do not fit raise, or with fallback answer {}. The modules' one-step shortcut
  // asks this of every sampling call, so it is a few integer comparisons here instead of a
  // dozen Python attribute reads.
  const auto mismatch = [&](const auto&... why) {
    TORCH_CHECK(fallback, "fusedrnn stack_step: ", why...);
    return std::vector<at::Tensor>{};
  };
  const auto dtype = x.scalar_type();
  if (dtype != at::kFloat && dtype != at::kDouble)
    return mismatch("supports float32 and float64, got ", dtype);
  if (!x.device().is_cpu()) return mismatch("CPU tensors only");
  if (L < 1) return mismatch("num_layers must be >= 1");
  if (proj != 0 && cell != Cell::LSTM) return mismatch("proj_size is LSTM only");
  if (auto why = flat_weights_mismatch(w, L, has_bias, proj, dtype, "weights"); !why.empty())
    return mismatch(why);
  const bool seq = x.dim() == 3, lstm = cell == Cell::LSTM;
  if (x.dim() != 2 && !(seq && x.size(batch_first ? 1 : 0) == 1))
    return mismatch("x must be [B, I] or one step of [T, B, I] (batch_first: [B, T, I]), got ",
                    x.sizes());
  const int64_t B = x.size(seq && !batch_first ? 1 : 0), I = x.size(-1);
  if (w[0].dim() != 2 || w[0].size(1) != I)
    return mismatch("x has ", I, " features, the first layer's w_ih is ", w[0].sizes());
  const int64_t H = w[0].size(0) / num_gates(cell), Hout = proj > 0 ? proj : H;
  // [L, B, size]; a cell's call (x [B, I], one layer) may also pass [B, size]
  const auto fits = [&](const OptTensor& s, int64_t size) {
    const bool cell_state = s->dim() == 2 && x.dim() == 2 && L == 1;
    const int64_t b = cell_state ? 0 : 1;
    return (cell_state || (s->dim() == 3 && s->size(0) == L)) && s->size(b) == B &&
           s->size(b + 1) == size && s->scalar_type() == dtype && s->device().is_cpu();
  };
  if (hx && !fits(hx, Hout))
    return mismatch("hx must be [", L, ", ", B, ", ", Hout, "] of x's dtype, got ", hx->sizes(),
                    " ", hx->scalar_type());
  if (lstm && hx.has_value() != cx.has_value())
    return mismatch("an LSTM takes both hx and cx or neither");
  if (lstm && cx && !fits(cx, H))
    return mismatch("cx must be [", L, ", ", B, ", ", H, "] of x's dtype, got ", cx->sizes(), " ",
                    cx->scalar_type());
  const auto opts = x.options();
  // [L, B, Hout] and [L, B, H], or [B, .] like a cell's states
  const bool cell_h = hx && hx->dim() == 2, cell_c = lstm && cx && cx->dim() == 2;
  at::Tensor h_n = cell_h ? at::empty({B, Hout}, opts) : at::empty({L, B, Hout}, opts);
  at::Tensor c_n = cell_c ? at::empty({B, H}, opts) : at::empty({lstm ? L : 0, B, H}, opts);
  // y owns its memory, as torch.nn's output does; shaped here rather than by ATen view ops
  at::Tensor y = !seq ? at::empty({B, Hout}, opts)
                 : batch_first ? at::empty({B, 1, Hout}, opts) : at::empty({1, B, Hout}, opts);
  const at::Tensor xc = x.contiguous();
  const at::Tensor h_in = hx ? hx->contiguous() : at::zeros_like(h_n);
  const at::Tensor c_in = !lstm ? c_n : cx ? cx->contiguous() : at::zeros_like(c_n);
  dispatch_float(x.scalar_type(), [&](auto t) {
    using T = decltype(t);
    StackStep<T> stack(cell, w, L, has_bias, proj, B, I);
    T* top = ptr<T>(h_n) + (L - 1) * B * Hout;
    stack.run(ptr<T>(xc), ptr<T>(h_in), lstm ? ptr<T>(c_in) : nullptr, ptr<T>(h_n),
              lstm ? ptr<T>(c_n) : nullptr);
    std::copy(top, top + B * Hout, ptr<T>(y));
  });
  return {y, h_n, c_n};
}

at::Tensor generate(FRNN_GENERATE_PARAMS) {
  const Cell kind = parse_cell(cell);
  c10::NoGradGuard no_grad;
  const auto dtype = h.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble,
              "fusedrnn generate supports float32 and float64 models, got ", dtype);
  const auto need = [](bool ok, const auto&... m) { TORCH_CHECK(ok, "fusedrnn generate: ", m...); };
  need(num_layers >= 1 && length >= 0, "num_layers >= 1, length >= 0");
  need(h.dim() == 3 && h.size(0) == num_layers && h.size(1) >= 1 && h.is_contiguous(),
       "h must be a contiguous [L, B, H] tensor, got ", h.sizes());
  const int64_t B = h.size(1), H = h.size(2), V = dec_w.size(0);
  const bool lstm = kind == Cell::LSTM;
  need(!lstm || (c && c->sizes() == h.sizes() && c->is_contiguous() && c->scalar_type() == dtype),
       "LSTM needs a contiguous c shaped like h");
  need(dec_w.dim() == 2 && dec_w.size(1) == H && dec_w.scalar_type() == dtype,
       "decoder weight must be [V, ", H, "] of the model's dtype");
  need(!dec_b || (dec_b->numel() == V && dec_b->scalar_type() == dtype),
       "decoder bias must have ", V, " elements");
  need(logits.scalar_type() == at::kFloat && logits.is_contiguous() &&
           logits.sizes() == at::IntArrayRef({B, V}),
       "logits must be a contiguous float32 [", B, ", ", V, "] tensor");
  need(!embed || (embed->dim() == 2 && embed->size(0) == V && embed->scalar_type() == dtype),
       "embedding must be [", V, ", E] of the model's dtype");
  const std::string why =
      flat_weights_mismatch(flat_weights, num_layers, has_bias, 0, dtype, "layer weights");
  need(why.empty(), why);
  need(flat_weights[1].dim() == 2 && flat_weights[1].size(1) == H, "w_hh must be [G*H, ", H,
       "] for h's H, got ", flat_weights[1].sizes());
  const bool variant = !variant_weights.empty();
  const int64_t n_variant = num_layers * kVariantWeights;
  need(!variant || static_cast<int64_t>(variant_weights.size()) == n_variant, "expected ",
       n_variant, " variant weights (7 per layer), got ", variant_weights.size());
  need(!variant || lstm || kind == Cell::GRU, "cell variants exist for LSTM and GRU only");
  need(!half_weights || (dtype == at::kFloat && !variant),
       "float16 weights are for float32 models of plain cells");
  return dispatch_float(dtype, [&](auto t) {
    using T = decltype(t);
    const int64_t E = embed.has_value() ? embed->size(1) : V;
    const int64_t GH = flat_weights[0].size(0);  // w_ih [G*H, E]
    const auto opts = h.options();
    at::Tensor ids = at::empty({B, length}, logits.options().dtype(at::kLong));  // [B, length]
    at::Tensor x = at::zeros({B, E}, opts);                                    // [B, E]
    at::Tensor q = at::empty({B, V}, logits.options());                        // [B, V]
    at::Tensor raw = std::is_same_v<T, float> ? logits : at::empty({B, V}, opts);
    std::vector<int64_t> next(B);
    const at::Tensor embed_rows = embed.has_value() ? embed->contiguous() : at::Tensor();
    auto input_row = [&](int64_t id, T* row) {  // [E]: the embedding of id, or one-hot
      if (embed_rows.defined()) {
        std::copy_n(ptr<T>(embed_rows) + id * E, E, row);
      } else {
        std::fill(row, row + E, T(0));
        row[id] = T(1);
      }
    };
    const at::Tensor wdt = dec_w.t();  // [H, V], as nn.Linear hands it to addmm

    // h and c hold the state after every step; plain cells: the stack steps into h_next, c_next
    // (StackStep's in and out must not overlap), copied back; variant cells: layer_fwd per layer.
    std::optional<StackStep<T>> stack;
    at::Tensor h_next, c_next;
    const at::Tensor top = h.select(0, num_layers - 1);  // the decoder's input
    // With few rows the first layer's input product of each symbol is computed once, as the
    // step would compute it (StackStep::input_products), and looked up per character.
    std::vector<T> table, gates0;
    if (!variant) {
      stack.emplace(kind, flat_weights, num_layers, has_bias, 0, B, E, half_weights,
                    /*interleave=*/true);
      h_next = at::empty_like(h);
      if (lstm) c_next = at::empty_like(*c);
      if (B <= kSmallM) {
        table.resize(V * GH);
        gates0.resize(B * GH);
        std::vector<T> one(E);
        for (int64_t v = 0; v < V; ++v) {
          input_row(v, one.data());
          stack->input_products(one.data(), 1, table.data() + v * GH);
        }
      }
    }
    const int64_t per_layer = weights_per_layer(has_bias, 0);

    for (int64_t i = 0; i < length; ++i) {
      pick(logits, temperature, top_k, argmax, generator, q, next.data());
      int64_t* out = ids.data_ptr<int64_t>();
      for (int64_t b = 0; b < B; ++b) {
        TORCH_CHECK(next[b] >= 0 && next[b] < V, "fusedrnn generate: id out of range");
        out[b * length + i] = next[b];
      }
      if (on_ids && every > 0 && ((i + 1) % every == 0 || i + 1 == length)) {
        const int64_t from = i / every * every;
        on_ids(ids.narrow(1, from, i + 1 - from));
      }
      if (i + 1 == length) break;  // the state stays at the last character's input
      T* xp = ptr<T>(x);
      for (int64_t b = 0; b < B && table.empty(); ++b) input_row(next[b], xp + b * E);
      if (!variant) {
        for (int64_t b = 0; b < B && !table.empty(); ++b)
          std::copy_n(table.data() + next[b] * GH, GH, gates0.data() + b * GH);
        stack->run(xp, ptr<T>(h), lstm ? ptr<T>(*c) : nullptr, ptr<T>(h_next),
                   lstm ? ptr<T>(c_next) : nullptr, table.empty() ? nullptr : gates0.data());
        h.copy_(h_next);
        if (lstm) c->copy_(c_next);
      } else {
        at::Tensor in = x;
        for (int64_t l = 0; l < num_layers; ++l) {
          const OptTensor* v = variant_weights.data() + l * kVariantWeights;
          const at::Tensor* w = flat_weights.data() + l * per_layer;  // w_ih, w_hh, b_ih, b_hh
          const OptTensor b_ih = has_bias ? OptTensor(w[2]) : std::nullopt;
          const OptTensor b_hh = has_bias ? OptTensor(w[3]) : std::nullopt;
          const OptTensor c0 = lstm ? OptTensor(c->select(0, l)) : std::nullopt;
          const auto r = layer_fwd(cell, in.view({1, B, in.size(1)}), h.select(0, l), c0, w[0],
                                   w[1], b_ih, b_hh, std::nullopt, std::nullopt, false,
                                   FRNN_BOOL_OPTIONS(FRNN_BOOL_NAME)
                                   v[0], v[1], v[2], v[3], v[4], v[5], v[6], zoneout_h,
                                   zoneout_c, std::nullopt, std::nullopt, eps, /*train=*/false);
          h.select(0, l).copy_(r[1]);
          if (lstm) c->select(0, l).copy_(r[2]);
          in = r[0].view({B, H});
        }
      }
      if (dec_b.has_value())
        at::addmm_out(raw, *dec_b, top, wdt);
      else
        at::mm_out(raw, top, wdt);
      if (!raw.is_same(logits)) logits.copy_(raw);  // sample.py reads float32 logits
    }
    return ids;
  });
}

}  // namespace fusedrnn::cpu
