// Scalar reference of spgemm: the oracle every ISA variant is tested against, and the portable fallback.
#include "spgemm_passes.h"

namespace sparseforge {

SPARSEFORGE_SPGEMM_DEFINE(scalar, ScalarPolicy)

}  // namespace sparseforge
