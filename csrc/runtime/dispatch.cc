#include <algorithm>
#include <cstdlib>
#include <stdexcept>

#include "sparseforge/common.h"

namespace sparseforge {

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kScalar: return "scalar";
    case Isa::kAvx2: return "avx2";
    case Isa::kAvx512: return "avx512";
    case Isa::kNeon: return "neon";
    case Isa::kWasm: return "wasm";
  }
  return "unknown";
}

bool parse_isa(const std::string& text, Isa* out) {
  for (Isa isa : {Isa::kScalar, Isa::kAvx2, Isa::kAvx512, Isa::kNeon, Isa::kWasm}) {
    if (text == isa_name(isa)) {
      *out = isa;
      return true;
    }
  }
  return false;
}

std::vector<Isa> compiled_isas() {
  std::vector<Isa> out{Isa::kScalar};
#if defined(SPARSEFORGE_HAVE_AVX2)
  out.push_back(Isa::kAvx2);
#endif
#if defined(SPARSEFORGE_HAVE_AVX512)
  out.push_back(Isa::kAvx512);
#endif
#if defined(SPARSEFORGE_HAVE_NEON)
  out.push_back(Isa::kNeon);
#endif
#if defined(SPARSEFORGE_HAVE_WASM_SIMD)
  out.push_back(Isa::kWasm);  // only in the wasm32 module (scripts/build_wasm.py), never in _C
#endif
  return out;
}

static bool cpu_runs(Isa isa) {
  const CpuFeatures& f = cpu_features();
  switch (isa) {
    case Isa::kScalar: return true;
    case Isa::kAvx2: return f.avx2 && f.fma;
    case Isa::kAvx512: return f.avx2 && f.fma && f.avx512f && f.avx512bw && f.avx512vl && f.avx512dq;
    case Isa::kNeon: return f.neon;
    case Isa::kWasm:
#if defined(__wasm_simd128__)
      return true;  // the module was built with -msimd128: an engine that loaded it runs SIMD128
#else
      return false;  // only inside the wasm module
#endif
  }
  return false;
}

std::vector<Isa> supported_isas() {
  std::vector<Isa> out;
  for (Isa isa : compiled_isas())
    if (cpu_runs(isa)) out.push_back(isa);
  return out;
}

Isa best_isa() {
  std::vector<Isa> s = supported_isas();
  return s.back();  // compiled_isas() lists from least to most capable
}

Isa active_isa() {
  const char* forced = std::getenv("SPARSEFORGE_ISA");
  if (forced == nullptr || forced[0] == '\0') return best_isa();
  Isa isa;
  if (!parse_isa(forced, &isa))
    throw std::invalid_argument(std::string("SPARSEFORGE_ISA='") + forced +
                                "' is not an ISA; expected one of scalar, avx2, avx512, neon, wasm");
  std::vector<Isa> s = supported_isas();
  if (std::find(s.begin(), s.end(), isa) == s.end())
    throw std::runtime_error(std::string("SPARSEFORGE_ISA='") + forced +
                             "' cannot run here: it was not compiled into this build or this CPU lacks it");
  return isa;
}

std::string kernel_name(const char* op, const char* dtype, Isa isa) {
  return std::string(op) + "_" + dtype + "__" + isa_name(isa);
}

}  // namespace sparseforge
