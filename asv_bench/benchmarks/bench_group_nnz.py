"""group_nnz (the N:M validity / density counter) per ISA against numpy."""

import os

import numpy as np

from sparseforge import _C


class GroupNnz:
    params = ([(4096, 4096), (11008, 4096)], [4, 8], ["scalar", "avx2"])
    param_names = ["shape", "m", "isa"]

    def setup(self, shape, m, isa):
        if isa not in _C.supported_isas():
            raise NotImplementedError(f"{isa} is not supported here")
        os.environ["SPARSEFORGE_ISA"] = isa
        rng = np.random.default_rng(0)
        self.w = rng.standard_normal(shape).astype(np.float32)
        self.w[rng.random(shape) < 0.5] = 0

    def teardown(self, shape, m, isa):
        os.environ.pop("SPARSEFORGE_ISA", None)

    def time_group_nnz(self, shape, m, isa):
        _C.group_nnz(self.w, m)

    def time_numpy_baseline(self, shape, m, isa):
        (self.w.reshape(self.w.shape[0], -1, m) != 0).sum(-1)
