"""flashspec: lossless speculative decoding with bandit-selected draft arms."""

from flashspec.benchmark import BenchmarkResult
from flashspec.config import ArmConfig, BanditConfig, FlashSpecConfig, SamplingConfig, TargetConfig
from flashspec.deploy import DeploymentConfig
from flashspec.engine import SpeculativeEngine
from flashspec.lora import LoRAAdapter
from flashspec.metrics import ArmStats, GenerationResult

__all__ = [
    "ArmConfig", "ArmStats", "BanditConfig", "BenchmarkResult", "DeploymentConfig", "FlashSpecConfig",
    "GenerationResult", "LoRAAdapter", "SamplingConfig", "SpeculativeEngine", "TargetConfig",
]
__version__ = "0.1.0"
