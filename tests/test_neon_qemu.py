"""The NEON spmm_conv kernel against the scalar reference, cross-compiled for aarch64 and run under qemu.

Needs Debian's g++-aarch64-linux-gnu and qemu-user-static; skips (saying which is missing) otherwise.
"""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
KDIR = ROOT / "csrc" / "kernels" / "spmm_conv"
CXX = "aarch64-linux-gnu-g++"
QEMU = "qemu-aarch64-static"


@pytest.mark.skipif(shutil.which(CXX) is None, reason=f"{CXX} not found (apt-get install g++-aarch64-linux-gnu)")
@pytest.mark.skipif(shutil.which(QEMU) is None, reason=f"{QEMU} not found (apt-get install qemu-user-static)")
def test_neon_matches_scalar_reference_under_qemu(tmp_path):
    exe = tmp_path / "spmm_neon_test"
    build = [CXX, "-O2", "-static", "-std=c++17", "-Wall", "-Wextra", "-Wno-unused-parameter", "-DSPARSEFORGE_HAVE_NEON",
             f"-I{ROOT / 'csrc' / 'include'}", f"-I{KDIR}",
             str(KDIR / "neon_test_main.cc"), str(KDIR / "reference.cc"), str(KDIR / "neon.cc"), "-o", str(exe)]
    proc = subprocess.run(build, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    run = subprocess.run([QEMU, str(exe)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and "ALL OK" in run.stdout, run.stdout + run.stderr
    assert run.stdout.count(": ok") == 8, run.stdout
