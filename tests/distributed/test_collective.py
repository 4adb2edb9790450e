"""Two gloo processes on one machine: the distributed update equals the single-process one."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ppox.core.objective import ObjectiveConfig
from ppox.core.update import PolicyOutput, ppo_update
from ppox.distributed import Collective, parameter_hash


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_data(n: int = 64):
    g = torch.Generator().manual_seed(0)
    obs = torch.randn(n, 3, generator=g)
    actions = torch.randint(0, 4, (n,), generator=g)
    adv = torch.randn(n, generator=g) * 3 + 1  # not centred: normalisation matters
    returns = torch.randn(n, generator=g)
    return obs, actions, adv, returns


def build(seed: int = 0):
    torch.manual_seed(seed)
    policy, critic = torch.nn.Linear(3, 4), torch.nn.Linear(3, 1)
    return policy, critic


def run_update(policy, critic, obs, actions, adv, returns, collective=None, poison=False, fsdp=False):
    # collected before any forward: after a no-grad forward an FSDP root exposes its unsharded tensors
    params = list(policy.parameters()) + list(critic.parameters())
    with torch.no_grad():
        logprobs = torch.log_softmax(policy(obs), -1).gather(-1, actions[:, None]).squeeze(-1)
        values = critic(obs).squeeze(-1)
    batch = {"obs": obs, "actions": actions, "logprobs": logprobs, "values": values,
             "advantages": adv, "returns": returns}

    def forward(mb):
        logp_all = torch.log_softmax(policy(mb["obs"]), -1)
        logp = logp_all.gather(-1, mb["actions"][:, None]).squeeze(-1)
        if poison:
            logp = logp * float("nan")
        return PolicyOutput(logp, -(logp_all.exp() * logp_all).sum(-1), critic(mb["obs"]).squeeze(-1))

    opt = torch.optim.Adam(params, lr=1e-2, eps=1e-5)
    # one minibatch per epoch: the same samples on 1 or 2 processes, whatever the shuffle
    return ppo_update(batch, forward, opt, params, ObjectiveConfig(), update_epochs=3, num_minibatches=1,
                      max_grad_norm=0.5, collective=collective, gradients_synced=fsdp)


def worker(rank: int, world: int, port: int, out: dict, poison_rank: int | None, fsdp: bool) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    obs, actions, adv, returns = make_data()
    half = obs.shape[0] // world
    sl = slice(rank * half, (rank + 1) * half)
    policy, critic = build()
    if fsdp:  # each rank holds half of every parameter; FSDP reduce-scatters the gradients itself
        from ppox.llm.fsdp import full_state_dict, shard
        shard(policy, set()), shard(critic, set())
    res = run_update(policy, critic, obs[sl], actions[sl], adv[sl], returns[sl],
                     Collective(rank=rank, world_size=world), poison=(rank == poison_rank), fsdp=fsdp)
    hashes = [None] * world
    if fsdp:  # different shards by design: compare the gathered full weights (rank 0 has them)
        state = {k: v.clone() for k, v in full_state_dict(policy).items()}
    else:
        dist.all_gather_object(hashes, parameter_hash(torch.nn.ModuleList([policy, critic])))
        state = {k: v.clone() for k, v in policy.state_dict().items()}
    out[rank] = {"hashes": hashes, "state": state, "skipped": res.skipped_updates}
    dist.destroy_process_group()


def spawn(world: int, poison_rank: int | None = None, fsdp: bool = False) -> dict:
    manager = mp.Manager()
    out = manager.dict()
    mp.spawn(worker, args=(world, free_port(), out, poison_rank, fsdp), nprocs=world, join=True)
    return dict(out)


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("fsdp", [False, True], ids=["allreduce", "fsdp"])
def test_two_processes_equal_one_process_on_the_same_data(fsdp):
    out = spawn(2, fsdp=fsdp)
    assert out[0]["hashes"][0] == out[0]["hashes"][1]  # bit-identical weights on both ranks (FSDP: n/a)
    policy, critic = build()
    run_update(policy, critic, *make_data())
    for k, v in policy.state_dict().items():
        assert torch.allclose(out[0]["state"][k], v, atol=1e-5), k


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("fsdp", [False, True], ids=["allreduce", "fsdp"])
def test_a_nonfinite_loss_on_one_rank_skips_the_step_on_all(fsdp):
    out = spawn(2, poison_rank=1, fsdp=fsdp)  # FSDP: rank 1 still runs backward, so no rank hangs
    assert out[0]["skipped"] == out[1]["skipped"] == 3
    assert out[0]["hashes"][0] == out[0]["hashes"][1]
    policy, _ = build()
    for k, v in policy.state_dict().items():
        assert torch.equal(out[0]["state"][k], v)  # untouched
