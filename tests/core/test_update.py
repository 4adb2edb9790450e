"""The shared update loop: ratio 1 at the start, early stopping, skipping non-finite minibatches."""

import torch

from ppox.core.objective import ObjectiveConfig
from ppox.core.update import PolicyOutput, ppo_loss, ppo_update


def make_problem(n: int = 64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    policy = torch.nn.Linear(3, 4)
    critic = torch.nn.Linear(3, 1)
    obs = torch.randn(n, 3, generator=g)
    actions = torch.randint(0, 4, (n,), generator=g)
    with torch.no_grad():
        logprobs = torch.log_softmax(policy(obs), -1).gather(-1, actions[:, None]).squeeze(-1)
        values = critic(obs).squeeze(-1)
    batch = {"obs": obs, "actions": actions, "logprobs": logprobs, "values": values,
             "advantages": torch.randn(n, generator=g), "returns": torch.randn(n, generator=g)}

    def forward(mb):
        logp_all = torch.log_softmax(policy(mb["obs"]), -1)
        logp = logp_all.gather(-1, mb["actions"][:, None]).squeeze(-1)
        ent = -(logp_all.exp() * logp_all).sum(-1)
        return PolicyOutput(logp, ent, critic(mb["obs"]).squeeze(-1))

    params = list(policy.parameters()) + list(critic.parameters())
    return batch, forward, params


def test_first_minibatch_has_ratio_one_and_zero_kl():
    batch, forward, _ = make_problem()
    _, stats = ppo_loss(forward(batch), batch, ObjectiveConfig())
    assert float(stats["approx_kl"]) == 0.0 and float(stats["clipfrac"]) == 0.0


def test_update_changes_policy_and_reports_stats():
    batch, forward, params = make_problem()
    before = [p.detach().clone() for p in params]
    opt = torch.optim.Adam(params, lr=1e-2, eps=1e-5)
    res = ppo_update(batch, forward, opt, params, ObjectiveConfig(), update_epochs=4, num_minibatches=4,
                     max_grad_norm=0.5, generator=torch.Generator().manual_seed(0))
    assert res.epochs_run == 4 and res.optimizer_steps == 16 and res.skipped_updates == 0
    assert any(not torch.equal(a, b) for a, b in zip(before, params, strict=True))
    assert res.stats["approx_kl"] > 0.0
    assert set(res.stats) >= {"policy_loss", "value_loss", "entropy", "approx_kl", "old_approx_kl", "clipfrac"}


def test_target_kl_stops_epochs_early():
    batch, forward, params = make_problem()
    opt = torch.optim.Adam(params, lr=0.1)
    res = ppo_update(batch, forward, opt, params, ObjectiveConfig(), update_epochs=10, num_minibatches=2,
                     max_grad_norm=None, target_kl=1e-6)
    assert res.epochs_run == 1


def test_kl_penalty_term_is_added():
    batch, forward, params = make_problem()
    with torch.no_grad():
        params[0].add_(torch.randn(params[0].shape, generator=torch.Generator().manual_seed(1)))
    s_plain = ObjectiveConfig()
    s_pen = ObjectiveConfig(kl_penalty="loss")
    loss_plain, stats = ppo_loss(forward(batch), batch, s_plain, kl_coef=2.0)
    loss_pen, _ = ppo_loss(forward(batch), batch, s_pen, kl_coef=2.0)
    assert abs(float(loss_pen - loss_plain) - float(2.0 * stats["kl_penalty"])) < 1e-6
    assert float(stats["kl_penalty"]) > 0


def test_nonfinite_minibatch_is_skipped_and_weights_untouched():
    batch, forward, params = make_problem()
    calls = []

    def bad_forward(mb):
        out = forward(mb)
        return PolicyOutput(out.logprobs * float("nan"), out.entropy, out.values)

    before = [p.detach().clone() for p in params]
    opt = torch.optim.Adam(params, lr=1e-2)
    res = ppo_update(batch, bad_forward, opt, params, ObjectiveConfig(), update_epochs=2, num_minibatches=2,
                     max_grad_norm=0.5, on_nonfinite=lambda: calls.append(1))
    assert res.skipped_updates == 4 and res.optimizer_steps == 0 and len(calls) == 4
    assert all(torch.equal(a, b) for a, b in zip(before, params, strict=True))


def test_grad_accumulation_matches_one_big_step():
    batch, forward, params = make_problem()
    start = [p.detach().clone() for p in params]
    results = []
    for accum in (1, 4):
        with torch.no_grad():
            for p, s in zip(params, start, strict=True):
                p.copy_(s)
        opt = torch.optim.SGD(params, lr=0.1)
        ppo_update(batch, forward, opt, params, ObjectiveConfig(norm_adv=False), update_epochs=1,
                   num_minibatches=1, max_grad_norm=None, grad_accum_steps=accum,
                   generator=torch.Generator().manual_seed(0))
        results.append([p.detach().clone() for p in params])
    for a, b in zip(*results, strict=True):
        assert torch.allclose(a, b, atol=1e-6)
