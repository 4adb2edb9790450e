"""ppox vs sb3-contrib (RecurrentPPO, MaskablePPO) on identical settings, run side by side.

Two comparisons, each as bench_vs_sb3.py's `compare`: every training run is a fresh subprocess, ppox and
sb3-contrib alternate (ppox first for odd seeds, sb3-contrib first for even ones) so both see the same
machine load, and results (Markdown + JSON, the producing command at the top) go to benchmarks/results/.

* recurrent: sb3-contrib RecurrentPPO vs ppox `memory="lstm"` on CartPole-v1 with its velocities hidden
  (ppox: `mask_velocity=True`; sb3-contrib: `HideVelocity` below, which zeroes the entries ppox zeroes,
  read from ppox.rl.envs.VELOCITY_INDICES: rl-zoo's MaskVelocityWrapper, which is not installed here).
* maskable: sb3-contrib MaskablePPO vs ppox (masks from the env's `action_masks()`) on sb3-contrib's
  InvalidActionEnvDiscrete (one-hot observation of a random target; reward 1 for naming it; most actions
  invalid at every step).

    python benchmarks/bench_vs_sb3_contrib.py --seeds 3 --recurrent-steps 102400 --maskable-steps 51200

sb3-contrib is the optional extra `pip install -e .[bench]`; this script installs nothing. The settings of
both libraries are the dicts RECURRENT and MASKABLE below (written into the result file). The networks are
the same on both sides: per actor and critic an MLP encoder, then (recurrent) an LSTM, then a linear head;
for sb3-contrib that is `share_features_extractor=False` with the `MLPFeatures` extractor below and an empty
`net_arch` (its default would put the MLP after the LSTM). Both evaluate the deterministic policy over the
same number of episodes on the same (masked) env, the recurrent state carried through each episode.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

from bench_vs_sb3 import fmt, peak_rss_mib, stats, welch_p, write

# identical for both libraries (ppox PPOConfig names; the sb3-contrib equivalents in run_sb3)
RECURRENT = {
    "env_id": "CartPole-v1", "env_backend": "auto", "mask_velocity": True, "num_envs": 32, "num_steps": 32,
    "num_minibatches": 1, "update_epochs": 10, "learning_rate": 1e-3, "anneal_lr": True, "gamma": 0.98,
    "gae_lambda": 0.8, "clip_coef": 0.2, "clip_vloss": True, "ent_coef": 0.0, "vf_coef": 0.5, "max_grad_norm": 0.5,
    "norm_adv": True, "hidden_sizes": (64,), "activation": "tanh", "shared_trunk": False, "memory": "lstm",
    "memory_size": 64,
}
MASKABLE = {
    "num_envs": 4, "num_steps": 128, "num_minibatches": 4, "update_epochs": 4, "learning_rate": 2.5e-4,
    "anneal_lr": True, "gamma": 0.99, "gae_lambda": 0.95, "clip_coef": 0.2, "clip_vloss": True, "ent_coef": 0.01,
    "vf_coef": 0.5, "max_grad_norm": 0.5, "norm_adv": True, "hidden_sizes": (64, 64), "activation": "tanh",
    "shared_trunk": False,
}
TASKS = ("recurrent", "maskable")
LIB = {"recurrent": "RecurrentPPO", "maskable": "MaskablePPO"}


MASK_ENV = "ppox-bench/InvalidActionEnvDiscrete-v0"


def register_invalid_action_env(dim: int, invalid: int) -> str:
    """Register sb3-contrib's InvalidActionEnvDiscrete (100-step episodes) as MASK_ENV for both libraries.

    ppox gets it by id, not env_fn: env_fn runs gymnasium's env checker, which this env fails (its states come
    from numpy's global generator and an unseeded action space, so a seed does not fix its observations)."""
    import gymnasium as gym

    if MASK_ENV not in gym.registry:
        gym.register(MASK_ENV, entry_point="sb3_contrib.common.envs:InvalidActionEnvDiscrete",
                     kwargs={"dim": dim, "n_invalid_actions": invalid, "ep_length": 100})
    return MASK_ENV


