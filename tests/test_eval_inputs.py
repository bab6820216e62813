"""eval.py's inputs from outside: prompt and loss files, and a generation length that fits the model.

On a copy of the 0.1.0 fixture workdir (a tiny PHD-2 model whose context is max_seq_len = 64
positions, less than the default 64 new tokens plus any prompt).
"""

import pytest
from helpers import copy_v010_workdir, file_snapshot

from phd_jax.errors import ConfigError
from phd_jax.evaluation.run import DEFAULT_NEW_TOKENS, evaluate_checkpoint
from phd_jax.train import load_run_config, model_config


@pytest.fixture
def workdir(tmp_path):
    return copy_v010_workdir(tmp_path)


def test_default_generation_length_is_shortened_to_fit_and_says_so(workdir):
    cfg = model_config(load_run_config(workdir))
    assert cfg.max_seq_len < DEFAULT_NEW_TOKENS + len("ROMEO.")  # the default alone does not fit
    lines = []
    result = evaluate_checkpoint(workdir, prompts=["ROMEO."], log=lines.append)
    fits = cfg.max_seq_len - len("ROMEO.")  # byte tokenizer: one token a byte
    assert any(f"max_new_tokens: {fits}, not the default {DEFAULT_NEW_TOKENS}" in line for line in lines), lines
    (sample,) = result["generate"]["samples"]
    assert sample["prompt"] == "ROMEO." and sample["text"]  # it generated
    # An explicit length that does not fit is still an error naming the prompt.
    with pytest.raises(ValueError, match=r"prompt\[0\].*max_new_tokens=60"):
        evaluate_checkpoint(workdir, prompts=["ROMEO."], max_new_tokens=60)


def test_prompt_and_loss_files_that_are_empty_or_not_utf8_are_named(workdir, tmp_path):
    before = file_snapshot(workdir)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    with pytest.raises(ConfigError, match=r"prompts_file=.*empty\.txt.* is empty"):
        evaluate_checkpoint(workdir, prompts_file=str(empty))
    latin = tmp_path / "latin.txt"
    latin.write_bytes("ROMÉO\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"prompts_file=.*latin\.txt.* is not UTF-8 text"):
        evaluate_checkpoint(workdir, prompts_file=str(latin))
    with pytest.raises(ConfigError, match=r"loss_file=.*latin\.txt.* is not UTF-8 text"):
        evaluate_checkpoint(workdir, loss_file=str(latin))
    assert file_snapshot(workdir) == before  # nothing written
