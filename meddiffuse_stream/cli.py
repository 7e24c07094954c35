"""The ``meddiffuse-stream`` command: one subcommand per job, each ending with a summary."""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Sequence
from typing import Any

from ._version import __version__
from .convert import FORMATS, FRAME_CHOICES, ConversionError, ConvertOptions, convert_dataset
from .convert.base import DEFAULT_MAX_FILE_BYTES, DEFAULT_MAX_PIXELS, SourceFormat
from .convert.splits import parse_split_spec
from .geometry import GEOMETRY_MODES
from .jobs.augment_options import add_augment_options, stage_from_args
from .jobs.demo_data import MODALITIES, DemoSource
from .storage import StorageError, parse_storage_options
from .user_errors import one_line_error

__all__ = ["build_parser", "main"]

_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12, "ki": 1024, "mi": 1024**2, "gi": 1024**3}


def parse_bytes(text: str) -> int:
    """``"512MB"``, ``"1GiB"``, ``"1000000"`` → bytes."""
    match = _SIZE.match(text.strip())
    unit = (match.group(2) or "").lower().removesuffix("b") if match else None
    if match is None or unit not in _UNITS:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size such as 256MB or 1GiB")
    return int(float(match.group(1)) * _UNITS[unit])


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's default in ``--help``, without repeating "None" for options that have none."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False, [], argparse.SUPPRESS):
            return action.help
        return super()._get_help_string(action)


