"""bench/run_gpu.sh on the CPU: its plan (TRP_GPU_DRY_RUN), and its phase order, verdicts, exit
status and summary.txt with fake phases. The fakes stand in for the machine's tools: nvidia-smi,
compute-sanitizer, cuobjdump and the Python that would build, test and time (PYTHON). Each
fake phase logs its name and does what FAKE_<phase> says ("fail", "sleep <s>", or succeed);
the real script runs unchanged around them."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "bench", "run_gpu.sh")
ORDER = ["build", "import", "smoke", "tests_svd", "tests_conv", "timings_quick", "memcheck",
         "timings_full", "timings_project"]
# Upper estimates of each phase on the H200 machine (16 cores), from a review of the scripts.
ESTIMATES = {"build": 60, "import": 15, "smoke": 90, "tests_svd": 130, "tests_conv": 140,
             "timings_quick": 60}
DEFAULT_BUDGET = 510

FAKE_PYTHON = r'''#!{python}
"""A stand-in for the GPU machine's python3: logs the phase it would run, then obeys FAKE_<phase>."""
import os, sys, time
args = sys.argv[1:]
text = " ".join(args)
def real():  # folding and summarising the timings run for real
    os.execv({python!r}, [{python!r}, *args])
if "--fold" in args or "summarize.py" in text:
    real()
code = args[1] if args[:1] == ["-c"] else ""
if "torch.cuda.is_available()" in code:
    print("python 3.12, torch fake, CUDA 13.0, cuDNN 1, Fake GPU sm_90"); sys.exit(0)
if code == "import xdist" or "--runtime" in args:
    print("fake"); sys.exit(0 if "--runtime" in args else 1)
built = os.path.join(os.environ["FAKE_DIR"], "built")
if "_dispatch_has_kernel" in code and "import ok" not in code:
    sys.exit(0 if os.path.exists(built) else 1)
if "sanitize_probe.py" in text:
    print("probe ok"); sys.exit(0)
phase = ("build" if "setup.py" in args else "import" if "import ok" in code
         else "smoke" if "gpu_smoke.py" in text
         else "tests_svd" if "pytest" in args and "test_svd" in text
         else "tests_conv" if "pytest" in args and "test_conv" in text
         else "timings_quick" if "--quick" in args
         else "timings_full" if "--skip-quick" in args
         else "timings_project" if "project,pstep" in args
         else os.environ.get("FAKE_SANITIZER_TOOL", "sanitize") if "sanitize.py" in text
         else None)
if phase is None:
    sys.exit("fake python: unexpected call " + text)
with open(os.path.join(os.environ["FAKE_DIR"], "calls"), "a") as f:
    f.write(phase + "\n")
action = os.environ.get("FAKE_" + phase, "")
if action.startswith("sleep"):
    time.sleep(float(action.split()[1]))
if action == "fail":
    print(f"{{phase}}: FAILED (fake)"); sys.exit(1)
if phase == "build":
    open(built, "w").close()
if phase.startswith("tests"):
    print("3 passed, 2 deselected in 0.10s")
if phase.startswith("timings"):
    print("timings: 1 measured, 0 failed, 0 not reached of 1, 0 s")
'''

FAKE_TOOLS = {
    "nvidia-smi": '#!/bin/sh\n[ "$1" = -L ] && echo "GPU 0: Fake H200 (UUID: GPU-0)" || echo "Fake H200, 1"\n',
    "cuobjdump": "#!/bin/sh\necho fake resource usage\n",
    # refuse: the device is not supported; errors: two errors found; else: a clean run
    "compute-sanitizer": r'''#!/bin/sh
[ "$1" = --version ] && { echo "Version 2025.3.1"; exit 0; }
if [ "${FAKE_SANITIZER:-}" = refuse ]; then echo "Device not supported"; exit 1; fi
tool=memcheck
while [ "$#" -gt 0 ]; do
  case $1 in
    --tool) tool=$2; shift 2 ;;
    --kernel-name|--print-limit|--report-api-errors) shift 2 ;;
    -*) shift ;;
    *) break ;;
  esac
