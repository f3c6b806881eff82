"""The ``sparseforge`` command: list | info | run.

User mistakes (unknown method, bad config value, missing data) exit with status 2 and one clear
message; only bugs show a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import types
import typing

from ._table import format_table

EXIT_USAGE = 2


class UsageError(Exception):
    """A mistake in what the user asked for: reported in one line, exit status 2."""


def _fail(msg: str) -> int:
    print(f"sparseforge: error: {msg}", file=sys.stderr)
    return EXIT_USAGE


# -- list -------------------------------------------------------------------------------------------


def cmd_list(args) -> int:
    from .registry import KINDS, PluginLoadError, get_method, method_names, plugin_errors

    if args.kind is not None and args.kind not in KINDS:
        raise UsageError(f"--kind must be one of {', '.join(KINDS)}; got {args.kind!r}")
    rows, broken = [], {}
    for name in method_names():
        try:
            cls = get_method(name)
        except PluginLoadError as exc:
            broken[name] = str(exc)
            continue
        if args.kind and cls.kind != args.kind:
            continue
        rows.append({"name": name, "kind": cls.kind, "paper": cls.paper.title, "year": cls.paper.year,
                     "arxiv": cls.paper.arxiv, "kernel": cls.kernel})
    broken.update({k: v for k, v in plugin_errors().items() if k not in broken})
    if args.json:
        print(json.dumps({"methods": rows, "broken": broken}, indent=2))
        return 0
    width = 60
    table = [[r["name"], r["kind"], (r["paper"][: width - 3] + "...") if len(r["paper"]) > width else r["paper"],
              r["year"], r["kernel"]] for r in rows]
    print(format_table(["name", "kind", "paper", "year", "kernel"], table))
    for name, why in sorted(broken.items()):
        print(f"\nbroken plugin skipped: {why}", file=sys.stderr)
    return 0


# -- info -------------------------------------------------------------------------------------------


def cmd_info(args) -> int:
    from .api import describe
    from .info import info

    if args.name is None:
        facts = info()
        if args.json:
            print(json.dumps(facts, indent=2, default=str))
        else:
            for k, v in facts.items():
                print(f"{k:15s} {v}")
        return 0
    d = describe(args.name)
    if args.json:
        print(json.dumps({"name": d.name, "kind": d.kind, "kernel": d.kernel, "paper": dataclasses.asdict(d.paper),
                          "summary": d.summary, "training": d.training, "fields": d.fields}, indent=2, default=str))
    else:
        print(d)
    return 0


# -- run --------------------------------------------------------------------------------------------


def _convert(text: str, ftype) -> object:
    origin = typing.get_origin(ftype)
    if origin is typing.Union or origin is types.UnionType:
        args = [a for a in typing.get_args(ftype) if a is not type(None)]
        if text.lower() == "none":
            return None
        return _convert(text, args[0])
    if ftype is bool:
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError
    if ftype in (int, float, str):
        return ftype(text)
    return json.loads(text)


def parse_config_args(method_cls, extra: list[str]) -> dict:
    """``--field value`` / ``--field=value`` pairs after ``run NAME`` -> typed config values."""
    hints = typing.get_type_hints(method_cls.Config)
    fields = {f.name: f for f in dataclasses.fields(method_cls.Config)}
    values: dict = {}
    i = 0
    while i < len(extra):
        tok = extra[i]
        if not tok.startswith("--"):
            raise UsageError(f"unexpected argument {tok!r}")
        key, eq, val = tok[2:].partition("=")
        key = key.replace("-", "_")
        if key not in fields:
            raise UsageError(f"{method_cls.name} has no config field {key!r}; fields: {', '.join(fields)}"
                             " (see `sparseforge info " + method_cls.name + "`)")
        if not eq:
            if i + 1 >= len(extra):
                raise UsageError(f"--{key} needs a value")
            val = extra[i + 1]
            i += 1
        try:
            values[key] = _convert(val, hints[key])
        except (ValueError, json.JSONDecodeError):
            allowed = dict(fields[key].metadata)
            from .config import _describe_allowed

            raise UsageError(f"{method_cls.name}: config field '{key}' = {val!r} is invalid; allowed: "
                             f"{_describe_allowed(allowed, hints[key])}") from None
        i += 1
    return values


def cmd_run(args, extra: list[str]) -> int:
    import torch

    from .api import make_config
    from .jobs import JobSpec, run_job
    from .registry import get_method
    from .report import sparsity_report

    cls = get_method(args.name)
    cfg_values = parse_config_args(cls, extra)
    make_config(cls, **cfg_values)  # validate before any training starts
    exclude = [":last"] if args.exclude is None else [e for e in args.exclude if e != "none"]
    spec = JobSpec(args.name, cfg_values, args.model, args.data, args.epochs, args.finetune_epochs, args.lr,
                   args.seed, args.target or None, exclude, progress=not args.no_progress)
    torch.manual_seed(args.seed)
    try:
        model, result = run_job(spec)
    except RuntimeError as exc:
        if "data set" in str(exc):  # a bundled data set that is not installed here
            raise UsageError(str(exc)) from None
        raise
    dense_acc, sparse_acc = result["dense"]["accuracy"], result["sparse"]["accuracy"]
    rd, rs = result["dense"], result["sparse"]
    elapsed = result["seconds"]
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{args.name} on {args.model} / {args.data}  ({cls.stage.replace('_', '-')}; "
          f"config {json.dumps({k: v for k, v in result['config'].items() if k not in ('method', 'version')})})")
    rows = [
        ["test accuracy", f"{dense_acc:.4f}", f"{sparse_acc:.4f}", f"{sparse_acc - dense_acc:+.4f}"],
        ["weight sparsity", f"{rd['sparsity']:.4f}", f"{rs['sparsity']:.4f}", ""],
        ["weight bytes", f"{rd['weight_bytes']:,}", f"{rs['weight_bytes']:,}",
         f"{rs['weight_bytes'] / rd['weight_bytes']:.3f}x"],
    ]
    print(format_table(["", "dense", "sparse", "change"], rows, align="lrrr"))
    if args.layers:
        print()
        print(sparsity_report(model))
    print(f"\n{elapsed:.1f} s; weight bytes count each layer in its smallest format (dense, CSR or N:M)")
    return 0


# -- bench ------------------------------------------------------------------------------------------


def cmd_bench(args) -> int:
    from .bench import BenchConfig, run_bench
    from .bench.report import table, to_html, to_json
    from .registry import method_names

    methods = [m.strip() for m in args.methods.split(",")] if args.methods else None
    known = method_names()
    for m in methods or []:
        if m not in known:
            from .registry import UnknownMethodError

            raise UnknownMethodError(m, known)
    backends = tuple(b.strip() for b in args.backends.split(","))
    cfg = BenchConfig(methods=methods, backends=backends, quick=args.quick, progress=not args.no_progress)
    result = run_bench(cfg)
    print(table(result))
    if args.json:
        with open(args.json, "w") as f:
            f.write(to_json(result))
    if args.html:
        with open(args.html, "w") as f:
            f.write(to_html(result))
        print(f"report: {args.html}")
    return 0


# -- entry point ------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from .data import DATASETS, MODELS

    p = argparse.ArgumentParser(prog="sparseforge", description="Neural-network sparsity, real and measurable.",
                                allow_abbrev=False)
    sub = p.add_subparsers(dest="command", required=True)

    pl = sub.add_parser("list", help="registered methods with their papers")
    pl.add_argument("--kind", help="only methods of this kind")
    pl.add_argument("--json", action="store_true")

    pi = sub.add_parser("info", help="a method's config fields, or (no name) this build's facts")
    pi.add_argument("name", nargs="?")
    pi.add_argument("--json", action="store_true")

    pr = sub.add_parser("run", help="train a small model, apply a method, compare with dense", allow_abbrev=False,
                        description="Config fields of the method are passed as --FIELD VALUE "
                                    "(see `sparseforge info NAME`).")
    pr.add_argument("name")
    pr.add_argument("--model", default="mlp", choices=sorted(MODELS))
    pr.add_argument("--data", default="digits", choices=sorted(DATASETS))
    pr.add_argument("--epochs", type=int, default=15)
    pr.add_argument("--finetune-epochs", type=int, default=0, help="post-training methods: fine-tune after pruning")
    pr.add_argument("--lr", type=float, default=1e-3)
    pr.add_argument("--seed", type=int, default=0)
    pr.add_argument("--target", action="append", help="layer selector (glob, re:regex); repeatable")
    pr.add_argument("--exclude", action="append",
                    help="layer selector to keep dense (:first, :last, glob); repeatable. Default: :last (the "
                         "classifier, kept dense as the papers do); 'none' prunes every layer")
    pr.add_argument("--layers", action="store_true", help="also print the per-layer sparsity report")
    pr.add_argument("--json", action="store_true")
    pr.add_argument("--no-progress", action="store_true")
    pb = sub.add_parser("bench", help="every method x backend: quality, sparsity, speed vs dense", allow_abbrev=False)
    pb.add_argument("--quick", action="store_true", help="short training and a smaller speed workload")
    pb.add_argument("--methods", help="comma-separated method names (default: all registered)")
    pb.add_argument("--backends", default="cpu,reference", help="comma-separated: cpu, reference, wasm, cuda")
    pb.add_argument("--json", help="write the results as JSON to this path")
    pb.add_argument("--html", help="write an HTML report with plots to this path")
    pb.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    from .config import ConfigError
    from .registry import MethodConflictError, PluginLoadError, UnknownMethodError

    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "run":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        if args.command == "list":
            return cmd_list(args)
        if args.command == "info":
            return cmd_info(args)
        if args.command == "bench":
            return cmd_bench(args)
        return cmd_run(args, extra)
    except UnknownMethodError as exc:
        return _fail(str(exc))
    except (ConfigError, UsageError, MethodConflictError, PluginLoadError, NotImplementedError) as exc:
        return _fail(str(exc))
    except (ValueError, TypeError) as exc:
        # The library raises these for the user's own input (targets, patterns, shapes), with a message.
        return _fail(str(exc))


if __name__ == "__main__":
    sys.exit(main())
