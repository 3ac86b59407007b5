// Scratch memory of the CPU layer ops, kept by each calling thread between calls.
//
// The big temporaries of a layer call (pre-activation gradients, packed weights, the gates
// of an inference forward) are tens of MB at B = 64, T = 64, H = 512. Freshly allocated on
// every call, they come back from the system as untouched pages, and faulting them in cost
// about a fifth of the CPU time of a forward+backward there (minor faults, measured with
// getrusage). Each slot below keeps its last buffer instead; outputs are never scratch, but
// come from a pool of released outputs (pooled_output).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

namespace fusedrnn::cpu {

enum class Scratch : int {
  kPackedRecurrent,  // StepWeights of W_hh
  kPackedProj,       // StepWeights of W_hr
  kPackedGemm,       // op(B) packed inside one sgemm() call
  kGates,            // [N, G*H]: gates of an inference forward / dG of a backward
  kGatesH,           // [N, G*H]: recurrent-side dG of a GRU backward
  kWork1, kWork2, kWork3, kWork4, kWork5, kWork6, kWork7,  // other temporaries of one call
  kCount
};

// Buffers above this size are allocated per call and not kept.
constexpr int64_t kScratchMaxBytes = int64_t(256) << 20;

// An uninitialised tensor of the given shape and dtype in the calling thread's buffer for
// slot (grown when too small). If the slot's buffer is still referenced — a tensor from an
// earlier request is alive — a fresh tensor is returned instead, so two live requests never
// share memory.
at::Tensor scratch(Scratch slot, at::IntArrayRef shape, at::ScalarType dtype);

// An uninitialised tensor for an output of a layer op (y, the activations saved for the
// backward, dx): memory of an earlier output of exactly the same size that nothing references
// any more, else a new allocation that the pool keeps for later calls (at most
// kOutputPoolBytes per thread). Training repeats the same shapes every iteration, so after
// the first one the outputs stop faulting in fresh pages; the tensor owns its whole storage,
// as from at::empty.
at::Tensor pooled_output(at::IntArrayRef shape, at::ScalarType dtype);

constexpr int64_t kOutputPoolBytes = int64_t(1) << 30;

// Frees the calling thread's scratch buffers and output pool (memory still referenced by
// live tensors stays with them).
void release_scratch();

}  // namespace fusedrnn::cpu
