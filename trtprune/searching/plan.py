"""Plans (absolute channel counts per group) and latency budgets."""

from __future__ import annotations

import json
import math
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

from trtprune.errors import TrtpruneError
from trtprune.fsutil import write_json

PLAN_FORMAT = "trtprune.plan/1"


@dataclass(frozen=True)
class Budget:
    """A latency budget: a fraction of the baseline measured on the device, or milliseconds."""

    SLACK = 0.01  # measured up to 1 % above the budget counts as meeting it: whole-network measurement noise
    BAND = 0.03  # a plan measured more than 3 % under the budget leaves latency unspent: searches give it back

    fraction: float | None = None
    ms: float | None = None

    @classmethod
    def parse(cls, text: str | None = None, ms: float | None = None) -> Budget:
        """``"0.5x"`` (or ``"0.5"``) of the baseline, or ``ms`` milliseconds; exactly one of them."""
        if (text is None) == (ms is None):
            raise TrtpruneError("give one latency budget", fix="use --budget 0.5x (of the baseline) or --budget-ms 1.2")
        if ms is not None:
            if not 0 < ms < math.inf:  # nan, inf: a plan for "any latency" would be empty, with Infinity in its JSON
                raise TrtpruneError(f"--budget-ms {ms} is not a latency", fix="give milliseconds > 0, e.g. 1.2")
            return cls(ms=float(ms))
        fraction = _fraction(str(text))
        if fraction is None and _fraction(str(text).strip().removeprefix("-")) is not None:
            raise TrtpruneError(
                f"budget '{str(text).strip()}' is negative",
                why="a budget is a fraction of the unpruned latency, between 0 and 1",
                fix="use e.g. --budget 0.5x",
            )
        if fraction is None:
            raise TrtpruneError(f"cannot read the budget '{text}'", fix="write a fraction of the baseline, e.g. 0.5x")
        if not 0 < fraction < 1:
            raise TrtpruneError(
                f"budget {fraction}x is not below the baseline",
                why="a budget is a fraction of the unpruned latency, between 0 and 1",
                fix="use e.g. --budget 0.5x",
            )
        return cls(fraction=fraction)

    @classmethod
    def from_text(cls, text: str | None) -> Budget | None:
        """A budget in its one text form (``str(budget)``): ``"0.5x"`` of the baseline or ``"1.2 ms"``
        (``"1.2ms"`` too); None (or "none") for none."""
        if text is None or str(text).strip().lower() == "none":
            return None
        text = str(text).strip()
        if text.endswith("ms"):
            try:
                ms = float(text[:-2])
            except ValueError:
                raise TrtpruneError(f"cannot read the budget '{text}'", fix="write milliseconds, e.g. 1.2ms") from None
            return cls.parse(ms=ms)
        return cls.parse(text)

    def target_ms(self, baseline_ms: float) -> float:
        return self.ms if self.ms is not None else self.fraction * baseline_ms

    def met(self, measured_ms: float, baseline_ms: float, slack: float = SLACK) -> bool:
        """Whether ``measured_ms`` meets the budget, the baseline measured in the same run."""
        return measured_ms <= self.target_ms(baseline_ms) * (1 + slack)

    def __str__(self) -> str:
        return f"{self.fraction:g}x" if self.fraction is not None else f"{self.ms:g} ms"


def _fraction(text: str) -> float | None:
    """The number of a budget like "0.5x", "0.5" or "1e-3x" (any float written without a sign, the x optional);
    None if it is no such number (nan too: it meets no comparison)."""
    text = text.strip()
    text = text[:-1].strip() if text.lower().endswith("x") else text
    try:
        value = float(text)
    except ValueError:
        return None
    return None if math.isnan(value) or text[:1] in "+-_" or "_" in text else value


