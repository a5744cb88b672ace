"""The four training methods, each one object with hooks that the loop (loop.py) calls in a
fixed order; the loop never asks which method runs.

    setup_model(run, model)    a fresh model (not on resume): lowrank factorises it here
    attach(run)                the model is on its device and wrapped: trp builds its regularizer
    epoch_start(run)           True when the method replaced layers (the loop then re-wraps the
                               model and starts a fresh optimizer over ``schedule_epochs()``)
    before_forward()           every step, before the forward pass
    extra_loss(model)          a term added to the loss (or None)
    after_backward()           every step, between backward and the optimizer step
    epoch_metrics(run)         figures for the epoch's log line and history (rank 0 only)
    epoch_end(run)             every process, after each epoch: the place to change the
                               method's own settings between epochs (a TRP energy schedule)
    finish(run)                the final model, in place; sets run.dense_test_accuracy
    state_dict()               what a resumed run needs (stored as the checkpoint's "trp")

A method is registered in METHODS by name; a new one plugs in without touching the loop.
"""

from __future__ import annotations

import copy

from ..decompose import decompose_model
from ..lowrank_train import make_lowrank, orthogonality_penalty
from ..trp import TRPRegularizer
from .errors import ConfigError
from .evaluate import evaluate


class Method:
    """The base of the methods: every hook does nothing."""

    name = ""
    hooks_cpu_key: str | None = None   # history key for the CPU time of the step hooks

    # -- the configuration ---------------------------------------------------------------------
    @classmethod
    def check(cls, config) -> None:
        """Raises ConfigError for an option this method cannot use or lacks."""
        if config.init is not None:
            raise ConfigError(f"init (a trained baseline to decompose) is for method decomp, "
                              f"not {config.method}")

    @classmethod
    def min_epochs(cls, config) -> int:
        return 1

    @classmethod
    def pretrain_epochs(cls, config) -> int:
        return config.epochs

    @classmethod
    def total_epochs(cls, config) -> int:
        return cls.pretrain_epochs(config)

    # -- the run -------------------------------------------------------------------------------
    def __init__(self, config):
        self.config = config

    def setup_model(self, run, model) -> None:
        pass

    def attach(self, run) -> None:
        pass

    def schedule_epochs(self) -> int:
        """Epochs the learning-rate schedule of the current phase spans."""
        return self.pretrain_epochs(self.config)

    def epoch_start(self, run) -> bool:
        return False

    def before_forward(self) -> None:
        pass

    def extra_loss(self, model):
        return None

    def after_backward(self) -> None:
        pass

    def epoch_metrics(self, run) -> dict:
        return {}

    def epoch_end(self, run) -> None:
        pass

    def finish(self, run) -> None:
        pass

    def state_dict(self):
        return None

    def load_state_dict(self, state) -> None:
        pass


class Baseline(Method):
    """The dense model, trained; it is its own dense reference."""

    name = "baseline"

    def finish(self, run) -> None:
        run.dense_test_accuracy = evaluate(run.model, run.data, run.device)


class TRP(Method):
    """Projection and nuclear sub-gradient every step (TRPRegularizer); at the end the trained
    weights are decomposed by the final rule, with no fine-tuning."""

    name = "trp"
    hooks_cpu_key = "trp_cpu_s"   # TRP's cost (on CUDA, only the host's part)

    def attach(self, run) -> None:
        config = self.config
        self.regularizer = TRPRegularizer(run.wrapped, config.scheme, config.trp_energy,
                                          config.nuclear_weight, config.period)

    def before_forward(self) -> None:
        self.regularizer.before_forward()

    def after_backward(self) -> None:
        self.regularizer.after_backward()

    def final_decomposition(self, run, model):
        config = self.config
        return decompose_model(model, config.scheme, energy=config.final_energy,
                               threshold=config.final_threshold, layers=run.targets,
                               example_input=run.example)

    def epoch_metrics(self, run) -> dict:
        """The mean rank of the last projection, and the model decomposed now by the final
        rule: its accuracy and speed-up."""
        ranks = self.regularizer.ranks()
        decomposed = copy.deepcopy(run.model)
        report = self.final_decomposition(run, decomposed)
        # tucker2's ranks are pairs (r_in, r_out): the mean is over both.
        parts = [p for r in ranks.values() for p in (r if isinstance(r, tuple) else (r,))]
        return {"mean_rank": sum(parts) / max(len(parts), 1),
                "decomposed_test_accuracy": evaluate(decomposed, run.data, run.device),
                "decomposed_speedup": report.flops_speedup}

    def finish(self, run) -> None:
        run.dense_test_accuracy = evaluate(run.model, run.data, run.device)
        self.final_decomposition(run, run.model)

    def state_dict(self):
        return self.regularizer.state_dict()

    def load_state_dict(self, state) -> None:
        self.regularizer.load_state_dict(state)


