"""Batched classic-control environments (gymnasium vector API): torch tensors or numpy arrays."""

from ppox.envs.numpy_envs import NUMPY_ENV_IDS, make_numpy_vec_env
from ppox.envs.randomization import RANDOMIZED_ENV_IDS, Randomization
from ppox.envs.registered import register
from ppox.envs.torch_envs import TORCH_ENV_IDS, make_torch_vec_env

register()  # the randomised ids (ppox/CartPoleRandomized-v0, ...) for gym.make

__all__ = ["NUMPY_ENV_IDS", "RANDOMIZED_ENV_IDS", "TORCH_ENV_IDS", "Randomization", "make_numpy_vec_env",
           "make_torch_vec_env"]
