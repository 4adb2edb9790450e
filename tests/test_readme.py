"""The README's Python quickstart runs as written (with smaller budgets)."""

from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_python_quickstart_runs(tmp_path, monkeypatch):
    block = README.read_text().split("```python\n")[1].split("```")[0]
    small = (block.replace("model.learn(100_000)", "model.learn(512)")
             .replace("total_timesteps=20_000", "total_timesteps=512, eval_episodes=2"))
    assert small != block, "the README quickstart changed: update this test"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(small, str(README), "exec"), namespace)
    assert namespace["custom"].summary["total_timesteps"] == 512
    assert (tmp_path / "my_model" / "model.safetensors").is_file()
