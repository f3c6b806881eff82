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
    timeout = 1800  # setup_cache trains every method

    def setup_cache(self):
        # asv runs each track_ in its own process; training every method once here (results pickled to
        # disk by asv) instead of in setup() trains each method once, not once per metric.
        baseline = train_dense(JobSpec("", epochs=4, progress=False))
        results = {}
        for method in METHODS:
            try:
                results[method] = run_job(JobSpec(method, epochs=4, progress=False), baseline)[1]
            except ValueError as exc:  # the method has nothing to act on in this workload
                results[method] = str(exc)
        return results

    def setup(self, results, method):
        if isinstance(results.get(method), str):
            raise NotImplementedError(results[method])
        if method not in results:
            raise NotImplementedError(f"{method} was registered after the cache was built")
        self.result = results[method]

    def track_accuracy(self, results, method):
        return self.result["sparse"]["accuracy"]

    track_accuracy.unit = "top-1"

    def track_accuracy_drop(self, results, method):
        return self.result["dense"]["accuracy"] - self.result["sparse"]["accuracy"]

    track_accuracy_drop.unit = "top-1"

    def track_sparsity(self, results, method):
        return self.result["sparse"]["sparsity"]

    track_sparsity.unit = "fraction"
