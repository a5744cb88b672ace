"""The GPU scripts' CPU-side behaviour: bench/run_gpu.sh without a GPU (a prompt non-zero exit
with summary.txt), its phase validation, the case lists of bench/gpu_smoke.py and
bench/gpu_timings.py, their exit without CUDA, and the folding and summary of timing JSON."""

from __future__ import annotations

import json
import re
import os
import subprocess
import sys
import time

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")
sys.path.insert(0, BENCH)

import cuda_timing  # noqa: E402
import gpu_smoke  # noqa: E402
import gpu_timings  # noqa: E402

no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without a GPU")


def run_script(tmp_path, **env):
    full = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable, **env}
    start = time.monotonic()
    done = subprocess.run(["bash", os.path.join(BENCH, "run_gpu.sh")], env=full,
                          capture_output=True, text=True, timeout=120)
    return done, time.monotonic() - start


@no_gpu
def test_run_gpu_without_a_gpu_fails_fast_with_a_summary(tmp_path):
    done, seconds = run_script(tmp_path)
    assert done.returncode != 0 and seconds < 60
    summary = (tmp_path / "summary.txt").read_text()
    assert summary.startswith("build ")  # the verdict lines first
    assert "no GPU" in summary or "no usable CUDA device" in summary
    assert "run_gpu.sh exit 3" in summary
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.txt"]


def test_run_gpu_rejects_an_unknown_phase(tmp_path):
    done, seconds = run_script(tmp_path, TRP_GPU_PHASES="tests benchmarks")
    assert done.returncode == 2 and seconds < 60
    assert "unknown phase 'benchmarks'" in (tmp_path / "summary.txt").read_text()


def test_smoke_cases_cover_every_path():
    names = [c.name for c in gpu_smoke.all_cases()]
    assert len(names) == len(set(names))
    for impl in gpu_smoke.SVD_IMPLS:
        for path in ("fused", "blocked32", "blocked64", "groups"):
            for dtype in ("float32", "float64"):
                assert any(n.startswith(f"svd/{impl}/{path}/") and n.endswith(dtype) for n in names)
    for impl in gpu_smoke.CONV_IMPLS:
        for dtype in ("float32", "float16", "bfloat16"):
            for layout in ("nchw", "cl"):
                for scheme in ("channel", "spatial"):
                    assert f"conv/{impl}/{dtype}/{layout}/{scheme}" in names
        assert f"conv/{impl}/float32/nchw/channel/rank0" in names
    # the SVD paths' shapes sit in the ranges of k = min(m, n) that select them
    ks = {path: [min(s) for s in shapes] for path, shapes in gpu_smoke.SVD_PATHS.items()}
    assert max(ks["fused"]) <= 64 < min(ks["blocked32"]) and max(ks["blocked32"]) <= 512
    assert min(ks["blocked64"]) > 512


def test_smoke_list_and_no_cuda_exit(capsys):
    assert gpu_smoke.main(["--list", "--only", "conv/dense/"]) == 0
    listed = capsys.readouterr().out.split()
    assert listed and all(n.startswith("conv/dense/") for n in listed)
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit) as exit_:
            gpu_smoke.main([])
        assert exit_.value.code == 2
        assert "no CUDA device" in capsys.readouterr().err


def test_timing_cases():
    cases = gpu_timings.cases()
    keys = [(c["group"], c["case"], c["impl"]) for c in cases]
    assert len(keys) == len(set(keys))
    assert [c["group"] for c in cases] == sorted((c["group"] for c in cases),
                                                 key=gpu_timings.GROUPS.index)
    svd = {(c["network"], c["impl"]) for c in cases if c["group"] == "svd"}
    assert svd == {(n, i) for n in ("resnet20", "resnet18", "resnet50")
                   for i in ("trp_jacobi", "trp_eigh", "torch_gram", "torch_svd")}
    conv = [c for c in cases if c["group"] == "conv"]
    assert {c["impl"] for c in conv} == {"fused", "two_convs", "two_convs_r8", "dense", "auto"}
    assert {c["dtype"] for c in conv} == {"bf16", "f32"}
    assert all(c["layer"].network == "resnet18" and "-b128-" in c["case"] for c in conv)
    steps = {(c["impl"], c["scheme"]) for c in cases if c["group"] == "step"}
    assert ("plain", "channel") in steps and ("trp_eigh", "spatial") in steps
    # the quick run holds a case of every goal; quick and the rest are the whole table, once
    quick = gpu_timings.selected(quick=True)
    rest = gpu_timings.selected(skip_quick=True)
    key = lambda c: (c["group"], c["case"], c["impl"])
    assert sorted(map(key, quick + rest)) == sorted(keys) and not set(map(key, quick)) & set(map(key, rest))
    assert {c["group"] for c in quick} == set(gpu_timings.GROUPS)
    assert {(c["network"], c["scheme"]) for c in quick if c["group"] == "svd"} == {
        (n, s) for n in ("resnet20", "resnet18", "resnet50") for s in ("channel", "spatial")}
    quick_conv = [c for c in quick if c["group"] == "conv"]
    assert {(c["dtype"], c["backward"], c["impl"]) for c in quick_conv} == {
        (d, b, i) for d in ("bf16", "f32") for b in (False, True)
        for i in ("fused", "two_convs", "two_convs_r8", "dense", "auto")}