class Decomp(Method):
    """The papers' comparison: train a baseline (or load one with ``init``), decompose it by
    energy and/or rank, fine-tune for ``finetune_epochs`` with a fresh optimizer."""

    name = "decomp"

    @classmethod
    def check(cls, config) -> None:
        pass   # init is this method's option

    @classmethod
    def min_epochs(cls, config) -> int:
        return 0 if config.init else 1   # a loaded baseline needs no training

    @classmethod
    def pretrain_epochs(cls, config) -> int:
        return 0 if config.init else config.epochs

    @classmethod
    def total_epochs(cls, config) -> int:
        return cls.pretrain_epochs(config) + config.finetune_epochs

    def __init__(self, config):
        super().__init__(config)
        self.decomposed = False

    def setup_model(self, run, model) -> None:
        if run.prepared.init_model is not None:
            model.load_state_dict(run.prepared.init_model.state_dict())

    def attach(self, run) -> None:
        # Checkpoints are written after epochs, and the decomposition opens the first
        # fine-tuning epoch: a checkpoint past the pre-training holds the decomposed model.
        self.decomposed = run.epoch > self.pretrain_epochs(self.config)

    def schedule_epochs(self) -> int:
        return self.config.finetune_epochs if self.decomposed else super().schedule_epochs()

    def decompose(self, run) -> None:
        """The trained baseline's accuracy, then its decomposition by energy/rank."""
        config = self.config
        run.dense_test_accuracy = evaluate(run.model, run.data, run.device)
        report = decompose_model(run.model, config.scheme, energy=config.decomp_energy,
                                 rank=config.rank_spec, layers=run.targets,
                                 example_input=run.example)
        self.decomposed = True
        if run.writer:
            run.log(f"decomposed the baseline ({100 * run.dense_test_accuracy:.2f}% test "
                    f"accuracy): {report.flops_speedup:.2f}x conv FLOP speed-up, "
                    f"{100 * evaluate(run.model, run.data, run.device):.2f}% before "
                    f"fine-tuning for {config.finetune_epochs} epochs")

    def epoch_start(self, run) -> bool:
        if self.decomposed or run.epoch != self.pretrain_epochs(self.config):
            return False
        self.decompose(run)
        return True

    def finish(self, run) -> None:
        if not self.decomposed:
            self.decompose(run)   # finetune_epochs == 0: the decomposition alone


class LowRank(Method):
    """ELRT: low-rank from step 0 (rank as an int or a fraction of full rank; a pair for
    tucker2), with an orthogonality penalty of kind ``penalty_kind`` and weight
    ``orth_weight``."""

    name = "lowrank"

    @classmethod
    def check(cls, config) -> None:
        if config.rank is None:
            raise ConfigError("method lowrank needs rank (an int, or a fraction of each "
                              "layer's full rank in (0, 1])")
        super().check(config)

    def setup_model(self, run, model) -> None:
        make_lowrank(model, self.config.scheme, self.config.rank_spec)

    def extra_loss(self, model):
        if self.config.orth_weight > 0:
            return self.config.orth_weight * orthogonality_penalty(model,
                                                                   self.config.penalty_kind)
        return None

METHODS_BY_NAME = {cls.name: cls for cls in (Baseline, TRP, Decomp, LowRank)}
METHODS = tuple(METHODS_BY_NAME)


def method_class(name: str) -> type[Method]:
    return METHODS_BY_NAME[name]
