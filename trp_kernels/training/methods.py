"""The four training methods, each one object with hooks that the loop (loop.py) calls in a
fixed order; the loop never asks which method runs.

    setup_model(run, model)    a fresh model (not on resume): lowrank factorises it here
    attach(run)                the model is on its device and wrapped: trp builds its regularizer
    epoch_start(run)           True when the method replaced layers (the loop then re-wraps the
                               model and starts a fresh optimizer over ``schedule_epochs()``)
    before_forward()           every step, before the forward pass
    extra_loss(model)          a term added to the loss (or None)
    after_backward()           every step, between backward and the optimizer step
    epoch_trained(run)         every process, after an epoch's steps, before it is evaluated:
                               finetune re-estimates the BatchNorm statistics here
    epoch_metrics(run)         figures for the epoch's log line and history (rank 0 only)
    epoch_end(run)             every process, after each epoch: the place to change the
                               method's own settings between epochs (a TRP energy schedule)
    finish(run)                the final model, in place; sets run.dense_test_accuracy
    state_dict()               what a resumed run needs (stored as the checkpoint's "trp")

A method is registered in METHODS by name; a new one plugs in without touching the loop.
"""

from __future__ import annotations

import copy

import torch

from ..compression import decompose_model, energy_for_budget, lowrank_layers, restore_lowrank
from ..compression.batchnorm import adapt_batchnorm
from ..compression.fidelity import warnings_silenced
from ..rank_training import TRPRegularizer, make_lowrank, orthogonality_penalty
from .data import split_batches
from .errors import ConfigError
from .evaluate import evaluate

# The projections' energy is kept above 0 (the rank rule's domain is (0, 1]).
MIN_ENERGY = 1e-6
ENERGY_STEP = 2.0


class Method:
    """The base of the methods: every hook does nothing."""

    name = ""
    hooks_cpu_key: str | None = None   # history key for the CPU time of the step hooks
    # Which of the options of compression that is really faster the method takes.
    budget_options: tuple[str, ...] = ()
    # Why the method refuses rank (None: it takes it), and the options the reason names.
    rank_refusal: tuple[str, tuple[str, ...]] | None = None
    takes_init = False        # init: a model.pt the method starts from

    # -- the configuration ---------------------------------------------------------------------
    @classmethod
    def check(cls, config) -> None:
        """Raises ConfigError for an option this method cannot use or lacks."""
        cls.check_budget_options(config)
        if config.rank is not None and cls.rank_refusal is not None:
            reason, options = cls.rank_refusal
            raise ConfigError(f"rank does not apply to method {config.method}: {reason}; "
                              f"methods decomp and lowrank take it", ["rank", "method", *options])
        if config.init is not None and not cls.takes_init:
            raise ConfigError(f"init (a model.pt to start from) is for method decomp or "
                              f"finetune, not {config.method}", ["init", "method"])

    @classmethod
    def check_init(cls, config, init_model) -> None:
        """Raises ConfigError when the model loaded from ``init`` does not suit the method."""

    @classmethod
    def check_budget_options(cls, config) -> None:
        given = {"target_speedup": config.target_speedup is not None,
                 "rank_multiple": config.rank_multiple != 1,
                 "measure": config.measure is not None}
        for option, set_ in given.items():
            if set_ and option not in cls.budget_options:
                raise ConfigError(f"{option} does not apply to method {config.method}",
                                  [option, "method"])

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

    def epoch_trained(self, run) -> None:
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
    rank_refusal = ("the baseline stays dense", ())

    def finish(self, run) -> None:
        run.dense_test_accuracy = evaluate(run.model, run.data, run.device)


