"""The one training loop (:mod:`.loop`), its samplers, its checkpoints and its FSDP sharding."""

from .checkpoints import CheckpointMismatch, LoopState
from .loop import (
    Trainer,
    default_workers,
    format_duration,
    launched_processes,
    make_scheduler,
    say_time_left,
    use_cpu,
    warmup_length,
)
from .samplers import BucketBatchSampler, EpochSampler, ShardedBatchSampler, epoch_order

__all__ = [
    "BucketBatchSampler",
    "CheckpointMismatch",
    "EpochSampler",
    "LoopState",
    "ShardedBatchSampler",
    "Trainer",
    "default_workers",
    "epoch_order",
    "format_duration",
    "launched_processes",
    "make_scheduler",
    "say_time_left",
    "use_cpu",
    "warmup_length",
]