def test_warm_start_timing_cases():
    """The groups run only when named: every network, scheme and impl of the projection (the
    compiled op cold and warm beside the baselines), and the training steps of ResNet-20 and
    ResNet-18 ImageNet, TRP+Nu warm and cold per scheme beside one plain step each."""
    extra = gpu_timings.selected(["project", "pstep"])
    assert extra == gpu_timings.extra_cases() and not any(c["quick"] for c in extra)
    project = {(c["network"], c["scheme"], c["impl"]) for c in extra if c["group"] == "project"}
    assert project == {(n, s, i) for n in ("resnet20", "resnet18", "resnet50")
                       for s in ("channel", "spatial") for i in gpu_timings.PROJECT_IMPLS}
    assert {"trp_jacobi-cold", "trp_jacobi-warm", "torch_gram", "torch_svd"} <= {
        i for _, _, i in project}
    steps = {(c["model"], c["impl"], c["scheme"]) for c in extra if c["group"] == "pstep"}
    for model in ("resnet20-b128", "resnet18-imagenet-b128-bf16"):
        assert (model, "plain", "channel") in steps
        assert {(model, i, s) for i in ("trp-cold", "trp-warm") for s in ("channel", "spatial")} <= steps
    # the default run (and --quick / --skip-quick) leaves them out
    assert not {c["group"] for c in gpu_timings.selected()} & {"project", "pstep"}
    assert not {c["group"] for c in gpu_timings.selected(skip_quick=True)} & {"project", "pstep"}


def test_timings_rejects_unknown_groups_and_needs_cuda(capsys):
    with pytest.raises(SystemExit) as exit_:
        gpu_timings.main(["--groups", "svd,speed"])
    assert exit_.value.code == 2 and "unknown speed" in capsys.readouterr().err
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit) as exit_:
            gpu_timings.main(["--groups", "svd"])
        assert exit_.value.code == 2


