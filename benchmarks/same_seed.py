"""Same seed, same numbers: record the metrics and final weights of a fixed set of short runs, and
compare two such records (before and after a change that should not alter the maths).

    python benchmarks/same_seed.py record benchmarks/results/same_seed_<label>.json
    python benchmarks/same_seed.py compare benchmarks/results/same_seed_A.json benchmarks/results/same_seed_B.json

Every run is seeded; the timing keys (sps, wall_time, LLM tokens/s) are dropped, everything else in
metrics.jsonl plus a SHA-256 of the final parameters must be equal.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path

import torch

TIMING = {"sps", "wall_time"}  # and every key ending in _seconds or _per_s


def is_timing(key: str) -> bool:
    return key in TIMING or key.endswith(("_seconds", "_per_s"))

# name -> (env id, overrides): the default paths a user meets, each a few iterations long
RL_RUNS: dict[str, tuple[str, dict]] = {
    "cartpole_preset_numpy": ("CartPole-v1", {"total_timesteps": 8192}),
    "cartpole_gymnasium_torch_rollout": ("CartPole-v1", {"total_timesteps": 4096, "env_backend": "gymnasium"}),
    "cartpole_cleanrl_compiled": ("CartPole-v1", {"preset": "cleanrl", "total_timesteps": 4096, "compile": True}),
    "acrobot_kl_penalty": ("Acrobot-v1", {"total_timesteps": 16384, "kl_penalty": "loss", "clip_coef_high": 0.28}),
    "pendulum_preset_norms": ("Pendulum-v1", {"total_timesteps": 16384}),
    "cartpole_torch_envs": ("CartPole-v1", {"total_timesteps": 4096, "env_backend": "torch", "num_envs": 16,
                                            "num_steps": 32}),
    # memory: the numpy recurrent rollout and the eager sequence update (a run this short stays eager)
    "cartpole_lstm_no_velocity": ("CartPole-v1", {"preset": "cartpole-no-velocity", "total_timesteps": 8192}),
    # one gymnasium env (MuJoCo), CleanRL's continuous settings: the normalisers' one-row path, action clipping
    "hopper_cleanrl_continuous": ("Hopper-v5", {"preset": "cleanrl-continuous", "total_timesteps": 6144}),
}


def param_hash(modules: list[torch.nn.Module]) -> str:
    h = hashlib.sha256()
    for m in modules:
        for name, t in sorted(m.state_dict().items()):
            h.update(name.encode())
            h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def read_metrics(path: Path) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [{k: v for k, v in r.items() if not is_timing(k)} for r in rows]


def record_rl(name: str, env_id: str, overrides: dict, root: Path) -> dict:
    from ppox import PPO
    from ppox.rl.config import preset_config

    preset = overrides.pop("preset", None)
    config = preset_config(env_id, preset, **overrides, seed=7, eval_episodes=0, tensorboard=False,
                           progress=False, live_doctor=False, run_dir=str(root / name))
    model = PPO(config)
    model.learn()
    model.close()
    return {"metrics": read_metrics(root / name / "metrics.jsonl"), "weights": param_hash([model.agent])}


def record_llm(root: Path) -> dict:
    from ppox.llm.config import LLMPPOConfig
    from ppox.llm.demo import tiny_gpt2
    from ppox.llm.tasks import char_tokenizer
    from ppox.llm.trainer import LLMPPOTrainer

    tokenizer = char_tokenizer()
    torch.manual_seed(0)
    model = tiny_gpt2(tokenizer, n_layer=2, n_embd=32, n_head=2, n_positions=32)
    prompts = ["1+2=", "12+345=", "7-8=", "100-99=", "5+5=", "321+1=", "9-10=", "44+4="]

    def reward(prompts, completions):
        return [c.count("7") / max(len(c), 1) for c in completions]

    cfg = LLMPPOConfig(batch_size=8, num_minibatches=2, max_new_tokens=6, learning_rate=1e-2, total_steps=3,
                       tensorboard=False, seed=3)
    trainer = LLMPPOTrainer(cfg, model, tokenizer, reward, prompts)
    run = getattr(trainer, "learn", None) or trainer.train
    run(root / "llm")
    return {"metrics": read_metrics(root / "llm" / "metrics.jsonl"),
            "weights": param_hash([trainer.policy, trainer.critic])}


def record(out: Path) -> None:
    torch.set_num_threads(1)
    result = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (env_id, overrides) in RL_RUNS.items():
            print(f"{name} ...", file=sys.stderr)
            result[name] = record_rl(name, env_id, dict(overrides), Path(tmp))
        print("llm ...", file=sys.stderr)
        result["llm_tiny"] = record_llm(Path(tmp))
    result["command"] = " ".join(["python", *sys.argv])
    out.write_text(json.dumps(result, indent=1, sort_keys=True))
    print(f"wrote {out}")


def compare(a: Path, b: Path) -> int:
    ra, rb = json.loads(a.read_text()), json.loads(b.read_text())
    bad = 0
    for name in sorted(set(ra) | set(rb)):
        if name == "command":
            continue
        if name not in ra or name not in rb:
            print(f"{name}: only in {'A' if name in ra else 'B'}")
            bad += 1
            continue
        same_w = ra[name]["weights"] == rb[name]["weights"]
        diffs = [
            (i, k, x.get(k), y.get(k))
            for i, (x, y) in enumerate(zip(ra[name]["metrics"], rb[name]["metrics"], strict=False))
            for k in sorted(set(x) | set(y)) if x.get(k) != y.get(k)
        ]
        same_len = len(ra[name]["metrics"]) == len(rb[name]["metrics"])
        ok = same_w and not diffs and same_len
        bad += not ok
        print(f"{name}: {'identical' if ok else 'DIFFERENT'}"
              + ("" if same_w else "; weights differ") + ("" if same_len else "; iteration counts differ")
              + (f"; first metric difference {diffs[0]}" if diffs else ""))
    return 1 if bad else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("record").add_argument("out", type=Path)
    cmp = sub.add_parser("compare")
    cmp.add_argument("a", type=Path)
    cmp.add_argument("b", type=Path)
    args = parser.parse_args()
    if args.cmd == "record":
        record(args.out)
        return 0
    return compare(args.a, args.b)


if __name__ == "__main__":
    raise SystemExit(main())
