"""`ppox distill`: a deployable student from a privileged PPO teacher (ppox.rl.distill).

    ppox distill TEACHER_RUN --run-dir DIR [--FIELD VALUE ...]   distil (flags: DistillConfig's fields)
    ppox distill --resume DIR [--total-timesteps N] [--no-progress]   continue from the latest checkpoint
    ppox distill demo [--run-dir DIR] [...]                        teacher, student and blind baseline end to end
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass

from ppox.cli.common import parse_args


@dataclass
class DemoArgs:
    """Train a privileged teacher on ppox/CartPoleRandomized-v0, distil a student, train a blind PPO baseline
    (same budget), and evaluate all three on the same held-out randomised parameters (summary.json)."""

    run_dir: str = "runs/distill_demo"
    """Where the three runs and summary.json go (must not hold a demo already)."""
    teacher_steps: int = 100_000
    """Env steps of the teacher's and of the blind baseline's PPO."""
    student_steps: int = 40_960
    """Env steps of the student's own rollouts."""
    episodes: int = 50
    """Held-out evaluation episodes per policy."""
    seed: int = 1
    """Seed of all three runs (evaluation: seed + 100000 + i)."""
    progress: bool = True
    """Draw progress bars."""


@dataclass
class ResumeArgs:
    """Continue a distillation from its latest checkpoint."""

    resume: str
    """The run directory."""
    total_timesteps: int | None = None
    """New total (default: the run's own)."""
    progress: bool = True
    """Draw a progress bar."""


def main(argv: list[str]) -> int:
    from ppox.rl import distill as d

    if argv and argv[0] == "demo":
        args = parse_args(DemoArgs, argv[1:], "ppox distill demo")
        for name in ("teacher_steps", "student_steps", "episodes"):
            if getattr(args, name) < 1:
                from ppox.errors import ConfigError

                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1")
        summary = d.demo(args.run_dir, args.teacher_steps, args.student_steps, args.episodes, args.seed,
                         args.progress, echo=lambda line: print(line, file=sys.stderr))
        print(d.demo_table(summary))
        print(f"summary: {args.run_dir}/summary.json")
        return 0
    if any(a == "--resume" or a.startswith("--resume=") for a in argv):
        args = parse_args(ResumeArgs, argv, "ppox distill --resume")
        distiller = d.Distiller.resume(args.resume, args.total_timesteps, args.progress)
        return _finish(distiller)
    if argv and not argv[0].startswith("-"):  # the positional TEACHER_RUN
        argv = ["--teacher", argv[0], *argv[1:]]
    config = parse_args(d.DistillConfig, argv, "ppox distill TEACHER_RUN")
    if not config.teacher:
        from ppox.errors import ConfigError

        raise ConfigError("give the teacher's run directory: ppox distill TEACHER_RUN --run-dir DIR")
    return _finish(d.Distiller(config))


def _finish(distiller) -> int:
    try:
        summary = distiller.learn()
    finally:
        distiller.close()
    print(json.dumps(summary, indent=2))
    print(f"student: {distiller.run_dir}/student.safetensors")
    if distiller.interrupted:
        print(f"interrupted: continue with `ppox distill --resume {distiller.run_dir}`", file=sys.stderr)
        return 130
    return 0
