"""Which ISA's kernel an op runs when an ISA is forced: AVX-512 CPUs run an op's avx2 kernel (and name
it so) until the op has an avx512 variant of its own."""

AVX512_OPS = {"spmm_conv", "spgemm"}


def kernel_isa(op, isa):
    return "avx2" if isa == "avx512" and op not in AVX512_OPS else isa
