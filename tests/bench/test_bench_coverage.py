"""Every compiled kernel has a pytest-benchmark here: a new op in ``_C.ops()``
fails this until tests/bench/test_bench_<op>*.py exists (basenames must be unique across tests/)."""

from pathlib import Path

from sparseforge import _C

HERE = Path(__file__).parent


def test_every_kernel_has_a_benchmark():
    missing = [op for op in _C.ops() if not any(HERE.glob(f"test_bench_{op}*.py"))]
    assert not missing, f"add tests/bench/test_bench_<op>.py for {missing}"

