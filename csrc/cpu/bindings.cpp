// Python bindings of the CPU backend (module fusedrnn._C). Every entry point releases the GIL:
// the loops run entirely in C++.
#include <pybind11/functional.h>
#include <torch/extension.h>

#include "layer_ops.h"  // and through it blas.h, kernels.h, scratch.h, sgemm.h

namespace py = pybind11;
namespace cpu = fusedrnn::cpu;

#define FRNN_PY_ARG(name) py::arg(#name),
#define FRNN_NAME_STRING(name) #name,

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "fusedrnn compiled CPU backend";
  // The layer entry points take the arguments of fusedrnn/ops/library.py::LAYER_ARGS
  // positionally (FRNN_LAYER_PARAMS), then their own; layer_ops.h documents their results.
  const py::call_guard<py::gil_scoped_release> nogil;
  // options.h's list, which library.BOOL_OPTIONS must equal (the positions agree)
  m.attr("bool_options") = std::vector<std::string>{FRNN_BOOL_OPTIONS(FRNN_NAME_STRING)};
  m.def("layer_fwd", &cpu::layer_fwd, nogil,
        "Forward of one layer/direction (LAYER_ARGS but save, eps, train): -> [y, h_n, c_n, "
        "saved...]");
  m.def("layer_bwd", &cpu::layer_bwd, nogil,
        "Backward of one layer/direction (LAYER_ARGS but save, eps, y, saved, grad_y, grad_hn, "
        "grad_cn, grad_mask): -> one gradient per GRAD_INPUTS entry");
  m.def("stack_step", &cpu::stack_step, nogil,
        "One step of a unidirectional layer stack, no autograd: -> [y, h_n, c_n], or [] when "
        "the tensors do not fit and fallback is set",
        py::arg("cell"), py::arg("x"), py::arg("hx"), py::arg("cx"), py::arg("flat_weights"),
        py::arg("num_layers"), py::arg("has_bias"), py::arg("proj_size"),
        py::arg("batch_first") = false, py::arg("fallback") = false);
  m.def("generate", &cpu::generate, nogil,
        "The sampling loop of a character model: -> ids [B, length]; h, c, logits updated; "
        "on_ids(ids [B, n]) every `every` characters (it runs holding the GIL)",
        py::arg("cell"), py::arg("embed"), py::arg("flat_weights"), py::arg("num_layers"),
        py::arg("has_bias"), py::arg("variant_weights"), FRNN_BOOL_OPTIONS(FRNN_PY_ARG)
        py::arg("zoneout_h"), py::arg("zoneout_c"), py::arg("eps"), py::arg("dec_w"),
        py::arg("dec_b"), py::arg("h"), py::arg("c"), py::arg("logits"), py::arg("length"),
        py::arg("temperature"), py::arg("top_k"), py::arg("argmax"), py::arg("generator"),
        py::arg("on_ids") = nullptr, py::arg("every") = 0, py::arg("half_weights") = false);
  m.def("kernel_isa", &cpu::kernel_isa,
        "Instruction set of the pointwise kernels chosen for this CPU");
  m.def("release_scratch", &cpu::release_scratch,
        "Frees the scratch buffers that the calling thread keeps between layer calls");
  m.def("own_sgemm", &cpu::use_own_sgemm, "Whether float32 GEMMs currently use the packed kernel");
  m.def("sgemm_isa", &cpu::sgemm_isa,
        "Instruction set of the packed float32 GEMM's tile ('' when GEMMs go to the BLAS)");
#ifdef FUSEDRNN_TEST_HOOKS
  // Switches and entries for the tests only (setup.py compiles them in with
  // FUSEDRNN_TEST_HOOKS=1, as .ci/run does): they run both strategies of a choice against the
  // same oracle. A production build has none of them.
  const std::tuple<const char*, std::atomic<bool>*, const char*> switches[] = {
      {"_set_row_blocks", &cpu::row_blocks_enabled,
       "Layers run blocks of batch rows per thread through the whole sequence where that pays "
       "(default on) instead of splitting every step over the threads"},
      {"_set_own_sgemm", &cpu::own_sgemm_enabled,
       "float32 GEMMs use the packed kernel (default on where the CPU has AVX2+FMA) "
       "instead of the BLAS"},
      {"_set_sgemm_avx512", &cpu::sgemm_avx512_enabled,
       "The packed kernel takes its AVX-512 tile (default on where the CPU has AVX-512F) "
       "instead of the AVX2 one"}};
  for (const auto& [name, flag, doc] : switches)
    m.def(name, [flag = flag](bool on) { *flag = on; }, doc);
  m.def(
      "_gemm",
      [](bool ta, bool tb, double alpha, const at::Tensor& A, const at::Tensor& B, double beta,
         at::Tensor& C) {
        // Test entry to gemm() on strided 2-D operands: the stride of dim 0 is the leading
        // dimension, dim 1 must be contiguous.
        for (const at::Tensor* t : {&A, &B, static_cast<const at::Tensor*>(&C)})
          TORCH_CHECK(t->dim() == 2 && t->stride(1) == 1 && t->scalar_type() == C.scalar_type(),
                      "_gemm: operands must be 2-D, row-contiguous and of one dtype");
        const int64_t m = C.size(0), n = C.size(1), k = ta ? A.size(0) : A.size(1);
        TORCH_CHECK((ta ? A.size(1) : A.size(0)) == m && (tb ? B.size(1) : B.size(0)) == k &&
                        (tb ? B.size(0) : B.size(1)) == n,
                    "_gemm: shapes do not match");
        AT_DISPATCH_FLOATING_TYPES(C.scalar_type(), "_gemm", [&] {
          cpu::gemm<scalar_t>(ta, tb, m, n, k, scalar_t(alpha), A.data_ptr<scalar_t>(), A.stride(0),
                              B.data_ptr<scalar_t>(), B.stride(0), scalar_t(beta),
                              C.data_ptr<scalar_t>(), C.stride(0));
        });
      },
      nogil, "Test entry: C = alpha op(A) op(B) + beta C through the backend's gemm()");
#endif
}
