// Shared vocabulary of the compiled core: the ISA enum and the run-time facts kernels dispatch on.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace sparseforge {

enum class Isa : int { kScalar = 0, kAvx2 = 1, kNeon = 2, kWasm = 3, kAvx512 = 4 };

// AVX-512 (F+BW+VL+DQ) CPUs also run every AVX2 kernel: an op without an avx512 variant dispatches
// its avx2 one there, and reports that kernel's name.
inline bool runs_avx2(Isa isa) { return isa == Isa::kAvx2 || isa == Isa::kAvx512; }

const char* isa_name(Isa isa);
// Parses "scalar" | "avx2" | "avx512" | "neon" | "wasm"; false for anything else.
bool parse_isa(const std::string& text, Isa* out);

// CPU facts, probed once.
struct CpuFeatures {
  bool avx2 = false;
  bool fma = false;
  bool f16c = false;
  bool avx512f = false;
  bool avx512bw = false;
  bool avx512vl = false;
  bool avx512dq = false;
  bool neon = false;
};
const CpuFeatures& cpu_features();

// ISA variants compiled into this binary, and those of them the running CPU can execute.
std::vector<Isa> compiled_isas();
std::vector<Isa> supported_isas();
Isa best_isa();
// The ISA kernels run with now: SPARSEFORGE_ISA when set (checked on every call, so tests can switch
// it), else best_isa(). Throws std::invalid_argument for an unknown name and std::runtime_error for an
// ISA that was not compiled in or that this CPU cannot run: forcing must never fall back silently.
Isa active_isa();

// Kernel names follow DESIGN.md: <op>_<dtype>__<isa>.
std::string kernel_name(const char* op, const char* dtype, Isa isa);

}  // namespace sparseforge