class TRP(Method):
    """Projection and nuclear sub-gradient every step (TRPRegularizer); at the end the trained
    weights are decomposed by the final rule, with no fine-tuning."""

    name = "trp"
    hooks_cpu_key = "trp_cpu_s"   # TRP's cost (on CUDA, only the host's part)
    rank_refusal = ("TRP's ranks follow from energy (its projections), final_threshold or "
                    "final_energy (its final decomposition), or target_speedup",
                    ("energy", "final_threshold", "final_energy", "target_speedup"))
    budget_options = ("target_speedup", "rank_multiple", "measure")

    @classmethod
    def check(cls, config) -> None:
        super().check(config)
        if config.target_speedup is not None:
            given = [n for n in ("energy", "final_threshold", "final_energy")
                     if getattr(config, n) is not None]
            if given:
                raise ConfigError(f"target_speedup sets TRP's projections and final ranks "
                                  f"itself; give it without {', '.join(given)}",
                                  ["target_speedup", *given])

    def attach(self, run) -> None:
        config = self.config
        self.regularizer = TRPRegularizer(run.wrapped, config.scheme, config.trp_energy,
                                          config.nuclear_weight, config.period,
                                          pointwise=config.pointwise)

    def aim_energy_at_budget(self, run) -> None:
        """The projections' energy <- the energy whose rank rule meets the FLOP budget on the
        current weights (budget.energy_for_budget), so that the model trains towards the
        budget instead of being cut to it at the end."""
        config = self.config
        energy = energy_for_budget(self.regularizer.model, self.regularizer.layers,
                                   config.scheme, run.example, config.target_speedup,
                                   config.rank_multiple, config.pointwise)
        # The level cuts the current weights to the budget's ranks in one projection, but it is
        # applied at every step, and each projection cuts again: lowered at once, the ranks
        # collapse to 1 within an epoch. So 1 - e grows at most ENERGY_STEP-fold per epoch;
        # raising the energy (ranks below the budget's) follows the level at once.
        floor = 1.0 - ENERGY_STEP * (1.0 - self.regularizer.energy)
        self.regularizer.energy = min(1.0, max(energy, floor, MIN_ENERGY))

    def epoch_end(self, run) -> None:
        if self.config.target_speedup is not None:
            self.aim_energy_at_budget(run)

    def before_forward(self) -> None:
        self.regularizer.before_forward()

    def after_backward(self) -> None:
        self.regularizer.after_backward()

    def final_decomposition(self, run, model, measure=None):
        config = self.config
        return decompose_model(model, config.scheme, energy=config.final_energy,
                               threshold=config.final_threshold, layers=run.targets,
                               target_speedup=config.target_speedup,
                               rank_multiple=config.rank_multiple, measure=measure,
                               example_input=run.example if measure is None
                               else run.latency_input, calibration_input=run.latency_input,
                               pointwise=config.pointwise)

    def epoch_metrics(self, run) -> dict:
        """The energy and mean rank of the epoch's projections, and the model decomposed now by
        the final rule (not measured: timing every epoch would cost more than the epoch): its
        accuracy and speed-up."""
        ranks = self.regularizer.ranks()
        decomposed = copy.deepcopy(run.model)
        with warnings_silenced():
            report = self.final_decomposition(run, decomposed)
        # tucker2's ranks are pairs (r_in, r_out): the mean is over both.
        parts = [p for r in ranks.values() for p in (r if isinstance(r, tuple) else (r,))]
        return {"energy": self.regularizer.energy,
                "mean_rank": sum(parts) / max(len(parts), 1),
                "decomposed_test_accuracy": evaluate(decomposed, run.data, run.device),
                "decomposed_speedup": report.flops_speedup}

    def finish(self, run) -> None:
        run.dense_test_accuracy = evaluate(run.model, run.data, run.device)
        with warnings_silenced():      # one line of the log instead
            run.decomposition = self.final_decomposition(run, run.model, self.config.measure)
        if run.writer and run.decomposition.fidelity_warning():
            run.log(f"warning: {run.decomposition.fidelity_warning()}")

    def state_dict(self):
        # The energy too: with target_speedup it is chosen at each epoch's end.
        return {**self.regularizer.state_dict(), "energy": self.regularizer.energy}

    def load_state_dict(self, state) -> None:
        self.regularizer.load_state_dict(state)
        if "energy" in state:
            self.regularizer.energy = state["energy"]