@dataclass
class Plan:
    """What a search decided: channels to keep per group, and the latency it expects and measured."""

    model: str
    device: str
    method: str
    budget: str
    keep_channels: dict[str, int]
    channels: dict[str, int]  # the unpruned counts, for reference
    lut_key: str = ""
    baseline_ms: float | None = None  # measured, in the same run as measured_ms
    predicted_ms: float | None = None
    measured_ms: float | None = None
    meta: dict = field(default_factory=dict)
    # residual blocks removed whole before the channels are pruned (trtprune.pruning.blocks); keep_channels and
    # channels are the groups of the network without them
    remove_blocks: list[str] = field(default_factory=list)

    def _wrong_types(self) -> list[str]:
        def counts(d) -> bool:
            return isinstance(d, dict) and all(
                isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) for k, v in d.items()
            )

        def ms(v) -> bool:
            return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))

        checks = {
            **{k: isinstance(getattr(self, k), str) for k in ("model", "device", "method", "budget", "lut_key")},
            "keep_channels": counts(self.keep_channels),
            "channels": counts(self.channels),
            **{k: ms(getattr(self, k)) for k in ("baseline_ms", "predicted_ms", "measured_ms")},
            "meta": isinstance(self.meta, dict),
            "remove_blocks": isinstance(self.remove_blocks, list)
            and all(isinstance(b, str) for b in self.remove_blocks),
        }
        return [k for k, ok in checks.items() if not ok]

    def save(self, path: str | Path) -> None:
        write_json(path, {"format": PLAN_FORMAT, **asdict(self)})

    @classmethod
    def _check_fields(cls, path: Path, d: dict) -> None:
        """The plan's top-level fields are the Plan's: an unknown one (a typo, a hand edit) or a missing one named."""
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(k for k in d if k not in known)
        required = [n for n, f in known.items() if f.default is MISSING and f.default_factory is MISSING]
        missing = [n for n in required if n not in d]
        if unknown or missing:
            said = [f"unknown field(s) {', '.join(map(repr, unknown))}"] if unknown else []
            said += [f"missing field(s) {', '.join(map(repr, missing))}"] if missing else []
            raise TrtpruneError(
                f"plan '{path}' is malformed: {' and '.join(said)}",
                why=f"a plan's fields are format, {', '.join(known)}",
                fix="remove or correct the field (a plan is written by trtprune search; make it again if unsure)",
            )

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        path = Path(path)
        if path.is_dir():
            raise TrtpruneError(
                f"plan '{path}' is a folder",
                why="a plan is one .json file, written by trtprune search (-o) or beside the checkpoint of trtprune "
                "prune (<checkpoint>.plan.json), or a run's plan.json",
                fix="give the plan file itself, e.g. runs/<name>/plan.json",
            )
        if not path.is_file():
            raise TrtpruneError(f"plan '{path}' does not exist", fix="make one with trtprune search")
        try:
            d = json.loads(path.read_text())
        except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError, absurd nesting
            raise TrtpruneError(f"plan '{path}' is not JSON: {e}", fix="make it again with trtprune search") from e
        if not isinstance(d, dict) or d.pop("format", None) != PLAN_FORMAT:
            raise TrtpruneError(
                f"'{path}' is not a trtprune plan",
                why=f'expected "format": "{PLAN_FORMAT}"',
                fix="make it with trtprune search",
            )
        cls._check_fields(path, d)
        try:
            plan = cls(**d)
        except TypeError as e:
            raise TrtpruneError(f"plan '{path}' is malformed: {e}", fix="make it again with trtprune search") from e
        wrong = plan._wrong_types()
        if wrong:
            raise TrtpruneError(
                f"plan '{path}' is malformed: wrong types for {', '.join(wrong)}",
                why="model, device, method, budget and lut_key are text; keep_channels and channels map group "
                "names to channel counts; the latencies are numbers or null; meta is an object; remove_blocks is a "
                "list of module names",
                fix="make it again with trtprune search",
            )
        missing = [g for g in plan.channels if g not in plan.keep_channels]
        if missing:
            raise TrtpruneError(
                f"plan '{path}' gives no channel count for group(s) {', '.join(missing[:5])}"
                + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""),
                why="keep_channels must name every group of channels (what the model has); a group left out would be "
                "kept whole without a word",
                fix="put the group back in keep_channels (its full count keeps it whole: "
                + ", ".join(f'"{g}": {plan.channels[g]}' for g in missing[:3])
                + "), or make the plan again with trtprune search",
            )
        bad = {
            g: k
            for g, k in plan.keep_channels.items()
            if not isinstance(k, int) or not 1 <= k <= plan.channels.get(g, 0)
        }
        if bad:
            raise TrtpruneError(
                f"plan '{path}' keeps impossible channel counts: {bad}",
                fix="each count must be between 1 and the group's channels",
            )
        return plan
