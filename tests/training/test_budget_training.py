"""FLOP budgets in training: --target-speedup, --rank-multiple and --measure on the command
line and in TrainConfig, TRP's energy that follows the budget, and lowrank's budget."""


import pytest

from trp_kernels.training import ConfigError, TrainConfig

from cli_runs import refused, report, train



BAD = [
    (["--target-speedup", "1"], "--target-speedup must be a finite number > 1"),
    (["--target-speedup", "inf"], "--target-speedup must be a finite number > 1"),
    (["--target-speedup", "x"], "--target-speedup: invalid float value"),
    (["--rank-multiple", "0"], "--rank-multiple must be an int >= 1"),
    (["--measure", "tflite"], "--measure: invalid choice"),
    (["--target-speedup", "1000"], "the largest reachable conv FLOP speed-up is"),
    (["--target-speedup", "4", "--rank-multiple", "16"], "--target-speedup 4 cannot be reached"),
    (["--scheme", "tucker2", "--target-speedup", "500"], "--target-speedup 500 cannot be reached"),
    (["--method", "baseline", "--target-speedup", "2"],
     "--target-speedup does not apply to --method baseline"),
    (["--method", "baseline", "--rank-multiple", "4"],
     "--rank-multiple does not apply to --method baseline"),
    (["--method", "lowrank", "--rank", "0.5", "--measure", "torch"],
     "--measure does not apply to --method lowrank"),
    (["--target-speedup", "2", "--energy", "0.8"], "give it without --energy"),
    (["--target-speedup", "2", "--final-energy", "0.8"], "give it without --final-energy"),
    (["--target-speedup", "2", "--final-threshold", "0.1"], "give it without --final-threshold"),
    (["--method", "decomp", "--target-speedup", "2", "--rank", "0.5"],
     "without --energy and --rank"),
    (["--method", "lowrank", "--target-speedup", "2", "--rank", "0.5"], "not both"),
    (["--method", "lowrank"], "needs --rank"),
]


@pytest.mark.parametrize("args, message", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_budget_options_are_one_line_exit_2(tmp_path, capsys, args, message):
    err = refused(capsys, "train", tmp_path / "run", *args)
    assert message in err, err


def test_the_configuration_checks_the_budget_options_with_the_library_checks():
    TrainConfig(target_speedup=3, final_threshold=None, rank_multiple=4,
                measure="onnxruntime").validate()
    with pytest.raises(ConfigError, match="target_speedup must be"):
        TrainConfig(target_speedup=0.5, final_threshold=None).validate()
    with pytest.raises(ConfigError, match="rank_multiple must be an int"):
        TrainConfig(rank_multiple=2.5).validate()
    with pytest.raises(ConfigError, match="measure must be one of"):
        TrainConfig(measure="tvm").validate()
    # the Python default final_threshold is a rule of its own: it must be turned off explicitly
    with pytest.raises(ConfigError, match="without final_threshold"):
        TrainConfig(target_speedup=3).validate()


def test_trp_trains_towards_the_budget(tmp_path):
    out = tmp_path / "trp"
    assert train(out, "--epochs", "2", "--target-speedup", "5", "--rank-multiple", "2") == 0
    r = report(out)
    assert r["config"]["target_speedup"] == 5 and r["config"]["rank_multiple"] == 2
    assert r["config"]["final_threshold"] is None
    assert r["flops_speedup"] >= 5
    energies = [h["energy"] for h in r["history"]]
    assert energies[0] == 0.9 and len(set(energies)) > 1 and all(0 < e <= 1 for e in energies)
    assert all(h["decomposed_speedup"] >= 5 for h in r["history"])
    factorised = [l for l in r["layers"] if not l["kept_dense"]]
    assert factorised and all(l["rank"] % 2 == 0 or l["rank"] == l["full_rank"]
                              for l in factorised)


# The measured choice has the last word: on a busy machine it may keep layers dense and warn
# that the speed-up fell below the target.
@pytest.mark.filterwarnings("ignore:conv FLOP speed-up .* misses target_speedup")
def test_trp_with_a_measured_final_choice(tmp_path):
    out = tmp_path / "measured"
    assert train(out, "--epochs", "1", "--target-speedup", "3", "--measure", "torch") == 0
    r = report(out)
    assert r["config"]["measure"] == "torch"
    measured = [l for l in r["layers"] if "latency_runtime" in l]
    assert measured and all(l["latency_runtime"] == "torch" and l["dense_latency_ms"] > 0
                            for l in measured)


@pytest.mark.parametrize("method, args", [
    ("lowrank", ["--epochs", "1"]),
    ("decomp", ["--epochs", "1", "--finetune-epochs", "0"]),
    ("trp", ["--epochs", "1", "--scheme", "tucker2"]),
    ("lowrank", ["--epochs", "1", "--scheme", "decoupled"]),
])
def test_budget_of_every_method_and_scheme(tmp_path, method, args):
    out = tmp_path / method
    assert train(out, "--method", method, "--target-speedup", "4", *args) == 0
    r = report(out)
    assert r["flops_speedup"] >= 4 and r["config"]["target_speedup"] == 4
