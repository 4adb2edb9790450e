import pytest

from ppox.rl.config import PPOConfig


@pytest.fixture
def tiny(tmp_path):
    """A small, fast config factory: a few iterations, no TensorBoard, no progress bar."""

    def make(env_id: str = "CartPole-v1", **kw) -> PPOConfig:
        values = dict(env_id=env_id, total_timesteps=256, num_envs=2, num_steps=32, num_minibatches=2,
                      update_epochs=2, eval_episodes=0, tensorboard=False, progress=False,
                      run_dir=str(tmp_path / "run"))
        values.update(kw)
        return PPOConfig(**values)

    return make


@pytest.fixture(autouse=True)
def _no_background_build_outlives_its_test():
    """A library a test started building in a child process (ppox.rl.aot.start_build) and never waited for is stopped
    with the test, not left to compete with the next ones."""
    yield
    from ppox.rl import aot

    aot._cancel_background_builds()
