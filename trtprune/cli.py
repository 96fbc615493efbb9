"""The command line: one subcommand per pipeline stage, and `run` for all of them.

User mistakes print one message (what, why, what to do) and exit 2 without a traceback; ``-v`` shows
the traceback and debug logs. Ctrl-C (exit 130) and SIGTERM (exit 143) stop a command cleanly: files
being written are removed, finished ones kept, so re-running resumes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import signal
import sys
import threading

from trtprune import __version__
from trtprune import commands as C
from trtprune import log as logsetup
from trtprune.config import FinetuneConfig
from trtprune.errors import USER_ERROR, TrtpruneError
from trtprune.latency.devices import DEFAULT_DEVICE, DEVICES
from trtprune.pruning.importance import IMPORTANCE
from trtprune.searching import SEARCHERS
from trtprune.signals import interrupted, on_sigterm
from trtprune.sources.models import BUILTIN
from trtprune.sources.weights import unsafe_pickle

log = logging.getLogger("trtprune")


# -- checked numbers: a value no run can use is refused while parsing (argparse's one message, exit 2) ------------
def _number(text: str, kind, what: str) -> float:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not {what}") from None
    if kind is float and not math.isfinite(value):  # nan trains to a NaN loss, inf gives "Infinity" in JSON
        raise argparse.ArgumentTypeError(f"'{text}' is not {what}: it must be a finite number")
    return value


def positive_float(text: str) -> float:
    """A finite number above 0: a learning rate, milliseconds."""
    value = _number(text, float, "a positive number")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"'{text}' is not a positive number: it must be above 0")
    return value


def finite_float(text: str) -> float:
    """A finite number; its range is checked with the setting's own message."""
    return _number(text, float, "a number")


def count(text: str) -> int:
    """A count of images that may be 0 (= all): never negative (-1 would take all images but the last)."""
    value = _number(text, int, "a whole number")
    if value < 0:
        raise argparse.ArgumentTypeError(f"'{text}' is negative: give 0 (all) or a positive count")
    return value


# -- shared option groups ---------------------------------------------------------------------------
def _common(p: argparse.ArgumentParser, top: bool = False) -> None:
    """The options every command takes, before or after its name (``trtprune -v run`` = ``trtprune run -v``):
    on the top-level parser with their defaults, on each subcommand without one (SUPPRESS), so that a value given
    before the subcommand is not reset by the subcommand's parser."""

    def default(value):
        return value if top else argparse.SUPPRESS

    p.add_argument("-v", "--verbose", action="count", default=default(0), help="more detail; -vv for debug logs")
    p.add_argument(
        "-q", "--quiet", action="store_true", default=default(False), help="warnings and errors only, no progress bars"
    )
    p.add_argument("--log-file", default=default(None), help="also append every log record (debug included) here")
    p.add_argument(
        "--json",
        action="store_true",
        default=default(False),
        help="print the command's result as JSON on stdout (its other lines go to stderr)",
    )
    p.add_argument(
        "--data",
        default=default(None),
        help="the dataset: a folder with CIFAR-10 (cifar10/) and weights/, an image folder with train/ and val/ "
        "(<class>/<image> in each), or path/file.py:function returning (train_loader, val_loader) "
        "(default: $TRTPRUNE_DATA, else the user cache, downloading what is missing)",
    )


def _model(
    p: argparse.ArgumentParser,
    weights_help: str = "checkpoint or state dict (default: the model's published weights, if it has them)",
    weights_required: bool = False,
) -> None:

    p.add_argument(
        "--model", default="resnet56", help=f"{', '.join(BUILTIN)} or path/file.py:factory (default: resnet56)"
    )
    p.add_argument("--weights", help=weights_help, required=weights_required)
    p.add_argument(
        "--input-shape",
        metavar="CxHxW",
        help="one image's shape, e.g. 3x224x224 (default: the model's own, 3x32x32 for the CIFAR models; the batch "
        "comes from the device)",
    )
    p.add_argument(
        "--mean",
        help="per-channel mean the model was trained with, e.g. 0.485,0.456,0.406 (default: "
        "the model's own, ImageNet's)",
    )
    p.add_argument("--std", help="per-channel standard deviation, e.g. 0.229,0.224,0.225 (default: the model's own)")
    p.add_argument(
        "--unsafe-pickle",
        action="store_true",
        help="also load checkpoints that need full unpickling (e.g. torch.save(model)): such a file can run "
        "code, so only for files you trust (default: weights_only loading, tensors and plain containers only)",
    )