# ---------------------------------------------------------------------------- one run (child process)
def run_ppox(a: argparse.Namespace) -> dict:
    import numpy as np
    import torch

    from ppox.rl.config import PPOConfig
    from ppox.rl.ppo import PPO

    np.random.seed(a.seed)  # InvalidActionEnvDiscrete draws its invalid actions from numpy's global generator
    settings = dict(RECURRENT) if a.task == "recurrent" else {
        **MASKABLE, "env_id": register_invalid_action_env(a.mask_dim, a.mask_invalid)}
    compile_setting = {"auto": "auto", "true": True, "false": False}[a.compile]
    with tempfile.TemporaryDirectory() as tmp:
        cfg = PPOConfig(**settings, seed=a.seed, total_timesteps=a.steps, compile=compile_setting,
                        torch_threads=a.threads,
                        progress=False, tensorboard=False, eval_episodes=0, run_dir=tmp, overwrite=True)
        model = PPO(cfg)
        start = time.perf_counter()
        model.learn()
        wall = time.perf_counter() - start
        ev = model.evaluate(a.eval_episodes)
        compile_s = model.compile_timer.seconds
        compiled = bool(model.compile_decision.enabled and model._compiled_update is not None)
    return {"lib": "ppox", "wall_s": wall, "steps": model.global_step, "sps": model.global_step / wall,
            "compile_s": compile_s, "eval_mean": ev["mean"], "eval_std": ev["std"], "peak_rss_mib": peak_rss_mib(),
            "torch_threads": torch.get_num_threads(), "compile": compiled,
            "rollout": type(model.collector).__name__, "env_backend": model.envs.backend}


def run_sb3(a: argparse.Namespace) -> dict:
    import gymnasium as gym
    import numpy as np
    import torch
    from sb3_contrib import MaskablePPO, RecurrentPPO
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
    from stable_baselines3.common.vec_env import DummyVecEnv

    from ppox.rl.envs import velocity_indices

    class MLPFeatures(BaseFeaturesExtractor):
        """ppox's MLP encoder: Linear + tanh per width (orthogonal gain sqrt(2) under sb3's ortho_init)."""

        def __init__(self, observation_space: gym.Space, hidden_sizes: tuple[int, ...]) -> None:
            super().__init__(observation_space, hidden_sizes[-1])
            layers, width = [torch.nn.Flatten()], gym.spaces.flatdim(observation_space)
            for h in hidden_sizes:
                layers += [torch.nn.Linear(width, h), torch.nn.Tanh()]
                width = h
            self.net = torch.nn.Sequential(*layers)

        def forward(self, obs: torch.Tensor) -> torch.Tensor:
            return self.net(obs)

    class HideVelocity(gym.ObservationWrapper):
        """Zero the entries ppox's mask_velocity zeroes (rl-zoo's MaskVelocityWrapper)."""

        def __init__(self, env: gym.Env) -> None:
            super().__init__(env)
            self.hidden = velocity_indices(env.spec.id)

        def observation(self, obs: np.ndarray) -> np.ndarray:
            obs = obs.copy()
            obs[self.hidden] = 0.0
            return obs

    torch.set_num_threads(a.threads)
    recurrent = a.task == "recurrent"
    s = RECURRENT if recurrent else MASKABLE
    np.random.seed(a.seed)
    if recurrent:
        def make_env() -> gym.Env:
            return HideVelocity(gym.make(s["env_id"]))
    else:
        def make_env() -> gym.Env:
            return gym.make(register_invalid_action_env(a.mask_dim, a.mask_invalid))
    venv = make_vec_env(make_env, n_envs=s["num_envs"], seed=a.seed, vec_env_cls=DummyVecEnv)
    lr = s["learning_rate"]
    policy_kwargs = {"net_arch": [], "activation_fn": torch.nn.Tanh, "ortho_init": True,
                     "features_extractor_class": MLPFeatures, "share_features_extractor": False,
                     "features_extractor_kwargs": {"hidden_sizes": s["hidden_sizes"]}}
    if recurrent:
        policy_kwargs.update(lstm_hidden_size=s["memory_size"], shared_lstm=False, enable_critic_lstm=True)
    batch = s["num_envs"] * s["num_steps"]
    model = (RecurrentPPO if recurrent else MaskablePPO)(
        "MlpLstmPolicy" if recurrent else "MlpPolicy", venv, n_steps=s["num_steps"],
        batch_size=batch // s["num_minibatches"], n_epochs=s["update_epochs"], learning_rate=lambda frac: frac * lr,
        gamma=s["gamma"], gae_lambda=s["gae_lambda"], clip_range=s["clip_coef"], clip_range_vf=s["clip_coef"],
        ent_coef=s["ent_coef"], vf_coef=s["vf_coef"], max_grad_norm=s["max_grad_norm"], normalize_advantage=True,
        seed=a.seed, device="cpu", verbose=0, policy_kwargs=policy_kwargs,
    )
    start = time.perf_counter()
    model.learn(a.steps)
    wall = time.perf_counter() - start
    # evaluation: ppox's protocol (fresh envs, deterministic, the recurrent state carried through each episode)
    returns: list[float] = []
    env = make_env()
    for ep in range(a.eval_episodes):
        obs, _ = env.reset(seed=a.seed + 100_000 + ep)
        done, total, state, first = False, 0.0, None, np.ones(1, dtype=bool)
        while not done:
            if recurrent:
                action, state = model.predict(obs, state=state, episode_start=first, deterministic=True)
                first = np.zeros(1, dtype=bool)
            else:
                action, _ = model.predict(obs, action_masks=np.asarray(env.get_wrapper_attr("action_masks")()),
                                          deterministic=True)
            obs, r, term, trunc, _ = env.step(int(action))
            total += float(r)
            done = term or trunc
        returns.append(total)
    steps = model.num_timesteps
    return {"lib": "sb3-contrib", "wall_s": wall, "steps": steps, "sps": steps / wall, "compile_s": 0.0,
            "eval_mean": float(np.mean(returns)), "eval_std": float(np.std(returns)), "peak_rss_mib": peak_rss_mib(),
            "torch_threads": torch.get_num_threads(), "compile": False, "rollout": type(model).__name__,
            "env_backend": "gymnasium"}


