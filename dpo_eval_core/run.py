"""One gate run: the stages every claim family shares (inputs, tokenizer, the model loaded once, answers,
text features), each computed once on first use, and claims by id: an id goes to the family that makes it
(registry.py), which measures from these stages and stages of its own (`run.stage`). The run knows no
particular family; a claim touches only what it needs (data-signal loads no model)."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import numpy as np

from . import models as M
from .backend import Generation
from .cache import Cache, file_digest
from .chat import accepts_system
from .claims import Claim
from .config import EvalConfig, GateConfig, installed
from .data import PairSet, load_pairs
from .family import Family, Kind
from .identity import ModelIdentity, base_fingerprint
from .ledger import Ledger, memory_errors
from .looks import Look, commit, find, inputs_digest
from .quantization import free
from .registry import check_claim_ids, resolve
from .sequential import ROUNDS, Staged
from .stages import Stage, Stages
from .texts import answer, features

CLAIMS: Stage[list[Claim]] = Stage("claims")
"""Every claim a family made at once, under (family, argument)."""


class GateRun:
    """A run of the gate; a guest run (`host` given: the --compare adapter's) shares its host's model, data and
    look; a run `beside` another (the next checkpoint of a series) shares its loaded base and data, with an
    adapter and a look of its own."""

    def __init__(self, cfg: EvalConfig, *, cache: Cache | None = None, local_bases: M.LocalBases | None = None,
                 host: GateRun | None = None, beside: GateRun | None = None, label: str | None = None) -> None:
        self.cfg, self.cache, self.local_bases, self.host = cfg, cache or Cache(cfg.cache_dir), local_bases, host
        self.label = label or f"--compare {cfg.adapter}"  # how a comparison with this run names it
        self.owner = host or (beside.owner if beside else self)
        """The run that loaded the model this one uses (and its text pipeline)."""
        self.families = self.owner.families if self.owner is not self else installed()
        self.ledger = Ledger() if host is None else Ledger(host.timings, host.computed, "compare: ")
        self.timings, self.computed = self.ledger.timings, self.ledger.computed
        self.stages = Stages()  # every stage computed so far: the shared ones below, the families' own, claims
        self.loaded: M.LoadedModel | None = None
        self.guests: list[GateRun] = []  # the runs that share this one's model
        if host is not None:
            host.guests.append(self)

    def settings(self, family: Family) -> Any:
        return self.cfg.settings_of(family)

    @functools.cached_property
    def spec(self) -> M.CheckpointSpec:
        return M.resolve(self.cfg, self.local_bases)

    @functools.cached_property
    def pairs(self) -> PairSet:
        c = self.cfg
        return self.owner.pairs if self.owner is not self else load_pairs(
            c.data, columns=c.columns, split_mode=c.split, valid_fraction=c.valid_fraction, seed=c.seed,
            max_samples=c.max_samples)

    @functools.cached_property
    def valid_index(self) -> list[int]:
        """Where the valid split's pairs are: every claim about the model is made on them."""
        return [i for i, p in enumerate(self.pairs.pairs) if p.split == "valid"]

    @functools.cached_property
    def base_fingerprint(self) -> str:
        return base_fingerprint(self.spec.base, self.cache)

    @functools.cached_property
    def adapter_fingerprint(self) -> str:
        return file_digest(M.adapter_weights(self.spec.adapter), self.cache)

    @functools.cached_property
    def look(self) -> Look:
        """This run's look on its adapter (read from the ledger, not yet recorded): the plan sizes for it."""
        if self.host:
            return self.host.look
        inputs = inputs_digest(self.pairs.fingerprint(), self.cfg, lambda p: file_digest(p, self.cache),
                               frozenset(f.name for f in self.families if f.reference))
        return find(self.cfg.looks_path, self.adapter_fingerprint, inputs, self.cfg.gate.tail)

    @functools.cached_property
    def gate(self) -> GateConfig:
        """The gate settings every decision about the adapter reads: intervals at this look's level, sizes for the
        next look's. The first access records the look in the ledger (a claim is about to be decided on it)."""
        if self.host:
            return self.host.gate
        look = self.look
        commit(self.cfg.looks_path, self.adapter_fingerprint, look)
        return dataclasses.replace(self.cfg.gate, ci_level=look.ci_level, sizing_level=look.next_ci_level)

    @functools.cached_property
    def tokenizer(self) -> Any:
        return self.owner.tokenizer if self.owner is not self else M.load_gate_tokenizer(self.spec)

    @functools.cached_property
    def system_ok(self) -> bool:
        return accepts_system(self.tokenizer)

    @functools.cached_property
    def identity(self) -> ModelIdentity:
        c = self.cfg
        return ModelIdentity.of(self.base_fingerprint, self.adapter_fingerprint, c.quant, c.dtype_choice.identity,
                                c.resolved_device, self.tokenizer.chat_template)

    @property
    def model(self) -> M.LoadedModel:
        """The base with the adapter, loaded on first use (a guest or a run beside another adds its adapter to the
        owner's model, under a name of its own)."""
        if self.loaded is None:
            with self.ledger.phase("load"):
                _ = self.identity  # the adapter's weights are read (and refused) before the base loads
                self.loaded = (M.join(self.owner.model, self.spec, self.adapter_name) if self.owner is not self
                               else M.load_gate_model(self.spec, self.cfg, self.tokenizer, self.system_ok))
        return self.loaded

    @property
    def adapter_name(self) -> str:
        """The PEFT name of this run's adapter on the shared model: 'default' (the owner's), M.COMPARE_ADAPTER (a
        guest's), else the weights' digest (a checkpoint's)."""
        return "default" if self.owner is self else M.COMPARE_ADAPTER if self.host else self.adapter_fingerprint[:16]

    def free(self) -> None:
        """Drop the model (and the guests' views of it) and return its memory; a run beside another takes its
        adapter off the owner's model, which stays loaded."""
        if self.owner is not self and self.host is None:
            if self.loaded is not None:
                M.leave(self.loaded, self.adapter_name)
            self.loaded = None
            return
        for run in (self, *self.guests):
            run.loaded = None
        free()

    @functools.cached_property
    def answers(self) -> dict[str, list[Generation | None]]:
        """Tuned and base answers to every valid prompt (and the train prompts answered): never in rounds, since
        the claims on answers are not decided item by item (results.json says so under "sequential")."""
        self.stages.once(ROUNDS.of("answers"), lambda: Staged(None, "every valid prompt answered: the claims on "
                                                                    "answers are not decided item by item"))
        return answer(self)

    @functools.cached_property
    def data_features(self) -> dict[str, np.ndarray]:
        ps = self.pairs.pairs
        return features(self, {"chosen": [p.chosen for p in ps], "rejected": [p.rejected for p in ps]}, "data")

    @functools.cached_property
    def answer_features(self) -> dict[str, np.ndarray]:
        return features(self, {r: [g.text if g else None for g in gens] for r, gens in self.answers.items()},
                        "answers")

    def resolve(self, claim_id: str) -> tuple[Family, Kind, str | None] | None:
        return resolve(self.families, claim_id)

    def claim(self, claim_id: str) -> Claim | None:
        """This run's claim with that id: its family measures it (with all the claims it makes at once, for its
        bracket value when it measures item by item); None when this machine makes none."""
        check_claim_ids(self.families, (claim_id,), "claim id")
        family, _, arg = self.resolve(claim_id)  # type: ignore[misc]
        of = arg if family.per_item else None
        with memory_errors(self.ledger, self.cfg, f"computing {claim_id}"):
            claims = self.stages.once(CLAIMS.of((family.name, of)), lambda: family.claims(self, of))
        return next((c for c in claims if c.id == claim_id), None)

    def claim_ids(self, quantization: bool = False) -> list[str]:
        """Every claim id the run's inputs allow; those of families with models of their own only when asked."""
        return [k.id(a) for f in self.families if f.absent(self.cfg) is None and (quantization or not f.own_models)
                for k in f.kinds for a in ((f.arguments(self, k) if f.arguments else ()) if k.over else (None,))]

    def all_claims(self, quantization: bool = False) -> list[Claim]:
        return [c for cid in self.claim_ids(quantization) if (c := self.claim(cid)) is not None]
