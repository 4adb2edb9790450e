"""ppox.distributed.resolve_device / init_device: the one device set-up both trainers use."""

import pytest
import torch

from ppox.distributed import init_device, resolve_device
from ppox.errors import ConfigError


def test_resolve_device_names_and_refusals():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ConfigError, match="unknown device 'toaster'"):
        resolve_device("toaster")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA GPU"):
            resolve_device("cuda")


def test_init_device_without_torchrun_is_a_single_process(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    device, collective = init_device("cpu")
    assert device == torch.device("cpu") and not collective.enabled and collective.is_main
