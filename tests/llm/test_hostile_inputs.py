"""Issue 12 item 16: hostile or mistaken LLM inputs end in one line on stderr and exit code 2, fast.

Every case goes through the real entry point, `ppox.cli.main(["llm", ...])`.
"""

import json
import shutil
import time

import pytest
import torch
from transformers import GPT2Config, GPT2ForSequenceClassification

from ppox.cli import main
from ppox.io import RunDirLock
from ppox.llm.demo import tiny_gpt2
from ppox.llm.tasks import char_tokenizer

TRAIN = ["--batch-size", "2", "--num-minibatches", "1", "--max-new-tokens", "2", "--total-steps", "1",
         "--num-test", "4", "--torch-threads", "2", "--no-tensorboard"]


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory):
    """A tiny causal LM directory (n_positions 32: prompt lines over 32 * 64 bytes cannot fit)."""
    path = tmp_path_factory.mktemp("lm") / "lm"
    tokenizer = char_tokenizer()
    torch.manual_seed(0)
    tiny_gpt2(tokenizer, n_layer=1, n_embd=16, n_head=2, n_positions=32).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def copy_model(lm_dir, tmp_path, **config_changes):
    path = tmp_path / "model"
    shutil.copytree(lm_dir, path)
    config = json.loads((path / "config.json").read_text())
    config.update(config_changes)
    (path / "config.json").write_text(json.dumps(config))
    return path


def fails_on_one_line(capfd, argv: list[str], *needles: str) -> str:
    start = time.perf_counter()
    code = main(["llm", *argv])
    err = capfd.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("error: ") and "\n" not in err, err
    for needle in needles:
        assert needle in err, err
    assert time.perf_counter() - start < 30, "refused, but too slowly"
    return err


def train_with_prompts(lm_dir, prompts_file, tmp_path) -> list[str]:
    return ["train", "--model-path", str(lm_dir), "--task", "arithmetic", "--prompts-file", str(prompts_file),
            "--run-dir", str(tmp_path / "run"), *TRAIN]


def test_huge_prompt_line_is_refused_before_tokenising(lm_dir, tmp_path, capfd):
    prompts = tmp_path / "prompts.txt"
    with open(prompts, "wb") as f:
        f.write(b"1+2=\n" + b"1" * 20_000_000 + b"=\n3+4=\n")
    fails_on_one_line(capfd, train_with_prompts(lm_dir, prompts, tmp_path), f"{prompts}:2 is longer than 2048 bytes")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (bytes(range(256)) * 40, ":1 contains a NUL byte"),
        (b"1+2=\n\xff\xfe\xc8\x81garbage\n", ":2 is not UTF-8 text"),
        (b"1+2=\n3+\x004=\n", ":2 contains a NUL byte"),
        (b'{"prompt": "1+\\u00002="}\n', ":1: the prompt contains a NUL"),
    ],
    ids=["binary", "not-utf8", "nul", "nul-in-json"],
)
def test_binary_prompts_and_nul_are_refused(lm_dir, tmp_path, capfd, content, message):
    prompts = tmp_path / ("prompts.jsonl" if content.startswith(b"{") else "prompts.txt")
    prompts.write_bytes(content)
    fails_on_one_line(capfd, train_with_prompts(lm_dir, prompts, tmp_path), message)


def test_prompt_the_tokenizer_cannot_encode(lm_dir, tmp_path, capfd):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("1+2=\nhello?\n")  # the arithmetic tokenizer has no id for letters
    fails_on_one_line(capfd, train_with_prompts(lm_dir, prompts, tmp_path), "cannot be tokenized")


def test_causal_lm_as_reward_model_is_refused(lm_dir, tmp_path, capfd):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("1+2=\n")
    argv = ["train", "--model-path", str(lm_dir), "--task", "none", "--prompts-file", str(prompts),
            "--run-dir", str(tmp_path / "run"), *TRAIN]
    fails_on_one_line(capfd, [*argv, "--reward-model-path", str(lm_dir)],
                      "GPT2LMHeadModel, not a sequence-classification model")
    # a config that claims a classifier over a causal LM's weights: the score head would be random
    claims = copy_model(lm_dir, tmp_path, architectures=["GPT2ForSequenceClassification"], num_labels=1)
    fails_on_one_line(capfd, [*argv, "--reward-model-path", str(claims)], "lacks trained weights for score.weight")


