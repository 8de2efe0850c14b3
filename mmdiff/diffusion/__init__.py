"""Masking schedules, the forward process and the masked-diffusion losses."""

from mmdiff.diffusion.likelihood import elbo_log_likelihood, stratified_masks
from mmdiff.diffusion.objective import LossOutput, diffusion_loss, forward_process
from mmdiff.diffusion.schedules import CosineSchedule, LinearSchedule, LogLinearSchedule, Schedule, get_schedule

__all__ = [
    "LossOutput",
    "diffusion_loss",
    "forward_process",
    "Schedule",
    "LinearSchedule",
    "LogLinearSchedule",
    "CosineSchedule",
    "get_schedule",
    "elbo_log_likelihood",
    "stratified_masks",
]