def child(**kw) -> dict:
    args = [sys.executable, __file__, "--_run"]
    for k, v in kw.items():
        if isinstance(v, bool):
            args.append(f"--{k.replace('_', '-')}" if v else f"--no-{k.replace('_', '-')}")
        else:
            args += [f"--{k.replace('_', '-')}", str(v)]
    out = subprocess.run(args, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{kw['lib']} {kw['task']} run failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------- report
def compiled_cell(run: dict) -> str:
    """Whether a run's update was compiled, with the seconds it took (a warm cache loads it in milliseconds)."""
    return f"yes ({run['compile_s']:.1f})" if run["compile"] else "no"


def compare(a: argparse.Namespace, command: str) -> None:
    runs: list[dict] = []
    steps = {"recurrent": a.recurrent_steps, "maskable": a.maskable_steps}
    for task in a.tasks:
        for seed in range(1, a.seeds + 1):
            for lib in (["ppox", "sb3-contrib"] if seed % 2 else ["sb3-contrib", "ppox"]):
                r = child(lib=lib, task=task, seed=seed, steps=steps[task], threads=a.threads, compile=a.compile,
                          eval_episodes=a.eval_episodes, mask_dim=a.mask_dim, mask_invalid=a.mask_invalid)
                r.update(task=task, seed=seed)
                runs.append(r)
                print(f"{task} seed {seed} {lib}: {r['sps']:,.0f} sps, {r['wall_s']:.1f} s, eval {fmt(r['eval_mean'])}",
                      file=sys.stderr)
    envs = {"recurrent": "CartPole-v1, velocities hidden",
            "maskable": f"InvalidActionEnvDiscrete(dim={a.mask_dim}, n_invalid_actions={a.mask_invalid})"}
    md = ["ppox and sb3-contrib 2.9 alternate run by run (same load), 1 torch thread each, CPU. sps = env steps / "
          f"wall seconds of `learn` (ppox --compile {a.compile}: compile time included, the per-run table says which "
          "runs compiled and for how long). Return = mean "
          f"deterministic eval return over {a.eval_episodes} episodes per seed, then mean ± std over seeds; "
          "p = Welch t-test on those per-seed returns.", "",
          "| comparison | env | lib | seeds | steps | sps median (min-max) | paired ratio ppox/contrib (median) "
          "| return mean ± std | p | peak RSS MiB |",
          "|---|---|---|---:|---:|---|---:|---|---:|---:|"]
    summary = {}
    for task in a.tasks:
        per = {lib: [r for r in runs if r["task"] == task and r["lib"] == lib] for lib in ("ppox", "sb3-contrib")}
        sps = {lib: stats([r["sps"] for r in rs]) for lib, rs in per.items()}
        by = {(r["seed"], r["lib"]): r["sps"] for r in runs if r["task"] == task}
        pairs = [by[(s, "ppox")] / by[(s, "sb3-contrib")] for s in range(1, a.seeds + 1)]
        rets = {lib: [r["eval_mean"] for r in rs] for lib, rs in per.items()}
        p = welch_p(rets["ppox"], rets["sb3-contrib"])
        summary[task] = {"sps": sps, "paired_ratios": pairs, "paired_ratio_median": statistics.median(pairs),
                         "returns": rets, "p_value": p}
        for lib, rs in per.items():
            name = f"ppox vs {LIB[task]}"
            ret = stats(rets[lib])
            md.append(f"| {name} | {envs[task]} | {lib} | {len(rs)} | {steps[task]:,} "
                      f"| {sps[lib]['median']:,.0f} ({sps[lib]['min']:,.0f}-{sps[lib]['max']:,.0f}) "
                      f"| {statistics.median(pairs):.2f}x | {fmt(ret['mean'])} ± {fmt(ret['std'])} | {fmt(p, 2)} "
                      f"| {max(r['peak_rss_mib'] for r in rs):,.0f} |")
    md += ["", "Paired ratio per seed (ppox sps / sb3-contrib sps, the two runs back to back):", ""]
    md += [f"* {task}: {', '.join(f'{x:.2f}x' for x in summary[task]['paired_ratios'])}" for task in a.tasks]
    md += ["", "Per run:", "", "| comparison | seed | lib | sps | wall s | compiled (s) | eval return | rollout |",
           "|---|---:|---|---:|---:|---|---:|---|"]
    md += [f"| {r['task']} | {r['seed']} | {r['lib']} | {r['sps']:,.0f} | {r['wall_s']:.1f} "
           f"| {compiled_cell(r)} | {fmt(r['eval_mean'])} "
           f"| {r['rollout']} |" for r in runs]
    md += ["", "Settings, identical for both libraries (ppox `PPOConfig` names; sb3-contrib: n_steps, "
           "batch_size = num_envs * num_steps / num_minibatches, n_epochs, learning_rate annealed linearly to 0, "
           "clip_range = clip_range_vf = clip_coef, normalize_advantage, orthogonal init; networks: per actor and "
           "critic an MLP encoder (`hidden_sizes`, tanh), then the LSTM (`memory_size`, separate actor/critic "
           "LSTMs: sb3-contrib's shared_lstm=False, enable_critic_lstm=True), then a linear head):", ""]
    for task in a.tasks:
        md.append(f"* {task}: `{json.dumps(RECURRENT if task == 'recurrent' else MASKABLE)}`")
    md += ["", "Known differences: sb3-contrib initialises its LSTM with torch's default (uniform), ppox "
           "orthogonally with zero biases (CleanRL's); sb3-contrib cuts its recurrent minibatches at episode "
           "starts and pads them, ppox's minibatches are whole env sequences, which its compiled update replays "
           "step by step through the LSTM cell (resets where episodes start; its eager update cuts them at "
           "episode starts and pads them for one run of torch's LSTM kernel; with num_minibatches 1 both update "
           "on the whole rollout); ppox rolls out in numpy (NumpyRecurrentPolicy: the same network, numpy's "
           "random stream), sb3-contrib in torch; ppox steps CartPole with its numpy twin "
           "(env_backend auto, as its presets do: gymnasium's dynamics step for step), sb3-contrib gymnasium's env "
           "in a DummyVecEnv; evaluation episodes use different env seeds."]
    name = a.name or f"contrib_recurrent{a.recurrent_steps}_maskable{a.maskable_steps}"
    write(name, command, md, {"settings": {"recurrent": RECURRENT, "maskable": MASKABLE,
                                           "mask_dim": a.mask_dim, "mask_invalid": a.mask_invalid},
                              "runs": runs, "summary": summary})


# ---------------------------------------------------------------------------- CLI
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--recurrent-steps", type=int, default=102_400, help="a multiple of 32 * 32 (whole iterations)")
    p.add_argument("--maskable-steps", type=int, default=51_200, help="a multiple of 4 * 128")
    p.add_argument("--eval-episodes", type=int, default=20)
    p.add_argument("--mask-dim", type=int, default=20, help="InvalidActionEnvDiscrete's actions (= observations)")
    p.add_argument("--mask-invalid", type=int, default=15, help="invalid actions at each step")
    p.add_argument("--threads", type=int, default=1, help="torch threads (both libraries)")
    p.add_argument("--compile", choices=("auto", "true", "false"), default="auto",
                   help="ppox's compile setting: true compiles the minibatch update (its time counts in the wall "
                        "seconds; a warm cache loads it in milliseconds), auto is what a user gets (eager below "
                        "ppox.rl.fast.AUTO_COMPILE_MIN_UPDATES minibatch updates); a recurrent update runs eager "
                        "regardless")
    p.add_argument("--name", default=None, help="results file name (default from the settings)")
    # one run in a child process; prints JSON
    p.add_argument("--_run", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--lib", default=None, help=argparse.SUPPRESS)
    p.add_argument("--task", default=None, help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--steps", type=int, default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a._run:
        print(json.dumps((run_ppox if a.lib == "ppox" else run_sb3)(a)))
    else:
        compare(a, "python benchmarks/bench_vs_sb3_contrib.py " + shlex.join(sys.argv[1:]))


if __name__ == "__main__":
    main()