def test_trained_reward_model_is_accepted(lm_dir, tmp_path, capfd):
    config = GPT2Config(vocab_size=15, n_positions=32, n_embd=16, n_layer=1, n_head=2, num_labels=1,
                        pad_token_id=0, eos_token_id=1, bos_token_id=1)
    GPT2ForSequenceClassification(config).save_pretrained(tmp_path / "rm")
    char_tokenizer().save_pretrained(tmp_path / "rm")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("1+2=\n3+4=\n")
    argv = ["train", "--model-path", str(lm_dir), "--task", "none", "--prompts-file", str(prompts),
            "--reward-model-path", str(tmp_path / "rm"), "--run-dir", str(tmp_path / "run"), *TRAIN]
    assert main(["llm", *argv]) == 0, capfd.readouterr().err


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"n_layer": 100_000}, "asks for 100000 layers, its weights hold 1"),
        ({"vocab_size": 10**9}, "no weight has that embedding shape"),
        ({"n_embd": 4096}, "no weight has that embedding shape"),
        ({"n_positions": 10**9}, "parameters, its weights hold"),
    ],
    ids=["layers", "vocab", "hidden", "positions"],
)
def test_config_that_does_not_describe_the_weights_is_refused_before_building(lm_dir, tmp_path, capfd, changes,
                                                                                message):
    model = copy_model(lm_dir, tmp_path, **changes)
    start = time.perf_counter()
    fails_on_one_line(capfd, ["eval", "--model-path", str(model), "--num-test", "4"], message)
    assert time.perf_counter() - start < 10  # n_layer 10^5 used to build for minutes


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda p: p.write_bytes(b""), "is 0 bytes: not a safetensors file"),
        (lambda p: p.write_bytes(p.read_bytes()[:100]), "not a valid safetensors file"),
        (lambda p: p.write_bytes(p.read_bytes()[:-10]), "does not fit the file"),
    ],
    ids=["empty", "header-cut", "data-cut"],
)
def test_damaged_safetensors_weights(lm_dir, tmp_path, capfd, damage, message):
    model = copy_model(lm_dir, tmp_path)
    damage(model / "model.safetensors")
    fails_on_one_line(capfd, ["eval", "--model-path", str(model)], message)


def test_pickled_weights_are_refused(lm_dir, tmp_path, capfd):
    model = copy_model(lm_dir, tmp_path)
    from safetensors.torch import load_file

    torch.save(load_file(model / "model.safetensors"), model / "pytorch_model.bin")
    (model / "model.safetensors").unlink()
    fails_on_one_line(capfd, ["eval", "--model-path", str(model)], "pickled weights (pytorch_model.bin)",
                      "only safetensors")
    (model / "model.safetensors").write_bytes((model / "pytorch_model.bin").read_bytes())  # a pickle, renamed
    fails_on_one_line(capfd, ["eval", "--model-path", str(model)], "pickle")


def test_unusable_device_is_refused(lm_dir, tmp_path, capfd):
    argv = ["train", "--model-path", str(lm_dir), "--run-dir", str(tmp_path / "run"), *TRAIN]
    # without a GPU, cuda itself; with one, a GPU index this machine lacks
    cuda = "cuda:99" if torch.cuda.is_available() else "cuda"
    fails_on_one_line(capfd, [*argv, "--device", cuda], f"--device {cuda}")
    fails_on_one_line(capfd, [*argv, "--device", "toaster"], "unknown device 'toaster'")
    assert not (tmp_path / "run").exists()  # refused before anything was written


@pytest.mark.parametrize("command", ["eval", "train", "demo"])
def test_num_test_zero(lm_dir, tmp_path, capfd, command):
    argv = [command, "--num-test", "0"] + ([] if command == "demo" else ["--model-path", str(lm_dir)])
    fails_on_one_line(capfd, argv, "num_test must be")


def test_run_directory_in_use_is_refused(lm_dir, tmp_path, capfd):
    run = tmp_path / "run"
    with RunDirLock(run):  # another ppox process training there
        fails_on_one_line(capfd, ["train", "--model-path", str(lm_dir), "--run-dir", str(run), *TRAIN],
                          "in use by another ppox process")
    assert main(["llm", "train", "--model-path", str(lm_dir), "--run-dir", str(run), *TRAIN]) == 0
    assert not (run / ".ppox.lock").exists()
