"""Shared base of the N:M methods: the ``n``/``m`` config fields and their check, the target shape
check, and the pattern that ``export()`` hands to the nm_gemm kernel module."""

from __future__ import annotations

from dataclasses import dataclass

from .config import Config, ConfigError, param
from .registry import Method
from .targets import require_reduction_multiple

__all__ = ["NMConfig", "NMMethod"]


@dataclass
class NMConfig(Config):
    n: int = param(2, "weights kept per group", range=(1, 64))
    m: int = param(4, "group size along the input (reduction) dimension", range=(1, 64))

    def check(self) -> None:
        if self.n > self.m:
            raise ConfigError(self.METHOD, "n", self.n, f"<= m ({self.m})")


class NMMethod(Method):
    """A method whose result keeps ``config.n`` of every ``config.m`` weights along the input dim."""

    kind = "nm"
    kernel = "nm_gemm"

    def nm_pattern(self) -> tuple[int, int]:
        return self.config.n, self.config.m

    def check_targets(self, targets) -> None:
        cfg = self.config
        require_reduction_multiple(self.name, targets, cfg.m, f"{cfg.n}:{cfg.m}")
