"""flashspec: lossless speculative decoding with bandit-selected draft arms."""

from flashspec.config import ArmConfig, BanditConfig, FlashSpecConfig, SamplingConfig, TargetConfig
from flashspec.engine import SpeculativeEngine
from flashspec.metrics import ArmStats, GenerationResult

__all__ = [
    "ArmConfig", "ArmStats", "BanditConfig", "FlashSpecConfig", "GenerationResult", "SamplingConfig",
    "SpeculativeEngine", "TargetConfig",
]
__version__ = "0.1.0"