def _task(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--task",
        metavar="NAME|FILE.py:OBJ",
        help="what the model is trained and scored for: classification (default: cross-entropy, top-1), "
        "segmentation (per-pixel cross-entropy, mIoU), or your own: path/file.py:task naming an object with "
        "loss(outputs, targets), metric(model) and optionally metric_name, distill and loaders (used when --data "
        "is not given); see the README, 'Your own task'",
    )


def _device(p: argparse.ArgumentParser) -> None:

    p.add_argument("--device", default=DEFAULT_DEVICE, help=f"{', '.join(DEVICES)} (default: {DEFAULT_DEVICE})")


def _quick(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--quick",
        dest="protocol",
        action="store_const",
        const="quick",
        default="full",
        help="profile layers with a short protocol (5 rounds, no spread): faster, noisier stairs; kept apart "
        "in the LUT from full measurements",
    )


def _pruning(p: argparse.ArgumentParser, importance: str = "fisher") -> None:

    p.add_argument(
        "--ratio",
        type=finite_float,
        default=0.5,
        help="uniform pruning: fraction of every group to remove (default 0.5)",
    )
    p.add_argument(
        "--round-to", type=int, default=8, help="uniform and flops: keep a multiple of this many channels (default 8)"
    )
    p.add_argument(
        "--importance",
        default=importance,
        choices=list(IMPORTANCE),
        help=f"which channels go, and the search's cost (default {importance}; fisher, taylor and dynamic need data)",
    )
    _ignore(p)


def _ignore(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--ignore",
        nargs="+",
        default=[],
        metavar="NAME",
        help="modules whose output channels are kept whole (names as in model.named_modules(); a container "
        "keeps every conv and linear in it; a BatchNorm, activation or pooling keeps the channels passing through it)",
    )


def _searching(p: argparse.ArgumentParser, budget: str | None = "0.5x") -> None:

    p.add_argument("--method", default="locp", choices=list(SEARCHERS), help="search (default locp)")
    one = p.add_mutually_exclusive_group()  # both given: one of them would silently win
    one.add_argument(
        "--budget",
        default=budget,
        help="latency budget as a fraction of the baseline measured on the "
        f"device, e.g. 0.5x{f' (default {budget})' if budget else ''}"
        + ("; 'none' for plain uniform pruning by --ratio" if budget else ""),
    )
    one.add_argument(
        "--budget-ms", type=finite_float, help="latency budget in milliseconds instead (not with --budget)"
    )
    p.add_argument("--lut", help="latency table (default: lut.sqlite in the user cache)")
    p.add_argument(
        "--floor",
        type=positive_float,
        default=0.1,
        help="every group keeps at least this fraction of its channels (default 0.1)",
    )
    p.add_argument(
        "--rank",
        default="",
        metavar="CRITERION:FLOOR,...",
        help="accuracy inside the search: the plans of these variants of the search's cost (importance criterion "
        "and floor, e.g. fisher:0.1,taylor:0.25) are ranked with its own by the adaptive-BN proxy on held-out "
        "training images, and the best is measured (locp, knapsack, lap; default: none)",
    )
    p.add_argument(
        "--no-depth",
        dest="depth",
        action="store_false",
        help="keep every residual block: prune channels only (by default locp, knapsack and lap first remove "
        "whole blocks, chosen by the accuracy proxy per millisecond saved, while the network stays above the "
        "budget; see trtprune.searching.depth)",
    )
    p.add_argument(
        "--stairs-from",
        default="layers",
        choices=["layers", "engine"],
        help="candidates from the stairs of single layers in the latency table (default), or, on TensorRT, from "
        "the per-layer profiles of whole-model engines (one engine build per count searched: hours for a large "
        "model on a Jetson)",
    )


