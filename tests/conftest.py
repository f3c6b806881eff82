import os
import subprocess
import sys

import pytest
import torch
import torch.nn as nn


def run_cli(*args, env=None, check=False):
    """Runs `python -m sparseforge.cli ARGS` in a fresh interpreter; returns CompletedProcess."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    proc = subprocess.run([sys.executable, "-m", "sparseforge.cli", *args], capture_output=True, text=True,
                          env=full_env, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


@pytest.fixture
def cli():
    return run_cli


@pytest.fixture
def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 10))


@pytest.fixture
def convnet():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
        nn.Conv2d(32, 32, 1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    )


@pytest.fixture(scope="session")
def fashion():
    """A fixed Fashion-MNIST subset (Debian's dataset-fashion-mnist): 20k train, the 10k test set."""
    from sparseforge.data import load_dataset

    try:
        data = load_dataset("fashion-mnist")
    except RuntimeError as exc:
        pytest.skip(f"Fashion-MNIST is not installed here: {exc}")
    return data.x_train[:20000], data.y_train[:20000], data.x_test, data.y_test


def fashion_mlp(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                         nn.Linear(256, 10))


def small_mobilenet(seed, ch=16):
    """MobileNet-style: 3x3 stride-2 stem, [dw 3x3 + pw 1x1] x 3, GAP, linear (cheap enough for CI)."""
    torch.manual_seed(seed)

    def block(cin, cout, stride):
        return [nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False), nn.BatchNorm2d(cin), nn.ReLU(),
                nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

    return nn.Sequential(nn.Conv2d(1, ch, 3, 2, 1, bias=False), nn.BatchNorm2d(ch), nn.ReLU(),
                         *block(ch, 2 * ch, 1), *block(2 * ch, 4 * ch, 2), *block(4 * ch, 4 * ch, 1),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * ch, 10))


@pytest.fixture(scope="session")
def smollm2():
    """(tokenizer, model) of SmolLM2-135M (fp32, eval), or skip when the [models] packages are missing."""
    from sparseforge.data.models import load_smollm2

    try:
        return load_smollm2()
    except (RuntimeError, ImportError, OSError) as exc:
        pytest.skip(f"SmolLM2 is not installed here: {exc}")


@pytest.fixture(scope="session")
def smollm2_qkv(pytestconfig, request):
    """Real attention inputs of SmolLM2-135M on 512 tokens of BBC News: ``{"ids": [1, 512], "qkv": {layer:
    {"q" [1, 9, 512, 64], "k"/"v" [1, 3, 512, 64], "causal", "scale"}}}`` for layers 2, 15 and 29. Cached in
    pytest's cache directory, so the model is loaded only on the first run."""
    cache = getattr(pytestconfig, "cache", None)
    path = cache.mkdir("sparseforge_smollm2") / "qkv512_v1.pt" if cache is not None else None
    if path is not None and path.exists():
        return torch.load(path)
    tok, model = request.getfixturevalue("smollm2")
    from sparseforge.attention import capture_qkv
    from sparseforge.data.text import bbc_token_blocks

    ids = bbc_token_blocks(tok, 512, 1)
    data = {"ids": ids, "qkv": capture_qkv(model, ids, layers=[2, 15, 29])}
    if path is not None:
        torch.save(data, path)
    return data
