"""Classic RL: PPO on gymnasium environments."""