CALIB_HELP = (
    "calibration images: a folder of images at the model's input size (e.g. calib/), a .txt list of image files, "
    "or a .npy/.npz of uint8 NHWC images (see trtprune/deploy/quantize.py); default: the training set"
)


def _calibration(p: argparse.ArgumentParser) -> None:
    """Where an int8 device's delivered model is calibrated (ignored by other devices)."""
    p.add_argument("--calib", help=f"int8 devices: {CALIB_HELP}")
    p.add_argument(
        "--calib-images", type=int, default=512, help="int8 devices: calibration images to use (default 512)"
    )


def _finetuning(p: argparse.ArgumentParser, distill: float = 0.0) -> None:

    d = FinetuneConfig(distill=distill)
    p.add_argument("--epochs", type=int, default=d.epochs, help=f"fine-tuning epochs (default {d.epochs})")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help=f"training batch (default {d.batch_size})")
    p.add_argument("--lr", type=positive_float, default=d.lr, help=f"peak learning rate, cosine decay (default {d.lr})")
    p.add_argument(
        "--distill",
        type=finite_float,
        default=d.distill,
        help=f"weight of distillation from the unpruned model, 0..1 (default {d.distill}; 0 = off)",
    )
    p.add_argument("--train-limit", type=count, default=0, help="train on the first N images only (default: all)")
    layout = p.add_mutually_exclusive_group()
    layout.add_argument("--channels-last", action="store_true", help="train in NHWC memory format")
    layout.add_argument("--no-channels-last", action="store_true", help="train in NCHW memory format")
    p.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16"),
        default="auto",
        help="training arithmetic: bf16 autocast, fp32, or auto = the faster of fp32 and bf16 (where the CPU or "
        "GPU computes bf16 natively), timed on the first batch; without --channels-last / --no-channels-last "
        "the faster layout is timed too (default)",
    )
    p.add_argument(
        "--train-device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="where to fine-tune: an NVIDIA GPU (cuda; one per process with --nproc/torchrun), the CPU, or auto = "
        "the GPU when torch sees one (default)",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the models being trained and distilled from: a few minutes to compile, then faster "
        "steps (see docs/benchmarks.md, make bench-finetune); for runs of several epochs",
    )
    p.add_argument(
        "--recalibrate",
        type=count,
        default=d.recalibrate,
        help="training images that re-estimate the BatchNorm statistics of the pruned model before the first step "
        f"(default {d.recalibrate}; 0 = off)",
    )
    p.add_argument(
        "--warmup",
        type=finite_float,
        default=d.warmup,
        help=f"epochs of linear learning-rate warm-up before the cosine decay (default {d.warmup:g})",
    )
    p.add_argument("--seed", type=int, default=0)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="trtprune",
        description="Prune CNNs onto the latency stairs of the device "
        "they run on. Start with: trtprune run --model resnet56 --device cpu",
        epilog="exit status: 0 done; 2 a usage or input error (one message, nothing half-written); 3 the delivered "
        "model misses its latency budget; 4 top-1 dropped more than --max-top1-drop (7: both); 130/143 interrupted",
    )
    ap.add_argument("--version", action="version", version=f"trtprune {__version__}")
    _common(ap, top=True)
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name, fn, help_):
        p = sub.add_parser(name, help=help_, description=help_)
        _common(p)
        p.set_defaults(fn=fn)
        return p

    add("list", C.cmd_list, "list models, devices, backends and importance criteria")
    p = add("groups", C.cmd_groups, "list the prunable channel groups of a model")
    _model(p, "checkpoint (default: random weights; groups do not depend on weights)")
    _ignore(p)
    p = add("export", C.cmd_export, "export a model to ONNX (static batch, simplified, checked against torch)")
    _model(p)
    _device(p)
    p.add_argument("--batch", type=int, help="static batch (default: the device's)")
    p.add_argument("-o", "--output", required=True, help="ONNX file to write")
    p = add("quantize", C.cmd_quantize, "INT8: an fp32 ONNX model -> Q/DQ ONNX, calibrated on images (calib/)")
    _model(p)
    p.add_argument("onnx", help="the fp32 ONNX model (from export or build)")
    p.add_argument("--calib", help=CALIB_HELP)
    p.add_argument("-n", "--images", type=int, default=512, help="calibration images to use (default 512)")
    p.add_argument("--method", choices=("minmax", "entropy", "percentile"), default="minmax")
    p.add_argument(
        "--target",
        choices=("tensorrt", "ort"),
        default="tensorrt",
        help="tensorrt: symmetric int8 Q/DQ for TensorRT's explicit quantization (default); ort: ONNX Runtime's "
        "faster CPU form (uint8 activations), which TensorRT does not accept",
    )
    p.add_argument("-o", "--output", required=True, help="INT8 ONNX file to write")
    p = add("measure", C.cmd_measure, "time ONNX models on a device, side by side in one interleaved run")
    p.add_argument("onnx", nargs="+", help="ONNX files (the first is the reference for speed-ups)")
    _device(p)
    p.add_argument("--rounds", type=int, default=30, help="interleaved rounds (default 30)")
    p.add_argument("--json-file", help="also write the figures to this JSON file")
    p = add("eval", C.cmd_eval, "top-1 accuracy of a model (torch) or of an ONNX file (ONNX Runtime)")
    _model(p)
    p.add_argument("--onnx", help="evaluate this ONNX file instead (its --model gives the normalisation)")
    p.add_argument("--split", default="test", choices=["test", "train"])
    p.add_argument("--limit", type=count, default=0, help="first N images only (default: all)")
    _task(p)
    p = add("profile", C.cmd_profile, "measure how each channel group's latency moves with its channels (LUT)")
    _model(p, "checkpoint (optional: latency does not depend on the weights)")
    _device(p)
    p.add_argument("--lut", help="latency table (default: lut.sqlite in the user cache)")
    p.add_argument(
        "--method",
        default="auto",
        choices=["auto", "three_point", "exhaustive"],
        help="stair search: three_point (few counts: for engines whose points are builds), exhaustive (every "
        "count, in big batches of shared points: faster where a point is cheap); auto (default): three_point "
        "on TensorRT devices, else exhaustive",
    )
    p.add_argument("--rel", type=finite_float, default=0.01, help="latencies within this fraction are the same (0.01)")
    p.add_argument(
        "--from",
        dest="source",
        default="layers",
        choices=["layers", "engine"],
        help="'layers' (default): single-layer models timed into the LUT; 'engine' (TensorRT): the per-layer "
        "profile of the whole model's engine with the group at each count searched - the layer as it runs among "
        "its neighbours, at one whole-model engine build per count",
    )
    p.add_argument("--out", help="output folder (default: profiles/<model>-<device>)")
    p.add_argument("--no-plots", action="store_true", help="skip the per-group PNG plots")
    _quick(p)
    p.add_argument(
        "--ray",
        metavar="local|auto|ADDRESS",
        help="measure on Ray workers, one per device (custom resource named like the device); 'local' starts "
        "a cluster on this machine, 'auto' joins this machine's cluster, else HOST:6379 or ray://HOST:10001",
    )
    p.add_argument(
        "--ray-workers",
        type=int,
        metavar="N",
        help="with --ray local: workers to start (default: cores / device threads)",
    )
    p = add("search", C.cmd_search, "search per-group channel counts that meet a latency budget on the device")
    _model(p)
    _device(p)
    _searching(p, budget=None)
    _quick(p)
    _pruning(p)
    _task(p)
    p.add_argument("-o", "--output", required=True, help="plan to write (.json)")
    p = add("prune", C.cmd_prune, "prune to a plan (from trtprune search), or every group by a uniform ratio")
    _model(p)
    _pruning(p)
    p.add_argument("--plan", help="plan to apply (default: uniform pruning by --ratio)")
    _task(p)
    p.add_argument("-o", "--output", required=True, help="pruned checkpoint to write (.pt); the plan goes beside it")
    p = add("finetune", C.cmd_finetune, "fine-tune a (pruned) checkpoint; a checkpoint is written every epoch")
    _model(p, "the checkpoint to fine-tune (e.g. from trtprune prune)", weights_required=True)
    _finetuning(p)
    p.add_argument("--teacher", help="unpruned weights to distil from (with --distill)")
    _task(p)
    p.add_argument("--eval-limit", type=count, default=0, help="evaluate on the first N test images (default: all)")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint at -o")
    p.add_argument(
        "--nproc",
        type=int,
        default=1,
        help="train in N processes on this machine with torch.distributed (DDP, gloo); the global batch stays "
        "--batch-size, split among them (default 1; leave it out under torchrun, which starts the processes)",
    )
    p.add_argument("-o", "--output", required=True, help="checkpoint to write")
    p = add("build", C.cmd_build, "build the deployable model for a device (ONNX for ONNX Runtime devices)")
    _model(p, "the (pruned, fine-tuned) checkpoint", weights_required=True)
    _device(p)
    _calibration(p)
    p.add_argument("-o", "--output", help="default: engines/<model>-<device>.onnx (.plan for TensorRT devices)")
    p = add("report", C.cmd_report, "re-measure and rewrite the report of a finished run")
    p.add_argument("run_dir", help="runs/<name>")
    p.add_argument("--engines-dir", default="engines")
    _gate(p)
    p = add("run", C.cmd_run, "export, search, prune, fine-tune, build and report, in a run directory (resumable)")
    _model(p)
    _device(p)
    _searching(p)
    _pruning(p)
    _finetuning(p, distill=0.5)  # the unpruned model is at hand: distilling from it recovers accuracy faster
    _calibration(p)
    _task(p)
    p.add_argument("--eval-limit", type=count, default=0, help="evaluate on the first N test images (default: all)")
    p.add_argument(
        "--name",
        help="run name: the run goes to <runs-dir>/<name>, the engine to <engines-dir>/<name>.onnx (or .plan) "
        "(default: <model>-<device>; for a user factory f.py:make, f.make-<device>)",
    )
    p.add_argument("--runs-dir", default="runs", help="where run directories go (default: runs)")
    p.add_argument("--engines-dir", default="engines", help="where deployable models go (default: engines)")
    p.add_argument("--fresh", action="store_true", help="discard the run's earlier outputs and start over")
    _gate(p)
    return ap