def test_fold_and_headline(tmp_path, capsys):
    import summarize

    lines = [
        {"kind": "machine", "device": "Test GPU", "driver": "1.0", "torch": "t", "cuda": "c",
         "cudnn": 1, "slug": "Test-GPU"},
        {"kind": "timing", "group": "step", "case": "resnet20-b128", "impl": "plain",
         "median_ms": 10.0},
        {"kind": "timing", "group": "conv", "case": "x-fwd", "impl": "fused", "dtype": "bf16",
         "backward": False, "median_ms": 1.0},
        {"kind": "timing", "group": "conv", "case": "x-fwd", "impl": "two_convs", "dtype": "bf16",
         "backward": False, "median_ms": 2.0},
        {"kind": "timing", "group": "conv", "case": "x-fwd", "impl": "auto", "dtype": "bf16",
         "backward": False, "error": "RuntimeError: boom"},
    ]
    jsonl = tmp_path / "t.jsonl"
    jsonl.write_text("\n".join(json.dumps(x) for x in lines) + '\n{"kind": "timing", "cut')
    out = tmp_path / "t.json"
    assert gpu_timings.main(["--fold", str(jsonl), str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["machine"]["device"] == "Test GPU" and len(data["measurements"]) == 4
    summarize.main([str(out), "--headline"])
    text = capsys.readouterr().out
    assert "Test GPU" in text and "two_convs/fused 2.00 (n=1)" in text
    assert "3 measured, 1 failed" in text and "boom" in text


def test_goals_compare_each_case_with_its_target():
    import summarize

    timing = lambda group, case, impl, ms: {"group": group, "case": case, "impl": impl,  # noqa: E731
                                            "median_ms": ms}
    data = {"measurements": [
        timing("svd", "resnet50-spatial", "trp_jacobi", 1.0),
        timing("svd", "resnet50-spatial", "torch_svd", 9.0),     # 9x: misses 10x
        timing("svd", "resnet50-spatial", "torch_gram", 2.5),    # 2.5x: meets 2x
        timing("svd", "resnet20-channel", "trp_jacobi", 0.6),    # misses 0.5 ms
        timing("step", "resnet20-b128", "plain", 10.0),
        timing("step", "resnet20-b128-channel", "trp_jacobi", 11.0),   # 1.10x: meets 1.15x
        timing("conv", "l-fwd", "fused", 1.0), timing("conv", "l-fwd", "two_convs", 1.1),
        timing("conv", "l-fwd", "dense", 3.0), timing("conv", "l-fwd", "auto", 1.04),
        timing("conv", "l-fwdbwd", "fused", 4.0), timing("conv", "l-fwdbwd", "two_convs", 3.0),
        timing("conv", "l-fwdbwd", "auto", 3.3),                 # 10% over the best: misses
        {"group": "conv", "case": "l-fwd", "impl": "x", "error": "boom"},
    ]}
    rows = {goal: met for goal, _, _, met in summarize.goal_rows(data)}
    assert rows == {
        "svd resnet50-spatial torch_svd/trp_jacobi": False,
        "svd resnet50-spatial torch_gram/trp_jacobi": True,
        "svd resnet20-channel trp_jacobi ms": False,
        "step resnet20-b128-channel trp_jacobi/plain": True,
        "conv l-fwd two_convs/fused": False,   # 1.1x: misses 1.2x; the backward has no such goal
        "conv l-fwd auto/best": True,
        "conv l-fwdbwd auto/best": False,
    }


def test_warm_start_goals():
    import summarize

    timing = lambda group, case, impl, ms: {"group": group, "case": case, "impl": impl,  # noqa: E731
                                            "median_ms": ms}
    data = {"measurements": [
        timing("project", "resnet18-spatial", "trp_jacobi-cold", 10.0),
        timing("project", "resnet18-spatial", "trp_jacobi-warm", 4.0),
        timing("project", "resnet18-spatial", "torch_svd", 120.0),     # 12x: meets 10x
        timing("project", "resnet18-spatial", "torch_gram", 15.0),     # 1.5x cold, 3.75x warm
        timing("project", "resnet20-channel", "trp_jacobi-warm", 0.25),
        timing("pstep", "resnet20-b128", "plain", 10.0),
        timing("pstep", "resnet20-b128-channel", "trp-warm", 10.5),
        timing("pstep", "resnet18-imagenet-b128-bf16", "plain", 100.0),
        timing("pstep", "resnet18-imagenet-b128-bf16-spatial", "trp-cold", 140.0),
    ]}
    rows = {goal: met for goal, _, _, met in summarize.goal_rows(data)}
    assert rows == {
        "project resnet18-spatial torch_svd/trp_jacobi-cold": True,
        "project resnet18-spatial torch_gram/trp_jacobi-cold": False,
        "project resnet18-spatial torch_gram/trp_jacobi-warm": False,
        "project resnet20-channel trp_jacobi-warm ms": True,
        "pstep resnet20-b128-channel trp-warm/plain": True,
        "pstep resnet18-imagenet-b128-bf16-spatial trp-cold/plain": False,
    }


def collected(*args):
    """The test ids pytest collects for args (run from the repository root)."""
    done = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q",
                           "-p", "no:cacheprovider", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    return {line for line in done.stdout.splitlines() if "::" in line}


def test_the_gpu_test_phases_run_every_cuda_case_once():
    with open(os.path.join(BENCH, "run_gpu.sh")) as f:
        script = f.read().replace("\\\n", " ")
    suites = {name: re.search(rf'^{name}="([^"]+)"', script, re.M)[1].split()
              for name in ("SVD_TESTS", "CONV_TESTS")}
    svd = collected(*suites["SVD_TESTS"], "-m", "cuda")
    conv = collected(*suites["CONV_TESTS"], "-m", "cuda")
    assert svd and conv and not svd & conv
    assert svd | conv == collected("tests", "-m", "cuda")


def test_every_kind_of_measurement_runs_on_the_cpu(monkeypatch):
    # The measurements' plumbing (inputs, implementation switches, records, roofline, the
    # timer) with the device set to the CPU and the host standing in for the device's clock: a
    # mistake here would otherwise show only on a GPU.
    monkeypatch.setattr(gpu_timings, "DEVICE", "cpu")
    monkeypatch.setattr(gpu_timings, "CLOCK", cuda_timing.HostClock())
    assert gpu_timings.CONV_CALLS >= cuda_timing.MIN_CALLS == 50   # what a GPU run times
    # what the CPU can afford: one call a timing, two images a conv call
    real = gpu_timings.time_device
    monkeypatch.setattr(gpu_timings, "time_device", lambda fn, **options: real(
        fn, **{**options, "warmup": 0, "calls": 1, "batches": 1}))
    monkeypatch.setattr(gpu_timings, "CONV_BATCH", 2)
    measured = gpu_timings.measure_ceilings(copy_elements=1 << 16, n=64)
    assert set(measured) == {"bytes_per_s", "bfloat16_flops_per_s", "float32_flops_per_s"}
    ceilings = gpu_timings.ceilings_of(measured)
    cases = {(c["group"], c["case"], c["impl"]): c for c in gpu_timings.cases()}
    picks = [("step", "resnet20-b128-channel", "trp_jacobi"),
             ("svd", "resnet20-spatial", "trp_eigh"), ("svd", "resnet20-channel", "torch_gram"),
             ("conv", "r18-512to512-s1-7px-spatial-b128-bf16-cl-fwdbwd", "auto"),
             ("conv", "r18-512to512-s1-7px-channel-b128-f32-nchw-fwd", "dense"),
             ("conv", "r18-512to512-s1-7px-channel-b128-f32-nchw-fwd", "two_convs_r8")]
    for key in picks:
        record = gpu_timings.measure(cases[key], ceilings)
        assert record["median_ms"] > 0 and "layer" not in record or isinstance(record["layer"], str)
        assert record["host_ms"] > 0 and record["held"] == (key[0] == "conv")
        if key[0] == "conv":
            assert record["flops"] > 0 and record["min_bytes"] > 0 and record["roofline_fraction"] > 0
            assert record["calls"] == 1 and record["replay_ms"] > 0
            rank = cases[key]["layer"].rank(cases[key]["scheme"])
            assert record["rank"] == (-(-rank // 8) * 8 if key[2] == "two_convs_r8" else rank)
            assert record["batch"] == 2
            assert ("auto_chose" in record) == (key[2] == "auto")   # the CPU has no choice: {}
        if key[0] == "svd":
            assert record["min_bytes"] > 0 and record["gram_flops"] > 0
    # the warm-start groups: inputs one step after a projection and its bases; steps with warm
    # and cold regularizers (ResNet-20 only: ResNet-18 at 224 pixels is too slow on a CPU)
    extra = {(c["group"], c["case"], c["impl"]): c for c in gpu_timings.extra_cases()}
    for key in [("project", "resnet20-channel", "trp_jacobi-warm"),
                ("project", "resnet20-spatial", "trp_jacobi-cold"),
                ("project", "resnet20-channel", "torch_gram"),
                ("pstep", "resnet20-b128-spatial", "trp-warm"), ("pstep", "resnet20-b128", "plain")]:
        record = gpu_timings.measure(extra[key], ceilings)
        assert record["median_ms"] > 0, key
        assert record["held"] == key[2].startswith("trp_jacobi")  # the op that never syncs
        if key[0] == "project":
            assert record["start"] == (key[2].partition("-")[2] or "cold")
            assert record["min_bytes"] > 0 and record["gram_flops"] > 0


def test_the_fused_goal_compares_with_the_faster_cudnn_pair():
    # two_convs_r8 (the rank padded to a multiple of 8) is the same two cuDNN convs with channel
    # counts their tensor-core kernels prefer: the fused kernel is held against the faster pair.
    import summarize

    timing = lambda impl, ms: {"group": "conv", "case": "l-fwd", "impl": impl,  # noqa: E731
                               "median_ms": ms, "host_ms": ms / 2}
    data = {"measurements": [timing("fused", 1.0), timing("two_convs", 1.5),
                             timing("two_convs_r8", 1.1), timing("auto", 1.0)]}
    rows = {goal: (value, met) for goal, value, _, met in summarize.goal_rows(data)}
    assert rows["conv l-fwd two_convs/fused"] == (pytest.approx(1.1), False)
    assert rows["conv l-fwd auto/best"] == (pytest.approx(1.0), True)
