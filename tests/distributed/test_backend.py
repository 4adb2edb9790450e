"""The process-group backend follows the device: gloo for CPU training, NCCL (one GPU per local rank) for CUDA.

No GPUs here, so the process-group calls are replaced by recorders; the 2-process gloo runs in
test_torchrun.py exercise the real thing on CPU.
"""

import pytest

from ppox import distributed


@pytest.fixture
def torchrun_env(monkeypatch):
    for key, value in {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": "29999"}.items():
        monkeypatch.setenv(key, value)
    calls: dict = {}
    monkeypatch.setattr(distributed, "_current", None)
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(distributed, "_store", lambda rank, world_size: "store")
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda **kw: calls.update(kw))
    monkeypatch.setattr(distributed.torch.cuda, "set_device", lambda index: calls.update(cuda_device=index))
    yield calls
    monkeypatch.setattr(distributed, "_current", None)


@pytest.mark.parametrize(("device_type", "backend"), [("cpu", "gloo"), ("cuda", "nccl")])
def test_backend_is_chosen_from_the_device(torchrun_env, device_type, backend):
    collective = distributed.init_from_env(device_type)
    assert torchrun_env["backend"] == backend
    assert (torchrun_env["rank"], torchrun_env["world_size"]) == (1, 2)
    assert torchrun_env.get("cuda_device") == (1 if backend == "nccl" else None)  # local rank's GPU
    assert collective.enabled and collective.rank == 1 and collective.local_rank == 1


def test_without_torchrun_there_is_no_process_group(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(distributed, "_current", None)
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda **kw: pytest.fail("no group expected"))
    assert not distributed.init_from_env("cuda").enabled
    monkeypatch.setattr(distributed, "_current", None)
