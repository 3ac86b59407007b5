#include "scratch.h"

#include <array>

namespace fusedrnn::cpu {

namespace {
std::array<at::Tensor, static_cast<size_t>(Scratch::kCount)>& buffers() {
  thread_local std::array<at::Tensor, static_cast<size_t>(Scratch::kCount)> b;
  return b;
}
}  // namespace

at::Tensor scratch(Scratch slot, at::IntArrayRef shape, at::ScalarType dtype) {
  const auto opts = at::TensorOptions().dtype(dtype);
  int64_t numel = 1;
  for (const int64_t s : shape) numel *= s;
  const int64_t bytes = numel * static_cast<int64_t>(c10::elementSize(dtype));
  if (bytes == 0 || bytes > kScratchMaxBytes) return at::empty(shape, opts);
  at::Tensor& buf = buffers()[static_cast<size_t>(slot)];
  if (buf.defined() && buf.storage().use_count() > 1) return at::empty(shape, opts);
  if (!buf.defined() || buf.numel() < bytes) {
    buf = at::Tensor();  // drop the old buffer before taking the new one
    buf = at::empty({bytes}, at::TensorOptions().dtype(at::kByte));
  }
  return buf.narrow(0, 0, bytes).view(dtype).view(shape);
}

void release_scratch() {
  for (auto& b : buffers()) b = at::Tensor();
}

}  // namespace fusedrnn::cpu