def _gate(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--max-top1-drop",
        type=finite_float,
        metavar="POINTS",
        help="exit with status 4 when the pruned model's top-1 is more than this many points below the baseline's",
    )


def main(argv: list[str] | None = None) -> int:

    args = parser().parse_args(argv)
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, on_sigterm) if in_main_thread else None
    status = 0
    try:
        C.check_outputs(args)  # before the log file is opened: --log-file may not be an input either
        logsetup.setup(args.verbose, args.quiet, args.log_file)
        scope = contextlib.nullcontext()
        if getattr(args, "unsafe_pickle", False):
            scope = unsafe_pickle()
        with scope:
            if args.json:  # the result alone on stdout, for scripts; the human lines on stderr
                with contextlib.redirect_stdout(sys.stderr):
                    result = args.fn(args)
                print(json.dumps(result if result is not None else {}, indent=2, default=str))
            else:
                result = args.fn(args)
        if isinstance(result, dict):
            status = int(result.get("exit_status", 0))
    except TrtpruneError as e:
        if args.verbose:
            log.exception("details")
        print(f"trtprune {args.command}: error: {e}", file=sys.stderr)
        return USER_ERROR
    except OSError as e:  # a path that cannot be read or written (missing folder, a file in the way, no space)
        if args.verbose:
            log.exception("details")
        where = f": '{e.filename}'" if e.filename else ""
        print(
            f"trtprune {args.command}: error: {e.strerror or e}{where}\n"
            "  fix: check the paths given and that their folders exist and can be written (-v shows where)",
            file=sys.stderr,
        )
        return USER_ERROR
    except KeyboardInterrupt as e:
        return interrupted(args.command, e)
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
    return status


if __name__ == "__main__":
    sys.exit(main())
