"""Time budgets for a GPU session: the plan of a run (sections, their units
of work, the GPU seconds each is estimated to take) and a deadline per
section that the run keeps by construction.

A unit starts only when the seconds its section has spent plus the unit's
estimate fit the section's deadline; the others are skipped and reported
as such. On the GPU the spent seconds are the wall clock; in a CPU
rehearsal they are the estimates of the units done (a stand-in clock), so
the deadline logic runs there as it will on the GPU.

Estimates come from the last H200 run (2026-11-26, docs/gpu/): per kernel
check case, per layer row, per end-to-end form, per training smoke run;
what that run did not measure (torch.compile, ResNet-50 at 224x224, training
throughput) is a stated guess, marked as such in the plan.
"""
import time
from dataclasses import dataclass, field

# GPU seconds per unit, measured on the H200 of 2026-11-26 (docs/gpu/*.md "seconds per section")
MEASURED = {
    "check case": 64.2 / 6,  # (a): 61 checks over the 6 cases, both units, 4 precisions, every variant
    "layer row": 176.3 / 76,  # (b): 2 tickets x 2 precisions x 19 layers, Triton tuned + CUDA C
    "e2e form": 68.6 / 36,  # (c): 12 rows of 3 forms (per-layer choice and CUDA graphs included)
    "smoke runs": 26.5,  # (d): main_imp.py one epoch on CUDA + under torchrun
}
GUESSED = {
    "layer row 224": 2 * MEASURED["layer row"],  # ResNet-50 at 224x224: larger tensors, same tuning
    "compile": 30.0,  # torch.compile(mode="reduce-overhead") of one ResNet forward, cold cache
    "compile train": 45.0,  # the same for a training step (forward and backward)
    "train eager": 5.0,  # warm-up and timed steps of one model
    # 2 models x (ceiling + 3 epochs of 5,000 images on 2 paths): device ~20k images/s, per-image ~4k a worker,
    # worker start-up; then writing 512 JPEGs, 2 models x (ceiling + 3 per-image epochs) of ResNet-50 at 224x224
    "train epochs": 15.0,
    "train epochs 224": 20.0,
    "gradients": 2.0,  # one small layer's backward through the Triton path
}


def estimate(kind):
    """(seconds, measured?) of one unit of `kind`."""
    if kind in MEASURED:
        return MEASURED[kind], True
    return GUESSED[kind], False


@dataclass
class Unit:
    """One piece of a section's work: what it does, and its estimate: `count`
    times that of one unit of `kind`."""
    what: str
    kind: str
    count: int = 1
    seconds: float = 0.0
    measured: bool = True

    def __post_init__(self):
        each, self.measured = estimate(self.kind)
        self.seconds = each * self.count


@dataclass
class Section:
    name: str
    title: str
    deadline: float  # seconds this section may spend
    units: list = field(default_factory=list)

    def planned(self):
        """[(unit, fits)]: whether each unit fits the deadline by the estimates alone."""
        spent, out = 0.0, []
        for unit in self.units:
            fits = spent + unit.seconds <= self.deadline
            spent += unit.seconds if fits else 0.0
            out.append((unit, fits))
        return out

    def estimated(self):
        return sum(unit.seconds for unit, fits in self.planned() if fits)


def plan_text(sections):
    """The plan as lines: per section its deadline, units and estimates."""
    lines = ["plan of the GPU run (estimated GPU seconds: measured on the H200 of 2026-11-26, or ~guessed):"]
    total = 0.0
    for section in sections:
        planned = section.planned()
        estimated = section.estimated()
        total += estimated
        skipped = sum(not fits for _, fits in planned)
        lines.append(f"  ({section.name}) {section.title}: {len(planned)} units, ~{estimated:.0f} s of a {section.deadline:.0f} s "
                     f"deadline" + (f", {skipped} would be skipped" if skipped else ""))
        for unit, fits in planned:
            mark = "" if fits else "  [beyond the deadline: skipped]"
            lines.append(f"      {unit.seconds:6.1f} s{' ' if unit.measured else '~'}  {unit.what}{mark}")
    lines.append(f"  total ~{total:.0f} s ({total / 60:.1f} min) of GPU time, deadlines {sum(s.deadline for s in sections):.0f} s")
    return lines


class Budget:
    """Spends one section's deadline unit by unit: `admit(unit)` says
    whether it may start; `done(unit, seconds)` charges it (the stand-in
    clock of a rehearsal charges the estimate instead)."""

    def __init__(self, section, rehearsal=False):
        self.section, self.rehearsal = section, rehearsal
        self.spent, self.skipped, self.ran = 0.0, [], []
        self._started = None

    def admit(self, unit):
        if self.spent + unit.seconds > self.section.deadline:
            self.skipped.append(unit.what)
            return False
        self._started = time.perf_counter()
        return True

    def done(self, unit):
        wall = time.perf_counter() - self._started
        self.spent += unit.seconds if self.rehearsal else wall
        self.ran.append({"what": unit.what, "seconds": round(wall, 2), "estimate": round(unit.seconds, 1)})

    def summary(self):
        """What the report keeps: the deadline, the seconds spent (GPU, or
        estimated in a rehearsal), what ran and what the deadline skipped."""
        out = {"deadline_s": self.section.deadline, "spent_s": round(self.spent, 1),
               "clock": "estimates (rehearsal)" if self.rehearsal else "wall", "ran": self.ran,
               "skipped": self.skipped}
        if self.skipped:
            out["note"] = (f"{len(self.skipped)} of {len(self.skipped) + len(self.ran)} units skipped: the "
                           f"{self.section.deadline:.0f} s deadline of ({self.section.name}) would have been passed")
        return out
