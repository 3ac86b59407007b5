// The layer op's bool options, listed once for both C++ backends: their entry points'
// parameters (cpu/layer_ops.h, cuda/layer_module.h) and the flags every row kernel receives
// (BoolOptions: a base of the CPU's VariantFlags and of CUDA's CellOptions) come from this list.
// A new bool option is a row here and in fusedrnn/ops/library.py::LAYER_ARGS (the bool rows
// follow `reverse`, in this order), then its math and the template flag of the loops that read
// it. No torch, no device code: plain C++17.
#pragma once

#define FRNN_BOOL_OPTIONS(X) X(cifg)  // f = 1 - i, 3 gate blocks (LSTM)

#define FRNN_BOOL_PARAM(name) bool name,
#define FRNN_BOOL_NAME(name) name,
#define FRNN_BOOL_FIELD(name) bool name = false;
#define FRNN_BOOL_OR(name) || name

namespace fusedrnn {

struct BoolOptions {  // off by default: torch.nn's cell
  FRNN_BOOL_OPTIONS(FRNN_BOOL_FIELD)
  bool any() const { return false FRNN_BOOL_OPTIONS(FRNN_BOOL_OR); }  // an option on
};

}  // namespace fusedrnn