done
FAKE_SANITIZER_TOOL=$tool "$@"; rc=$?
if [ "${FAKE_SANITIZER:-}" = errors ]; then echo "========= Invalid __global__ read"; echo "========= ERROR SUMMARY: 2 errors"
else echo "========= ERROR SUMMARY: 0 errors"; fi
exit $rc
''',
}


@pytest.fixture
def fake(tmp_path):
    """run(**env) -> (completed process, summary lines, phases called in order)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").write_text(FAKE_PYTHON.format(python=sys.executable))
    for name, text in FAKE_TOOLS.items():
        (bin_dir / name).write_text(text)
    for f in bin_dir.iterdir():
        f.chmod(f.stat().st_mode | stat.S_IEXEC)
    out = tmp_path / "out"

    def run(**env):
        full = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "OUT": str(out),
                "PYTHON": str(bin_dir / "python"), "FAKE_DIR": str(tmp_path), **env}
        done = subprocess.run(["bash", SCRIPT], env=full, capture_output=True, text=True,
                              timeout=120)
        summary = (out / "summary.txt").read_text().splitlines()
        calls = tmp_path / "calls"
        return done, summary, calls.read_text().split() if calls.exists() else []
    return run


def verdicts(summary):
    """{phase: (verdict, note)} from the summary's leading verdict lines."""
    table = {}
    for line in summary:
        m = re.match(r"(\w+) +(PASSED|FAILED|TIMEOUT|SKIPPED|NOT ASKED)(?: +(?:-|\d+))?(?: +(.*))?$",
                     line)
        if not m:
            break
        table[m[1]] = (m[2], m[3] or "")
    return table


def dry_run(**env):
    done = subprocess.run(["bash", SCRIPT], env={**os.environ, "TRP_GPU_DRY_RUN": "1", **env},
                          capture_output=True, text=True, timeout=30)
    plan = re.findall(r"^phase (\w+) cap (\d+)$", done.stdout, re.M)
    return done, [(name, int(cap)) for name, cap in plan]


def test_dry_run_plan_is_in_order_and_fits_the_budget():
    done, plan = dry_run()
    assert done.returncode == 0
    assert [name for name, _ in plan] == ORDER  # racecheck only when asked
    caps = dict(plan)
    # every phase up to the quick timings gets its upper estimate within the default budget
    # (less the seconds kept for the summary); memcheck and the full timings take what is left
    assert all(caps[p] >= ESTIMATES[p] for p in ESTIMATES)
    assert sum(caps[p] for p in ESTIMATES) <= DEFAULT_BUDGET - 10
    assert ORDER.index("timings_quick") < ORDER.index("memcheck") < ORDER.index("timings_full")
    # the warm-start timings come last, with what is left, and fit a device call of their own
    assert ORDER[-1] == "timings_project" and caps["timings_project"] + ESTIMATES["build"] \
        <= DEFAULT_BUDGET - 10


def test_dry_run_of_chosen_phases_and_caps():
    done, plan = dry_run(TRP_GPU_PHASES="tests racecheck", TRP_GPU_CAPS="tests_conv:200")
    assert done.returncode == 0
    assert plan == [("tests_svd", 130), ("tests_conv", 200), ("racecheck", 300)]
    done, plan = dry_run(TRP_GPU_PHASES="tests benchmarks")
    assert done.returncode == 2 and "unknown phase 'benchmarks'" in done.stderr and not plan


def test_all_phases_pass_in_order(fake):
    done, summary, calls = fake()
    assert done.returncode == 0, done.stdout + done.stderr
    assert calls == ORDER
    table = verdicts(summary)
    # summary.txt starts with one verdict line per phase, in run order
    assert list(table) == ORDER + ["racecheck"]
    assert all(table[p][0] == "PASSED" for p in ORDER) and table["racecheck"][0] == "NOT ASKED"
    assert "3 passed" in table["tests_svd"][1] and "ERROR SUMMARY: 0 errors" in table["memcheck"][1]
    assert summary[len(table)].startswith("run_gpu.sh exit 0")


def test_a_failed_phase_fails_the_run_and_the_rest_still_runs(fake):
    done, summary, calls = fake(FAKE_smoke="fail")
    assert done.returncode == 1
    assert calls == ORDER
    table = verdicts(summary)
    assert table["smoke"][0] == "FAILED" and table["tests_conv"][0] == "PASSED"


def test_a_failed_build_skips_what_needs_it(fake):
    done, summary, calls = fake(FAKE_build="fail")
    assert done.returncode == 1 and calls == ["build"]
    table = verdicts(summary)
    assert table["build"][0] == "FAILED"
    assert all(table[p] == ("SKIPPED", "no working extension") for p in ORDER[1:])


def test_a_refused_sanitizer_is_skipped_not_failed(fake):
    done, summary, calls = fake(FAKE_SANITIZER="refuse")
    assert done.returncode == 0
    assert "memcheck" not in calls
    verdict, note = verdicts(summary)["memcheck"]
    assert verdict == "SKIPPED" and "refuses" in note and "Device not supported" in note


def test_sanitizer_errors_fail_memcheck_whatever_the_exit_status(fake):
    done, summary, _ = fake(FAKE_SANITIZER="errors")
    assert done.returncode == 1
    assert verdicts(summary)["memcheck"][0] == "FAILED"


def test_phases_past_the_budget_are_skipped_not_failed(fake):
    # 26 s budget, 10 kept: after a 2 s smoke under 15 s are left, less than a phase needs
    start = time.monotonic()
    done, summary, calls = fake(TRP_GPU_BUDGET_S="26", FAKE_smoke="sleep 2")
    assert time.monotonic() - start < 30
    assert done.returncode == 0
    assert calls == ["build", "import", "smoke"]
    table = verdicts(summary)
    assert all(table[p][0] == "SKIPPED" and "left of the budget" in table[p][1]
               for p in ORDER[3:])


def test_a_phase_past_its_cap_times_out(fake):
    done, summary, calls = fake(TRP_GPU_CAPS="smoke:1", FAKE_smoke="sleep 20")
    assert done.returncode == 1
    assert verdicts(summary)["smoke"][0] == "TIMEOUT"
    assert calls[-1] == "timings_project"  # the later phases still ran


def test_a_rerun_on_a_fresh_machine_builds_first(fake, tmp_path):
    done, summary, calls = fake(TRP_GPU_PHASES="memcheck")
    assert done.returncode == 0 and calls == ["build", "memcheck"]
    assert any("not built for CUDA here: building it first" in line for line in summary)
    table = verdicts(summary)
    assert table["build"][0] == "PASSED" and table["memcheck"][0] == "PASSED"
    assert table["smoke"][0] == "NOT ASKED"
    # built now: a second rerun goes straight to its phase
    (tmp_path / "calls").unlink()
    done, summary, calls = fake(TRP_GPU_PHASES="tests_conv")
    assert done.returncode == 0 and calls == ["tests_conv"]


def test_the_warm_start_timings_run_in_a_call_of_their_own(fake):
    done, summary, calls = fake(TRP_GPU_PHASES="timings_project")
    assert done.returncode == 0 and calls == ["build", "timings_project"]
    table = verdicts(summary)
    assert table["timings_project"][0] == "PASSED" and "1 measured" in table["timings_project"][1]
    assert table["timings_quick"][0] == "NOT ASKED"


@pytest.mark.parametrize("git_dir", ["/nonexistent", None], ids=["no-git", "git"])
def test_the_commit_comes_from_trp_commit_first(fake, git_dir):
    # a tree copied to the GPU machine may have no .git, or a stale one: TRP_COMMIT wins
    env = {"TRP_COMMIT": "abc1234", **({"GIT_DIR": git_dir} if git_dir else {})}
    done, summary, _ = fake(**env)
    assert any(line == "commit abc1234 (TRP_COMMIT)" for line in summary)
