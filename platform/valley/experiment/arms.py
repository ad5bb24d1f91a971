"""A study's design as data: arms (a subset definition, its sizes, where each run starts, overrides) and the
comparisons the report draws between them.

An arm trains one run per size and start. Its subset is the data stage's `SubsetSpec` without name and size
(`kind`, `sources`, `where`, `per_question`, `mix`, `exclusive_of`, `seed`), so anything the corpus holds
can be an axis: teacher, answers per question, trace length, source, difficulty, correctness. `from` lists
where runs start: `base` (the student's model), `<arm>@<size>` (that arm's run at that size: the paper's
stage 2 generalised) or `<student>/<arm>@<size>` (another student's run: a checkpoint of the same
architecture that every student of the study continues from). Comparisons: `series` (one arm over its sizes: the valley curve) and `contrast` (two
arms at equal size and equal start). `seeds` gives a run replicates (its own training seed each, and with
`resample` its own draw of the subset), which the report's paired tests use.

The paper's study (`study:` with RQ1/RQ2/RQ3 and stage 2) is a preset of this: `arms_of_study` turns it
into arms and comparisons whose subsets and runs have the names they always had, so its stages hash as
before.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from valley.ordering import dependency_order

BASE = "base"


class ArmSpec(BaseModel):
    """One arm of the study."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    subset: dict[str, Any] = Field(default_factory=dict)  # SubsetSpec fields except name and size
    sizes: list[int] = Field(min_length=1)
    # the subset's (and the run's) name at each size; default "<arm>-<size>"
    names: str | None = None
    # where runs start: "base" and/or "<arm>@<size>"; unset: the base model, and run names carry no
    # "-from-<start>" (set, they always do)
    from_: list[str] | None = Field(default=None, alias="from")
    per_epoch_eval: bool = False  # also evaluate every epoch's export
    # training seeds (replicates) per run: a count for every size, or {size: count}; None: the study's
    # `seeds`. Replicate k trains with the train seed + k (its own data order); replicate 0 keeps the names
    # a single run has, replicate k adds "-s<k>" to them.
    seeds: int | dict[int, int] | None = None
    # replicates also draw their own subset (the subset's seed + k), not only their own data order
    resample: bool = False
    train: dict[str, Any] = Field(default_factory=dict)  # TrainConfig fields for this arm's runs only
    generate: dict[str, Any] = Field(default_factory=dict)  # GenerateConfig fields for its evaluations only

    @model_validator(mode="after")
    def _sizes(self) -> ArmSpec:
        if len(set(self.sizes)) != len(self.sizes) or any(s <= 0 for s in self.sizes):
            raise ValueError(f"sizes {self.sizes} must be distinct positive sizes")
        if len(self.sizes) > 1 and self.names is not None and "{size}" not in self.names:
            raise ValueError(f"names {self.names!r} must contain {{size}} for several sizes")
        if isinstance(self.seeds, dict):
            unknown = sorted(set(self.seeds) - set(self.sizes))
            if unknown or any(n < 1 for n in self.seeds.values()):
                raise ValueError(f"seeds {self.seeds} must map this arm's sizes {self.sizes} to counts >= 1")
        elif self.seeds is not None and self.seeds < 1:
            raise ValueError(f"seeds={self.seeds} must be >= 1")
        return self

    def replicates(self, size: int, study_seeds: int = 1) -> int:
        """How many training seeds the run of `size` has (per start)."""
        if isinstance(self.seeds, dict):
            return self.seeds.get(size, 1)
        return self.seeds if self.seeds is not None else study_seeds

    def subset_name(self, arm: str, size: int) -> str:
        return (self.names or "{arm}-{size}").format(arm=arm, size=size)

    def starts(self) -> list[str]:
        return list(self.from_) if self.from_ is not None else [BASE]


