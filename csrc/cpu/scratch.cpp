#include "scratch.h"

#include <c10/util/accumulate.h>
#include <c10/util/strides.h>

#include <array>
#include <vector>

namespace fusedrnn::cpu {

namespace {
thread_local std::array<at::Tensor, static_cast<size_t>(Scratch::kCount)> buffers;
thread_local std::vector<c10::Storage> output_pool;
int64_t nbytes(at::IntArrayRef shape, at::ScalarType dtype) {
  return c10::multiply_integers(shape) * static_cast<int64_t>(c10::elementSize(dtype));
}
}  // namespace

at::Tensor pooled_output(at::IntArrayRef shape, at::ScalarType dtype) {
  const auto opts = at::TensorOptions().dtype(dtype);
  const auto bytes = static_cast<size_t>(nbytes(shape, dtype));
  if (bytes < (size_t(1) << 20)) return at::empty(shape, opts);  // malloc reuses small blocks
  size_t held = 0;
  for (const c10::Storage& st : output_pool) {
    // use_count 1: only the pool holds it; resizing a returned tensor may have changed nbytes
    if (st.use_count() == 1 && st.nbytes() == bytes)
      return at::empty({0}, opts).set_(st, 0, shape, c10::contiguous_strides(shape));
    held += st.nbytes();
  }
  at::Tensor fresh = at::empty(shape, opts);
  constexpr auto cap = static_cast<size_t>(kOutputPoolBytes);
  if (held + bytes <= cap) {
    output_pool.push_back(fresh.storage());
  } else {  // full: replace a released buffer of another size where the pool then fits
    for (c10::Storage& st : output_pool)
      if (st.use_count() == 1 && held - st.nbytes() + bytes <= cap) {
        st = fresh.storage();
        break;
      }
  }
  return fresh;
}

at::Tensor scratch(Scratch slot, at::IntArrayRef shape, at::ScalarType dtype) {
  const auto opts = at::TensorOptions().dtype(dtype);
  const int64_t bytes = nbytes(shape, dtype);
  if (bytes == 0 || bytes > kScratchMaxBytes) return at::empty(shape, opts);
  at::Tensor& buf = buffers[static_cast<size_t>(slot)];
  if (buf.defined() && buf.storage().use_count() > 1) return at::empty(shape, opts);
  if (!buf.defined() || buf.numel() < bytes) {
    buf = at::Tensor();  // drop the old buffer before taking the new one
    buf = at::empty({bytes}, at::TensorOptions().dtype(at::kByte));
  }
  return buf.narrow(0, 0, bytes).view(dtype).view(shape);
}

void release_scratch() {
  for (auto& b : buffers) b = at::Tensor();
  output_pool.clear();
}

}  // namespace fusedrnn::cpu
