"""Training: one trainer (AdamW, warm-up + cosine/constant LR, clipping, accumulation, bf16, EMA, hooks,
metrics), crash-safe checkpoints with exact resume, ``load`` of saved models, and data-parallel training
under torchrun (DDP, or FSDP2 for models too big for one device) with sharded sample generation.

Heavy optional pieces (tqdm bars, TensorBoard, FSDP) are imported only when used.
"""
from .checkpoint import latest_checkpoint, load, read_checkpoint, save_model
from .data import BatchPlan, fold_seed
from .distributed import (barrier, gather_samples, get_rank, get_world_size, init_distributed, is_main, shard_indices,
                          sharded_sample)
from .ema import EMA, ema_beta
from .schedule import SCHEDULES, lr_at
from .step import gradient_step
from .trainer import PRECISIONS, TrainConfig, Trainer

__all__ = ["Trainer", "TrainConfig", "EMA", "ema_beta", "lr_at", "gradient_step", "SCHEDULES", "PRECISIONS", "load", "save_model",
           "latest_checkpoint", "read_checkpoint", "BatchPlan", "fold_seed", "init_distributed", "get_rank",
           "get_world_size", "is_main", "barrier", "shard_indices", "sharded_sample", "gather_samples"]