class ComparisonSpec(BaseModel):
    """What the report compares: one arm over its sizes (`series`), or two arms at equal size (`contrast`)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    series: str | None = None
    contrast: list[str] | None = Field(default=None, min_length=2, max_length=2)

    @model_validator(mode="after")
    def _one_kind(self) -> ComparisonSpec:
        if (self.series is None) == (self.contrast is None):
            raise ValueError(f"comparison {self.name!r}: give exactly one of series (an arm) or contrast (two arms)")
        return self

    def arms(self) -> list[str]:
        return [self.series] if self.series is not None else list(self.contrast or [])


def replicate_name(name: str, replicate: int) -> str:
    """A run's (or a resampled subset's) name for replicate k: replicate 0 keeps the plain name, so a study
    that adds seeds later finds its single runs as replicate 0."""
    return name if replicate == 0 else f"{name}-s{replicate}"


def parse_start(start: str) -> tuple[str, int] | None:
    """`<arm>@<size>` or `<student>/<arm>@<size>` -> (arm, size); `base` -> None (see `start_student`)."""
    if start == BASE:
        return None
    arm, sep, size = start.split("/", 1)[-1].rpartition("@")
    if not sep or not arm or not size.isdigit():
        raise ValueError(f"start {start!r} is neither 'base', '<arm>@<size>' nor '<student>/<arm>@<size>'")
    return arm, int(size)


def start_student(start: str) -> str | None:
    """The student a start names (`<student>/<arm>@<size>`: that student's run), else None (the same
    student's run, or its base model)."""
    return start.split("/", 1)[0] if "/" in start and start != BASE else None


def check_design(arms: dict[str, ArmSpec], comparisons: list[ComparisonSpec]) -> None:
    """Starts name trained runs, no arm starts from itself in a loop, names are unique, comparisons name
    arms (a contrast: two arms with a size in common)."""
    names: dict[str, str] = {}
    for arm_name, arm in arms.items():
        for size in arm.sizes:
            name = arm.subset_name(arm_name, size)
            if name in names:
                raise ValueError(f"arms {names[name]!r} and {arm_name!r} both name a run {name!r}; set `names`")
            names[name] = arm_name
        for start in arm.starts():
            found = parse_start(start)
            if found is not None and (found[0] not in arms or found[1] not in arms[found[0]].sizes):
                raise ValueError(f"arm {arm_name!r} starts from {start!r}, which no arm trains")
    start_order(arms)
    for comparison in comparisons:
        unknown = [a for a in comparison.arms() if a not in arms]
        if unknown:
            raise ValueError(f"comparison {comparison.name!r} names arms {unknown} the study does not have")
        if comparison.contrast and not set(arms[comparison.contrast[0]].sizes) & set(arms[comparison.contrast[1]].sizes):
            raise ValueError(f"comparison {comparison.name!r}: arms {comparison.contrast} share no size")


def _start_arms(arm: ArmSpec) -> list[str]:
    return [found[0] for start in arm.starts() if (found := parse_start(start)) is not None]


def start_order(arms: dict[str, ArmSpec]) -> list[str]:
    """Arm names with every arm after the arms it starts from (declaration order otherwise); arms that
    start from each other in a loop are refused."""
    return dependency_order({name: _start_arms(arm) for name, arm in arms.items()}, "arms start from each other")


def arms_of_study(study: Any) -> tuple[dict[str, ArmSpec], list[ComparisonSpec]]:
    """The paper's study (`StudySpec`) as arms and comparisons, with the subset and run names it always had:
    RQ1 `r<size>` from the base model, RQ2/RQ3 `correct`/`incorrect`/`easy`/`hard` from the base model and
    from the stage-2 run (`<kind>-from-base`, `<kind>-from-r<size>`)."""
    arms: dict[str, ArmSpec] = {}
    comparisons: list[ComparisonSpec] = []
    if study.scaling_sizes:
        arms["r"] = ArmSpec(subset={"kind": "random", "sources": study.scaling_sources}, sizes=list(study.scaling_sizes),
                            names="r{size}", per_epoch_eval="random" in study.per_epoch_eval)
        comparisons.append(ComparisonSpec(name="RQ1: data quantity", series="r"))
    starts = [BASE] + ([f"r@{study.stage2_from_size}"] if study.stage2_from_size is not None else [])
    paired = [("correct", "incorrect", study.correctness_size, "RQ2: trace correctness"),
              ("easy", "hard", study.difficulty_size, "RQ3: question difficulty")]
    for first, second, size, title in paired:
        if size:
            for kind in (first, second):
                arms[kind] = ArmSpec(subset={"kind": kind, "sources": study.subset_sources}, sizes=[size], names=kind,
                                     from_=starts, per_epoch_eval=kind in study.per_epoch_eval)
            comparisons.append(ComparisonSpec(name=title, contrast=[first, second]))
    return arms, comparisons
