"""Batched classic-control environments (gymnasium vector API): torch tensors or numpy arrays."""

from ppox.envs.numpy_envs import NUMPY_ENV_IDS, make_numpy_vec_env
from ppox.envs.torch_envs import TORCH_ENV_IDS, make_torch_vec_env

__all__ = ["NUMPY_ENV_IDS", "TORCH_ENV_IDS", "make_numpy_vec_env", "make_torch_vec_env"]
