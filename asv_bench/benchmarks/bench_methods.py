"""Every registered method (read from the registry at import, so an installed plugin shows up with no
edit here) on every backend: inference time of its exported pattern, and its quality and sparsity on the
main job's workload. Unsupported combinations raise NotImplementedError in setup, which asv reports as
skipped."""

import copy

import torch

from sparseforge.backends import for_inference, list_backends
from sparseforge.bench.runner import _apply_for_speed, speed_model
from sparseforge.jobs import JobSpec, run_job, train_dense
from sparseforge.registry import method_names

METHODS = method_names()
BACKENDS = ["cpu", "wasm", "reference"]
WIDTH = 1024


class MethodInference:
    params = (METHODS, BACKENDS, [1, 16])
    param_names = ["method", "backend", "batch"]
    timeout = 300

    def setup(self, method, backend, batch):
        if not list_backends()[backend].available:
            raise NotImplementedError(list_backends()[backend].reason)
        torch.set_num_threads(1)
        dense = speed_model(WIDTH)
        try:
            sparse = _apply_for_speed(method, copy.deepcopy(dense))
        except ValueError as exc:  # e.g. a conv-only method on this MLP: asv reports it as skipped
            raise NotImplementedError(str(exc)) from None
        self.dense, self.model = dense.eval(), for_inference(sparse, backend)
        self.x = torch.randn(batch, WIDTH)
        # One call here: NMLinear measures sparse vs dense on its first call per shape (its dispatcher), and
        # `asv run --quick` times a single call with no warm-up, which reported that calibration (30-60 ms).
        with torch.inference_mode():
            self.model(self.x)

    def time_forward(self, method, backend, batch):
        with torch.inference_mode():
            self.model(self.x)

    def track_speedup_vs_dense(self, method, backend, batch):
        from sparseforge.bench.runner import measure_speed

        return measure_speed(self.dense, self.model, batch, WIDTH, repeats=9)["speedup"]

    track_speedup_vs_dense.unit = "x"


class MethodQuality:
    params = (METHODS,)
    param_names = ["method"]
    timeout = 600

    def setup_cache(self):
        return train_dense(JobSpec("", epochs=4, progress=False))

    def setup(self, baseline, method):
        spec = JobSpec(method, epochs=4, progress=False)
        try:
            self.result = run_job(spec, baseline)[1]
        except ValueError as exc:  # the method has nothing to act on in this workload
            raise NotImplementedError(str(exc)) from None

    def track_accuracy(self, baseline, method):
        return self.result["sparse"]["accuracy"]

    track_accuracy.unit = "top-1"

    def track_accuracy_drop(self, baseline, method):
        return self.result["dense"]["accuracy"] - self.result["sparse"]["accuracy"]

    track_accuracy_drop.unit = "top-1"

    def track_sparsity(self, baseline, method):
        return self.result["sparse"]["sparsity"]

    track_sparsity.unit = "fraction"
