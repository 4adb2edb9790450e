"""Batched, tensor-stepped environments (gymnasium vector API on torch)."""

from ppox.envs.torch_envs import TORCH_ENV_IDS, make_torch_vec_env

__all__ = ["TORCH_ENV_IDS", "make_torch_vec_env"]
