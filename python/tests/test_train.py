"""normlab.Model: train briefly on MNIST with the C++ trainer, evaluate, save,
load; the run directory holds the CLI's files. MNIST is found as the CLI finds
it (NORMLAB_DATA, <repo>/../shared/data, <repo>/data); skipped when absent."""

import json
import os

import pytest

import normlab

SPEC = "flatten, linear(64), layernorm, relu, linear(32), groupnorm(4), relu, linear(10)"


@pytest.fixture(scope="module")
def mnist():
    try:
        return normlab.default_data_dir("mnist")
    except ValueError as e:
        pytest.skip(f"MNIST not found (scripts/fetch-data): {e}")


def test_train_evaluate_save_load(mnist, tmp_path):
    model = normlab.Model.from_spec(SPEC)
    seen = []
    history = model.train(tmp_path / "run", epochs=1, batch_size=64, limit_train=3000,
                          limit_test=1000, seed=1, on_epoch=lambda *a: seen.append(a))
    assert len(history) == 1 and len(seen) == 1
    files = set(os.listdir(tmp_path / "run"))  # and the plots when gnuplot is installed
    assert {"checkpoint.safetensors", "metrics.jsonl", "model.safetensors"} <= files
    line = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert line["epoch"] == 1
    assert history[0]["test_accuracy"] > 0.6  # chance is 0.1
    result = model.evaluate(batch_size=500)
    assert result["count"] == 10000 and result["accuracy"] > 0.6
    saved = model.save(tmp_path / "m.safetensors")
    again = normlab.Model.load(saved)
    assert again.spec == SPEC
    assert again.evaluate()["accuracy"] == pytest.approx(result["accuracy"])


def test_errors_are_value_errors_with_the_cli_message(mnist, tmp_path):
    with pytest.raises(ValueError, match="unknown option 'bogus' for linear"):
        normlab.Model.from_spec("linear(10, bogus=1)").train(tmp_path / "x", limit_train=10)
    with pytest.raises(ValueError, match="no weights yet"):
        normlab.Model.from_spec("linear(10)").evaluate()
    with pytest.raises(ValueError, match="batch_size must be between 1 and"):
        model = normlab.Model.from_spec("flatten, linear(10)")
        model.train(tmp_path / "y", epochs=1, limit_train=200, limit_test=100)
        model.evaluate(batch_size=0)