def _command(commands: Any, name: str, help_text: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = commands.add_parser(name, formatter_class=_HelpFormatter, help=help_text)
    return parser


def _common_shard_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, default=0, help="seed of the split and the order within shards")
    parser.add_argument("--workers", type=int, default=1, help="processes encoding shards in parallel")
    parser.add_argument("--shard-size", type=int, default=1000, help="samples per shard at most")
    parser.add_argument(
        "--shard-bytes",
        type=parse_bytes,
        default="1GiB",
        help="bytes per shard at most, estimated from the inputs' sizes",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    _storage_option(parser, "SRC and OUT")


def _storage_option(parser: argparse.ArgumentParser, what: str) -> None:
    """``--storage-option NAME=VALUE`` (repeatable) on every command that reads or writes storage."""
    parser.add_argument(
        "--storage-option",
        action="append",
        metavar="NAME=VALUE",
        help=f"fsspec option for {what}, e.g. endpoint_url=http://127.0.0.1:8333 (repeatable); "
        "credentials are better left to AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="meddiffuse-stream", description=__doc__, formatter_class=_HelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    shard = commands.add_parser(
        "shard", formatter_class=_HelpFormatter, help="convert a dataset into WebDataset shards"
    )
    shard.add_argument("format", choices=sorted(FORMATS))
    shard.add_argument("src", help="source folder (or manifest file for csv); a local path or fsspec URL")
    shard.add_argument("out", help="output dataset folder; a local path or fsspec URL such as s3://bucket/name")
    shard.add_argument(
        "--split",
        help="patient-level split fractions, default train=0.8,val=0.1,test=0.1; 'official' keeps the release's",
    )
    shard.add_argument("--extra-splits", metavar="NAMES", help="split names beyond train,val,test, e.g. calib")
    shard.add_argument("--resize", type=int, help="resize every image (and ROI) to N x N pixels (see --resize-mode)")
    shard.add_argument(
        "--resize-mode",
        choices=GEOMETRY_MODES,
        default="crop",
        help="with --resize: crop (cover N x N, cut the centre: no distortion, borders lost), letterbox (fit inside, "
        "pad with zeros: nothing lost) or stretch (each side to N: the anatomy distorted); as the loader's resize_mode",
    )
    shard.add_argument(
        "--channels", type=int, choices=[1, 3], help="convert every image to 1 (grey, BT.601 luma) or 3 (RGB) channels"
    )
    shard.add_argument(
        "--frames",
        choices=FRAME_CHOICES,
        default="middle",
        help="multi-frame DICOM and multi-page images: keep the middle frame, every frame "
        "as its own sample, or reject the file",
    )
    shard.add_argument(
        "--max-pixels",
        type=int,
        default=DEFAULT_MAX_PIXELS,
        help="pixels per input (all kept frames), checked from headers before decoding",
    )
    shard.add_argument(
        "--max-file-bytes",
        type=parse_bytes,
        default=f"{DEFAULT_MAX_FILE_BYTES >> 30}GiB",
        help="largest input file read; larger files are rejected unread",
    )
    shard.add_argument("--name", help="dataset name recorded in dataset.json")
    shard.add_argument("--no-window", action="store_true", help="DICOM: keep stored values, skip the VOI window")
    for name, source_format in sorted(FORMATS.items()):
        source_format.add_cli_options(shard.add_argument_group(f"{name} options"))
    _common_shard_options(shard)
    shard.set_defaults(handler=_run_shard)

    demo = commands.add_parser(
        "demo-data", formatter_class=_HelpFormatter, help="build the lesion-insertion demo dataset on real anatomy"
    )
    demo.add_argument("out", help="output dataset folder (local path or fsspec URL)")
    demo.add_argument("--n", type=int, default=2000, help="number of samples")
    demo.add_argument("--size", type=int, default=64, help="image side in pixels")
    demo.add_argument(
        "--test-modality",
        choices=sorted(MODALITIES),
        help="domain-shift split: this modality alone is the test split, the others train and val",
    )
    demo.add_argument(
        "--shortcut",
        type=float,
        help="the shortcut phantom: every packaged scan, splits by scan, a background cue on this share of lesion "
        "images (and 1 - it of the others) in train/val, reversed in test",
    )
    demo.add_argument("--scans-dir", help="shortcut phantom: a folder of further source scans (DICOM or PNG)")
    demo.add_argument(
        "--findings",
        type=int,
        help="the multi-label phantom: K findings (1-3 of nodule, band_opacity, line_artefact) co-occurring at set "
        "rates, each with its own ROI (rois.png), split by scan like the shortcut phantom (docs/multilabel.md)",
    )
    _common_shard_options(demo)
    demo.set_defaults(handler=_run_demo)

    train = commands.add_parser(
        "train-diffusion",
        formatter_class=_HelpFormatter,
        help="train the built-in class-conditional diffusion generator",
    )
    train.add_argument("dataset", help="shard dataset folder or URL")
    train.add_argument("out", help="folder to save the generator in (save_pretrained)")
    train.add_argument("--epochs", type=int, default=5)
    train.add_argument("--batch-size", type=int, default=64)
    train.add_argument("--lr", type=float, default=2e-3)
    train.add_argument("--width", type=int, default=32, help="UNet base channels")
    train.add_argument("--strength", type=float, default=0.5, help="SDEdit noise strength used when generating")
    train.add_argument("--steps", type=int, default=10, help="DDIM steps used when generating")
    train.add_argument("--crop", type=int, help="train on random N x N crops (faster; generates at full size)")
    train.add_argument("--ema", type=float, default=0.995, help="decay of the saved moving average of the weights")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--workers", type=int, default=0)
    train.add_argument("--device", help="cpu or cuda (default: cuda when present)")
    train.add_argument("--quiet", action="store_true")
    _storage_option(train, "the dataset")
    train.set_defaults(handler=_run_train_diffusion)

    warm = commands.add_parser(
        "warm-cache", formatter_class=_HelpFormatter, help="precompute diffusion variants into the variant cache"
    )
    warm.add_argument("dataset", help="shard dataset folder or URL")
    warm.add_argument("--generator", required=True, help="generator folder (train-diffusion output or diffusers)")
    warm.add_argument("--cache", required=True, help="variant cache folder or URL")
    warm.add_argument("--variants", type=int, default=2, help="variants per sample (M; the stage's --variants)")
    warm.add_argument("--index", type=int, help="this part (default JOB_COMPLETION_INDEX, else RANK, else 0)")
    warm.add_argument("--count", type=int, help="number of parts (default JOB_COMPLETIONS, else WORLD_SIZE, else 1)")
    warm.add_argument("--split", help="split to warm (default train; none for shards without splits)")
    warm.add_argument("--batch-size", type=int, default=64)
    warm.add_argument("--variant-seed", type=int, default=0, help="must match the AugmentStage's variant_seed")
    warm.add_argument("--device", help="cpu or cuda (default: cuda when present)")
    warm.add_argument("--quiet", action="store_true")
    _storage_option(warm, "the dataset and the variant cache")
    warm.set_defaults(handler=_run_warm_cache)

    fit = commands.add_parser(
        "train", formatter_class=_HelpFormatter, help="train a classifier (alone or under torchrun)"
    )
    fit.add_argument("dataset", help="shard dataset folder or URL")
    fit.add_argument("--out", required=True, help="folder for checkpoint.pt and metrics.json")
    fit.add_argument("--model", default="cnn", choices=["cnn", "cnn-small", "resnet18", "vit-tiny"])
    fit.add_argument(
        "--augment",
        default="standard",
        help="a method of meddiffuse_stream.augment.METHODS (none, standard, keepaugment, dafusion, meddiffusemix, "
        "...) or a preset such as meddiffusemix-hard-mask",
    )
    fit.add_argument("--epochs", type=int, default=5)
    fit.add_argument("--steps", type=int, help="optimizer steps to make (overrides --epochs; the last epoch is cut)")
    fit.add_argument("--batch-size", type=int, default=64)
    fit.add_argument("--lr", type=float, default=1e-3)
    fit.add_argument(
        "--loss",
        default="ce",
        choices=["ce", "weighted"],
        help="ce: cross-entropy, or masked BCE-with-logits for a multi-label dataset; weighted: inverse class "
        "frequency (multi-label: pos_weight = negatives / positives per finding)",
    )
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument("--workers", type=int, default=0)
    fit.add_argument(
        "--loader-dtype",
        default="float32",
        choices=["float32", "uint8", "uint16"],
        help="what the loader's workers deliver: uint8/uint16 move 1/4 (1/2) of the bytes and are "
        "converted to float on the training device",
    )
    fit.add_argument("--checkpoint-every", type=int, default=0, help="steps between checkpoints (and every epoch)")
    fit.add_argument("--train-fraction", type=float, default=1.0, help="train on this patient-level fraction")
    fit.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt exactly")
    fit.add_argument("--device", help="cpu or cuda (default: cuda when present)")
    fit.add_argument("--shard-cache", help="local folder caching remote shards across epochs and restarts")
    fit.add_argument("--shard-cache-bytes", type=parse_bytes, default="50GiB", help="shard cache limit")
    add_augment_options(fit)
    fit.add_argument("--key-log", action="store_true", help="write the keys each rank trained on")
    fit.add_argument("--min-val-auc", type=float, help="fail (exit 1, model kept) if the val AUC ends below this")
    fit.add_argument("--quiet", action="store_true", help="no progress bar")
    _storage_option(fit, "the dataset and the variant cache")
    fit.add_argument(
        "--deterministic",
        action="store_true",
        help="deterministic kernels (slower): a resumed CUDA run ends bit-equal to an uninterrupted one",
    )
    fit.set_defaults(handler=_run_train)

    show = commands.add_parser(
        "preview", formatter_class=_HelpFormatter, help="a picture of what an augmentation does to real samples"
    )
    show.add_argument("dataset", help="shard dataset folder or URL")
    show.add_argument("--augment", default="meddiffusemix")
    show.add_argument("-n", type=int, default=16, help="samples to show")
    show.add_argument("-o", "--output", required=True, help="PNG file to write")
    show.add_argument("--split", help="split to show (default train; none for shards without splits)")
    show.add_argument("--seed", type=int, default=0)
    _storage_option(show, "the dataset and the variant cache")
    add_augment_options(show)
    show.set_defaults(handler=_run_preview)

    index = commands.add_parser(
        "index", formatter_class=_HelpFormatter, help="write a shard index for WebDataset shards written by anyone"
    )
    index.add_argument(
        "src", help="folder or prefix of .tar / .tar.gz / .tgz shards, a glob or a brace pattern (local or URL)"
    )
    index.add_argument(
        "--out",
        help="where to write it: a .json path or a folder (default SRC/shardindex.json); "
        "elsewhere for a bucket you cannot write, then pass that file to the loader",
    )
    index.add_argument("--name", help="dataset name recorded in the index")
    index.add_argument("--workers", type=int, default=4, help="shards read at once")
    index.add_argument("--quiet", action="store_true", help="no progress bar")
    _storage_option(index, "SRC and OUT")
    index.add_argument(
        "--link-root", help="follow shards that are symbolic links into this folder (default: SRC's folder only)"
    )
    index.set_defaults(handler=_run_index)

    runner = commands.add_parser(
        "experiment", formatter_class=_HelpFormatter, help="methods x seeds on one dataset: results.csv, table, plots"
    )
    runner.add_argument("config", help="experiment YAML (dataset, out, methods, seeds, epochs, teacher, ...)")
    runner.set_defaults(handler=_run_experiment)
    return parser


def _options(args: argparse.Namespace, **extra) -> ConvertOptions:
    return ConvertOptions(
        seed=args.seed, workers=args.workers, shard_size=args.shard_size, shard_bytes=args.shard_bytes, **extra
    )


def _run_shard(args: argparse.Namespace) -> int:
    extra = tuple(s.strip() for s in args.extra_splits.split(",") if s.strip()) if args.extra_splits else ()
    splits = parse_split_spec(args.split, extra) if args.split else None
    limits = {"max_pixels": args.max_pixels, "max_file_bytes": args.max_file_bytes}
    options = _options(
        args,
        splits=splits,
        resize=args.resize,
        resize_mode=args.resize_mode,
        name=args.name,
        frames=args.frames,
        channels=args.channels,
        **limits,
    )
    summary = convert_dataset(
        FORMATS[args.format].from_cli(args),
        args.src,
        args.out,
        options,
        storage_options=parse_storage_options(args.storage_option),
        progress=not args.quiet,
    )
    print(summary.table())
    return 0


def _run_demo(args: argparse.Namespace) -> int:
    source: SourceFormat = DemoSource(
        n=args.n,
        size=args.size,
        seed=args.seed,
        test_modality=args.test_modality,
        shortcut=args.shortcut,
        scans_dir=args.scans_dir,
    )
    if args.findings is not None:
        if args.shortcut is not None or args.test_modality:
            raise ValueError("--findings builds the multi-label phantom: leave out --shortcut and --test-modality")
        from .jobs.demo_findings import FindingsSource

        source = FindingsSource(
            n=args.n, size=args.size, seed=args.seed, findings=args.findings, scans_dir=args.scans_dir
        )
    summary = convert_dataset(
        source,
        None,
        args.out,
        _options(args, name="demo"),
        storage_options=parse_storage_options(args.storage_option),
        progress=not args.quiet,
    )
    print(summary.table())
    return 0


def _run_train_diffusion(args: argparse.Namespace) -> int:
    from .jobs.train_generator import train_generator

    result = train_generator(
        args.dataset,
        args.out,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        width=args.width,
        strength=args.strength,
        steps=args.steps,
        crop=args.crop,
        ema=args.ema,
        seed=args.seed,
        num_workers=args.workers,
        device=args.device,
        storage_options=parse_storage_options(args.storage_option),
        progress=not args.quiet,
    )
    print(
        f"trained {result['batches']} batches: loss {result['first_loss']:.4f} -> {result['final_loss']:.4f}; "
        f"saved to {args.out}"
    )
    return 0


def _run_warm_cache(args: argparse.Namespace) -> int:
    from .jobs.warm_cache import warm_cache

    totals = warm_cache(
        args.dataset,
        args.generator,
        args.cache,
        variants=args.variants,
        index=args.index,
        count=args.count,
        split=args.split,
        batch_size=args.batch_size,
        variant_seed=args.variant_seed,
        device=args.device,
        storage_options=parse_storage_options(args.storage_option),
        progress=not args.quiet,
    )
    print(f"samples {totals['samples']}  generated {totals['generated']}  already cached {totals['already_cached']}")
    return 0


def _configured_stage(args: argparse.Namespace):
    from .jobs.train import training_device

    # the device training will use (cuda:LOCAL_RANK under torchrun), not CUDA's current device: every rank's
    # stage would otherwise run on cuda:0
    device = str(training_device(args.device))
    stage = stage_from_args(
        args, args.dataset, device=device, storage_options=parse_storage_options(args.storage_option)
    )
    return None if stage is None or isinstance(stage, str) else stage


def _run_train(args: argparse.Namespace) -> int:
    from .jobs.train import TrainConfig, train

    config = TrainConfig(
        args.dataset,
        args.out,
        model=args.model,
        augment=args.augment,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        loss=args.loss,
        seed=args.seed,
        num_workers=args.workers,
        checkpoint_every=args.checkpoint_every,
        resume=args.resume,
        device=args.device,
        key_log=args.key_log,
        augment_stage=_configured_stage(args),
        train_fraction=args.train_fraction,
        cache_dir=args.shard_cache,
        cache_bytes=args.shard_cache_bytes,
        min_val_auc=args.min_val_auc,
        progress=not args.quiet,
        deterministic=args.deterministic,
        loader_dtype=args.loader_dtype,
        steps=args.steps,
        storage_options=parse_storage_options(args.storage_option),
    )
    results = train(config)
    if int(os.environ.get("RANK", "0")) == 0:
        from .jobs.metrics import metrics_table

        table = metrics_table(results)
        print(f"{table}\n" if table else "", end="")
        print(f"{results['steps']} steps; metrics in {args.out}/metrics.json")
    return 0


def _run_preview(args: argparse.Namespace) -> int:
    from .jobs.preview import render_preview
    from .loader import MedDiffuseLoader

    options = parse_storage_options(args.storage_option)
    stage = stage_from_args(args, args.dataset, storage_options=options) or args.augment
    with MedDiffuseLoader(
        args.dataset,
        args.n,
        split=args.split,
        seed=args.seed,
        augment=stage,
        as_dict=True,
        shuffle=True,
        storage_options=options,
    ) as loader:
        batch = next(iter(loader))
        names = list(loader.dataset.class_names)
    path = render_preview(batch, names, args.output, args.augment)
    print(f"wrote {path} ({len(batch['image'])} samples, augment={args.augment})")
    return 0


def _run_index(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from .shardfmt.indexer import build_shard_index

    with tqdm(unit="shard", desc="index", disable=args.quiet) as bar:
        summary = build_shard_index(
            args.src,
            args.out,
            name=args.name,
            workers=args.workers,
            storage_options=parse_storage_options(args.storage_option),
            progress=bar.update,  # type: ignore[arg-type]  # tqdm's update returns a bool nobody reads
            link_root=args.link_root,
        )
    print(summary.table())
    return 0


def _run_experiment(args: argparse.Namespace) -> int:
    from .jobs.experiment import run_experiment

    out = run_experiment(args.config)
    print((out / "results.md").read_text())
    print(f"results.csv, metrics.png and evidence.png are in {out}")
    return 0


_ONE_LINE = (ConversionError, StorageError, ValueError, FileNotFoundError, PermissionError, NotImplementedError)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except _ONE_LINE as error:  # a StorageError's chained client exception is for debuggers, not printed
        print(f"meddiffuse-stream {args.command}: error: {' '.join(str(error).split())}", file=sys.stderr)
        return 1
    except Exception as error:  # the environment (disk, network, storage): one line; a bug keeps its traceback
        message = one_line_error(error)
        if message is None:
            raise
        print(f"meddiffuse-stream {args.command}: error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