class Decomp(Method):
    """The papers' comparison: train a baseline (or load one with ``init``), decompose it by
    energy and/or rank, fine-tune for ``finetune_epochs`` with a fresh optimizer."""

    name = "decomp"
    budget_options = ("target_speedup", "rank_multiple", "measure")
    takes_init = True

    @classmethod
    def check(cls, config) -> None:
        super().check(config)
        if config.target_speedup is not None and (config.energy is not None
                                                  or config.rank is not None):
            raise ConfigError("target_speedup chooses the ranks itself; give it without energy "
                              "and rank", ["target_speedup", "energy", "rank"])

    @classmethod
    def check_init(cls, config, init_model) -> None:
        if lowrank_layers(init_model):
            raise ConfigError(f"init {config.init!r} is already compressed; decomp starts from "
                              f"a dense (baseline) model", ["init"])

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
        with warnings_silenced():      # the log line below gives the accuracy it leaves
            report = decompose_model(run.model, config.scheme, energy=config.decomp_energy,
                                     rank=config.rank_spec, layers=run.targets,
                                     target_speedup=config.target_speedup,
                                     rank_multiple=config.rank_multiple, measure=config.measure,
                                     example_input=run.example if config.measure is None
                                     else run.latency_input, calibration_input=run.latency_input,
                                     pointwise=config.pointwise)
        run.decomposition = report
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
    budget_options = ("target_speedup", "rank_multiple")

    @classmethod
    def check(cls, config) -> None:
        if (config.rank is None) == (config.target_speedup is None):
            raise ConfigError("method lowrank needs rank (an int, or a fraction of each "
                              "layer's full rank in (0, 1]) or target_speedup, not both",
                              ["method", "rank", "target_speedup"])
        super().check(config)

    def setup_model(self, run, model) -> None:
        config, example = self.config, None
        if config.target_speedup is not None:
            # The fresh model is still on the CPU: the budget's example input is too.
            example = run.data.batch_inputs(run.data.test_x[:1], torch.device("cpu"))
        make_lowrank(model, config.scheme, config.rank_spec, example_input=example,
                     target_speedup=config.target_speedup, rank_multiple=config.rank_multiple,
                     pointwise=config.pointwise)

    def extra_loss(self, model):
        if self.config.orth_weight > 0:
            return self.config.orth_weight * orthogonality_penalty(model,
                                                                   self.config.penalty_kind)
        return None

class Finetune(Method):
    """Fine-tuning of a given model (``init``: its model.pt, compressed or not) for ``epochs``,
    its layers and ranks as they are: what follows a compression (the compress command's
    --finetune-epochs runs it). After every epoch the BatchNorm layers' running statistics
    are re-estimated on the training split (compression/batchnorm.py): the weights move
    faster after a compression than the running averages follow, and a model evaluated with
    statistics that lag its weights loses what the epoch gained."""

    name = "finetune"
    rank_refusal = ("finetune keeps the ranks of the model it is given (init)", ("init",))
    takes_init = True

    @classmethod
    def check(cls, config) -> None:
        super().check(config)
        if config.init is None:
            raise ConfigError("method finetune needs init: the model.pt to fine-tune",
                              ["method", "init"])

    def setup_model(self, run, model) -> None:
        state = run.prepared.init_model.state_dict()
        restore_lowrank(model, state)
        model.load_state_dict(state)

    def epoch_trained(self, run) -> None:
        adapt_batchnorm(run.model, split_batches(run.data, 500, run.device, "train"))


METHODS_BY_NAME = {cls.name: cls for cls in (Baseline, TRP, Decomp, LowRank, Finetune)}
METHODS = tuple(METHODS_BY_NAME)


def method_class(name: str) -> type[Method]:
    return METHODS_BY_NAME[name]
