"""experiments/reproduce.py end to end on a tiny config: every method's
records, the JSON's aggregates, the figures, resuming, and bad input."""
import json

import pytest

from conftest import load_script

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TINY = ["--seeds", "1", "--pruning_times", "3", "--epochs", "1", "--bench_batch", "8", "--bench_repeats", "1"]


@pytest.fixture(scope="module")
def reproduce():
    return load_script("experiments/reproduce.py")


@pytest.mark.slow
def test_tiny_run_records_every_method_then_resumes(reproduce, tmp_path, capsys):
    out = tmp_path / "out"
    reproduce.main(reproduce.get_args_parser().parse_args(TINY + ["--out", str(out)]))
    results = json.loads((out / "results.json").read_text())

    assert list(results["methods"]) == list(reproduce.METHODS)
    for method, entry in results["methods"].items():
        records = entry["seeds"]["1"]
        first_state = 0 if method.startswith("imp") else 1  # retraining starts from IMP's sparse states
        assert [r["state"] for r in records] == list(range(first_state, 3)), method
        sparsities = [r["sparsity"] for r in records]
        assert sparsities == sorted(sparsities) and sparsities[-1] > 0, (method, sparsities)
        for r in records:
            assert 0 <= r["test_acc"] <= 100 and 0 <= r["best_val_acc"] <= 100
            assert r["speedup"] > 0 and r["flops_per_image"] > 0 and r["ideal_flops_per_image"] > 0
            assert r["remaining_weights_pct"] == pytest.approx(100 * (1 - r["sparsity"]))
        assert [row["state"] for row in entry["states"]] == [r["state"] for r in records]
        within = entry["max_sparsity_within_dense_std"]
        assert within is None or within in [row["sparsity_mean"] for row in entry["states"]]
    refill = results["methods"]["imp_refill"]["seeds"]["1"]
    assert refill[1]["timed_as"] == "slimmed" and refill[1]["flops_per_image"] < results["dense"]["flops_per_image"]
    dense = results["dense"]
    assert dense["test_acc_mean"] == results["methods"]["imp"]["seeds"]["1"][0]["test_acc"]
    assert dense["test_acc_std"] == 0.0  # one seed
    assert "max_sparsity_within_dense_std" in results["definitions"]
    recipe = json.loads((out / "seed1" / "imp" / "summary.json").read_text())["recipe"]
    assert recipe["overrides"] == {"epochs": 1, "pruning_times": 3}  # what each run trained, not the digits recipe
    for name in ("accuracy_vs_sparsity.png", "speedup_vs_sparsity.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC

    capsys.readouterr()
    reproduce.main(reproduce.get_args_parser().parse_args(TINY + ["--out", str(out)]))  # same --out: every run skipped
    printed = capsys.readouterr().out
    assert printed.count("finished earlier, skipped") == 4 + 5 * 2 and "done in" not in printed  # 4 IMP runs, 5 retrainings x 2 states


def test_bad_input_is_one_line(reproduce, tmp_path, cli_error):
    out = ["--out", str(tmp_path / "out")]
    assert "unknown method 'prune_it'" in cli_error(reproduce, ["--methods", "imp", "prune_it"] + out)
    assert "unknown --arch 'res99'" in cli_error(reproduce, ["--arch", "res99"] + out)
    assert "unknown --dataset 'mnist'" in cli_error(reproduce, ["--dataset", "mnist"] + out)
    assert not (tmp_path / "out").exists()  # rejected before anything was written
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "config.json").write_text(json.dumps({"epochs": 1}))
    assert "holds runs made with other settings" in cli_error(reproduce, TINY[:-4] + out)
