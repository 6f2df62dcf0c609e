"""PRODIST Módulo 8 indicators as the module defines them, and the frequency bands.

* Steady-state voltage: 10-minute readings, valid ones only (no interrupted
  sample, enough readings: `limits.WINDOW_MIN_COVERAGE`); DRP = nlp/1008 x 100,
  DRC = nlc/1008 x 100, nlp and nlc the largest counts among the phases. With
  fewer than 1,008 valid readings the shares are over the readings there are
  (100 x nlp / N) and marked indicative; with more (a month), over each campaign
  of 1,008 consecutive valid readings, and the worst campaign is reported.
* Frequency: time outside each band (PRODIST's normal-operation, recovery and
  extreme bands, EN 50160's island bands), from the per-sample flags.
* Power factor: PRODIST's fp = P / sqrt(P² + Q²) from the period's energies, next
  to the true power factor P/S (their gap is the distortion); inductive when
  the reactive energy is positive (load convention, Q > 0 lagging).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from . import limits
from .data import BIN_S, FREQ_FLAGS, PHASES, Aggregator, _col, _group_sum


@dataclass
class VoltageConformity:
    windows: int  # 10-minute windows of the period, up to now
    valid: int  # N: valid readings
    discarded_interruption: int
    discarded_incomplete: int
    counts: dict[int, dict[str, int]]  # per phase, over the basis: adequate/precarious/critical
    nlp: int
    nlc: int
    basis: int  # readings DRP and DRC are over: 1008, or N when fewer
    campaigns: int  # complete campaigns of 1,008 valid readings
    drp: float | None
    drc: float | None

    @property
    def indicative(self) -> bool:
        return self.valid < limits.PRODIST_READINGS


def window_readings(agg: Aggregator, now: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per 10-minute window: mean voltage per phase (w, 3), valid flag, interrupted flag."""
    group = limits.PRODIST_WINDOW_S // BIN_S
    elapsed = int(np.clip((now - agg.start) // limits.PRODIST_WINDOW_S, 0, math.ceil(agg.n / group)))
    names = [_col("tensao", k) for k in PHASES]
    if not agg.has(*names):
        return np.zeros((0, 3)), np.zeros(0, bool), np.zeros(0, bool)
    means = np.stack([agg.mean(n, group) for n in names], axis=1)[:elapsed]
    interval = agg.interval_s
    covered = np.stack(
        [
            _group_sum(np.minimum(agg.cnt[:, agg.index[n]] * interval, BIN_S), group)
            for n in names  # seconds each phase's readings cover
        ],
        axis=1,
    ).min(axis=1)[:elapsed]
    interrupted = _group_sum(agg.dead_count(), group)[:elapsed] > 0
    complete = covered >= limits.WINDOW_MIN_COVERAGE * limits.PRODIST_WINDOW_S
    return means, complete & ~interrupted & np.isfinite(means).all(axis=1), interrupted


def classify(v: np.ndarray, ranges: limits.VoltageRanges = limits.PHASE_NEUTRAL_127) -> np.ndarray:
    """0 adequate, 1 precarious, 2 critical, for each reading."""
    lo, hi = ranges.adequate
    plo, phi = ranges.precarious
    return np.where((v >= lo) & (v <= hi), 0, np.where((v >= plo) & (v <= phi), 1, 2))


def voltage_conformity(agg: Aggregator, now: float) -> VoltageConformity | None:
    means, valid, interrupted = window_readings(agg, now)
    if not len(means):
        return None
    classes = classify(means[valid])  # (N, 3)
    n, size = len(classes), limits.PRODIST_READINGS
    # Campaigns of 1,008 consecutive valid readings (the worst is reported), or all there are.
    blocks = [classes[i : i + size] for i in range(0, n - size + 1, size)] if n >= size else [classes]
    nlp = max(int((b == 1).sum(axis=0).max(initial=0)) for b in blocks)
    nlc = max(int((b == 2).sum(axis=0).max(initial=0)) for b in blocks)
    worst = max(
        blocks, key=lambda b: ((b == 1).sum(axis=0).max(initial=0), (b == 2).sum(axis=0).max(initial=0))
    )
    names = ("adequate", "precarious", "critical")
    basis = len(blocks[0])
    return VoltageConformity(
        windows=len(means),
        valid=n,
        discarded_interruption=int(interrupted.sum()),
        discarded_incomplete=int((~valid & ~interrupted).sum()),
        counts={
            k: {name: int((worst[:, j] == c).sum()) for c, name in enumerate(names)}
            for j, k in enumerate(PHASES)
        },
        nlp=nlp,
        nlc=nlc,
        basis=basis,
        campaigns=n // size,
        drp=100 * nlp / basis if basis else None,
        drc=100 * nlc / basis if basis else None,
    )


@dataclass
class FrequencyBands:
    mean: float
    min: float
    max: float
    samples: int
    out_s: dict[str, float] = field(default_factory=dict)  # flag -> seconds beyond the band
    out_pct: dict[str, float] = field(default_factory=dict)  # flag -> share of samples

    @property
    def island_ok(self) -> bool:
        """EN 50160, island: within ±2 % for at least 95 % of the time, within +15/−15 % always."""
        narrow = 100 - self.out_pct.get("f_out_island", 0.0) >= limits.FREQ_ISLAND_NARROW_SHARE
        return narrow and self.out_pct.get("f_out_island_wide", 0.0) == 0

    @property
    def extreme_ok(self) -> bool:
        return self.out_pct.get("f_out_extreme", 0.0) == 0


def frequency_bands(agg: Aggregator) -> FrequencyBands | None:
    if not agg.any("frequencia"):
        return None
    total, count = agg.total("frequencia")
    i = agg.index["frequencia"]
    lo, hi = agg.min[:, i], agg.max[:, i]
    out = FrequencyBands(
        total / count, float(lo[np.isfinite(lo)].min()), float(hi[np.isfinite(hi)].max()), count
    )
    for name, _, _ in FREQ_FLAGS:
        flagged, samples = agg.total(name)
        out.out_s[name] = flagged * agg.interval_s
        out.out_pct[name] = 100 * flagged / samples if samples else 0.0
    return out


@dataclass(frozen=True)
class PowerFactor:
    true_pf: float | None  # ΣP / ΣS, with distortion
    fp: float | None  # PRODIST: ΣP / sqrt(ΣP² + ΣQ²)
    inductive: bool | None  # from the sign of ΣQ


def power_factor(agg: Aggregator, p: str, q: str, s: str) -> PowerFactor:
    """From the period's sums (energy-weighted), interrupted samples left out."""
    sp = agg.total(p)[0] if agg.has(p) else math.nan
    sq = agg.total(q)[0] if agg.has(q) else math.nan
    ss = agg.total(s)[0] if agg.has(s) else math.nan
    true_pf = sp / ss if ss > 0 else None
    fp = sp / math.hypot(sp, sq) if math.isfinite(sq) and math.hypot(sp, sq) > 0 else None
    inductive = None if not math.isfinite(sq) or sq == 0 else sq > 0
    return PowerFactor(true_pf, fp, inductive)


def power_factors(agg: Aggregator) -> dict[int | str, PowerFactor]:
    """Per phase (1, 2, 3) and "total"."""
    out: dict[int | str, PowerFactor] = {
        k: power_factor(
            agg, _col("potencia_ativa", k), _col("potencia_reativa", k), _col("potencia_aparente", k)
        )
        for k in PHASES
    }
    out["total"] = power_factor(agg, "p_total", "q_total", "s_total")
    return out


def fd95(agg: Aggregator) -> tuple[float | None, float | None]:
    """FD95% and the largest 10-minute FD."""
    if not agg.any("fd"):
        return None, None
    fd = agg.mean("fd", limits.PRODIST_WINDOW_S // BIN_S)
    fd = fd[np.isfinite(fd)]
    return float(np.percentile(fd, 95)), float(fd.max())
