"""The per-reading series the aggregate tables summarise besides the register columns, as SQL.

The load study (`edgelog.report`) needs, per minute, more than each register's
mean, minimum and maximum: totals and means of the three phases, the voltage
unbalance FD, the current unbalance, the sequence currents I1 and I2 and the
neutral current estimated from P, Q and the voltages, and the readings outside
each frequency band. They are not linear in the registers, so they cannot be
rebuilt from per-minute means: each is computed per reading, in MariaDB, and
summarised like a register. The formulas are those of `edgelog.report.data`
(`Aggregator._derived`, `sequence_currents`) and `edgelog.report.limits`
(`unbalance_fd_pct`, the frequency bands); tests/test_aggregates.py checks the
SQL against them reading by reading. Two differences in form, none in value
beyond rounding: the phase angles enter as cos = c and sin = ±sqrt(1 - c²)
instead of cos(arccos c), and |z| as sqrt(re² + im²) instead of hypot.

A series exists when the registers it needs exist (the PAC3100's names); an
interrupted reading is not treated apart here (the report reads the raw rows of
the minutes that hold one: `edgelog.report.minutes`).

`levels()` gives the SQL as successive SELECT levels, each naming expressions
over the previous one (MariaDB has no LATERAL); helper values start with "_",
which no register column can (`profiles.IDENTIFIER`).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass


def q(name: str) -> str:
    return f"`{name}`"


def lit(x: float) -> str:
    """A DOUBLE literal of exactly `x` (a literal without an exponent would be DECIMAL)."""
    return f"{x!r}e0" if "e" not in repr(x) else repr(x)


V = ("tensao_l1_n", "tensao_l2_n", "tensao_l3_n")
VLL = ("tensao_l1_l2", "tensao_l2_l3", "tensao_l3_l1")
I = ("corrente_l1", "corrente_l2", "corrente_l3")  # noqa: E741
P = ("potencia_ativa_l1", "potencia_ativa_l2", "potencia_ativa_l3")
Q = ("potencia_reativa_l1", "potencia_reativa_l2", "potencia_reativa_l3")
S = ("potencia_aparente_l1", "potencia_aparente_l2", "potencia_aparente_l3")
F = "frequencia"
#: sqrt(3)/2: a = -1/2 + j sqrt(3)/2, the 120° operator of the sequence components
K = lit(3**0.5 / 2)


@dataclass(frozen=True)
class Series:
    """A value per reading, summarised like a register column (avg, min, max, cnt)."""

    name: str  # the aggregate table's columns are name_avg, name_min, ...
    unit: str
    needs: tuple[str, ...]


SERIES = (
    Series("potencia_ativa_total", "W", P),
    Series("potencia_reativa_total", "var", Q),
    Series("potencia_aparente_total", "VA", S),
    Series("tensao_fn_media", "V", V),
    Series("corrente_media", "A", I),
    Series("corrente_desvio_max", "A", I),
    Series("desequilibrio_tensao", "%", VLL),
    Series("corrente_seq_positiva", "A", V + VLL + P + Q),
    Series("corrente_seq_negativa", "A", V + VLL + P + Q),
    Series("corrente_neutro_estimada", "A", V + VLL + P + Q),
)


@dataclass(frozen=True)
class Band:
    """Readings whose frequency is below `lo` or above `hi`: a count per period."""

    name: str
    lo: float | None
    hi: float | None
    what: str

    def condition(self, f: str) -> str:
        parts = ([f"{f} < {lit(self.lo)}"] if self.lo is not None else []) + (
            [f"{f} > {lit(self.hi)}"] if self.hi is not None else []
        )
        return " OR ".join(parts)


#: The report's frequency flags (`edgelog.report.data.FREQ_FLAGS`), same thresholds.
BANDS = (
    Band("freq_fora_normal", 59.9, 60.1, "outside 59.9-60.1 Hz (PRODIST, normal operation)"),
    Band("freq_fora_recuperacao", 59.5, 60.5, "outside 59.5-60.5 Hz (PRODIST, recovery)"),
    Band("freq_fora_extremos", 56.5, 66.0, "outside 56.5-66 Hz (PRODIST, extreme limits)"),
    Band("freq_fora_ilha", 60.0 * 0.98, 60.0 * 1.02, "outside 60 Hz +-2 % (EN 50160, island)"),
    Band("freq_fora_ilha_ampla", 60.0 * 0.85, 60.0 * 1.15, "outside 60 Hz +-15 % (EN 50160, island)"),
    Band("freq_acima_62", None, 62.0, "above 62 Hz"),
    Band("freq_acima_63_5", None, 63.5, "above 63.5 Hz"),
    Band("freq_abaixo_58_5", 58.5, None, "below 58.5 Hz"),
    Band("freq_abaixo_57_5", 57.5, None, "below 57.5 Hz"),
)


def available(columns: Collection[str]) -> tuple[list[Series], list[Band]]:
    """The series and bands the register `columns` allow (none whose name is a register's)."""
    series = [s for s in SERIES if set(s.needs) <= set(columns) and s.name not in columns]
    bands = [b for b in BANDS if F in columns and b.name not in columns]
    return series, bands


def _sum3(names: tuple[str, ...]) -> str:
    a, b, c = (q(n) for n in names)
    return f"({a} + {b} + {c})"


def levels(series: Collection[Series]) -> list[list[tuple[str, str]]]:
    """SELECT levels after the raw reading: [(alias, expression over the level before)].
    Each level is materialised by the caller, so what it names is computed once per
    reading; within a level a value used twice is computed twice (MariaDB has no
    common subexpressions). Two levels: the phase currents, which the sequence
    currents use many times, then every series."""
    names = {s.name for s in series}
    currents: list[tuple[str, str]] = []
    out: list[tuple[str, str]] = []
    for name, cols in (
        ("potencia_ativa_total", P),
        ("potencia_reativa_total", Q),
        ("potencia_aparente_total", S),
    ):
        if name in names:
            out.append((name, _sum3(cols)))
    if "tensao_fn_media" in names:
        out.append(("tensao_fn_media", f"{_sum3(V)} / 3"))
    mean = f"{_sum3(I)} / 3"
    if "corrente_media" in names:
        out.append(("corrente_media", mean))
    if "corrente_desvio_max" in names:
        devs = ", ".join(f"ABS({q(c)} - {mean})" for c in I)
        out.append(("corrente_desvio_max", f"GREATEST({devs})"))
    if "desequilibrio_tensao" in names:
        sq = "(" + " + ".join(f"{q(c)} * {q(c)}" for c in VLL) + ")"
        s4 = "(" + " + ".join(f"POW({q(c)}, 4)" for c in VLL) + ")"
        root = f"SQRT(GREATEST(3 - 6 * ({s4} / NULLIF({sq} * {sq}, 0)), 0))"
        out.append(("desequilibrio_tensao", f"100 * SQRT(GREATEST((1 - {root}) / (1 + {root}), 0))"))
    if names & {"corrente_seq_positiva", "corrente_seq_negativa", "corrente_neutro_estimada"}:
        currents = _currents()
        for name, (re, im) in _sequences().items():
            if name in names:
                magnitude = f"SQRT(({re}) * ({re}) + ({im}) * ({im}))"
                out.append((name, magnitude if name.endswith("estimada") else f"{magnitude} / 3"))
    return [level for level in (currents, out) if level]


def _currents() -> list[tuple[str, str]]:
    """The phase currents conj(S/V) from P, Q and the voltage phasors (angles from the six
    voltage magnitudes, law of cosines, positive sequence): real and imaginary parts."""
    va, vb, vc = (q(c) for c in V)
    vab, _, vca = (q(c) for c in VLL)
    pa, pb, pc = (q(c) for c in P)
    qa, qb, qc = (q(c) for c in Q)
    cb, cc = _cosine(va, vb, vab), _cosine(vc, va, vca)
    sb = f"(-SQRT(1 - {cb} * {cb}))"  # Vb at -arccos(cb)
    sc = f"SQRT(1 - {cc} * {cc})"  # Vc at +arccos(cc)
    # I = (p - jq)(cos + j sin) / v
    return [
        ("_iar", f"{pa} / NULLIF({va}, 0)"),
        ("_iai", f"-{qa} / NULLIF({va}, 0)"),
        ("_ibr", f"({pb} * {cb} + {qb} * {sb}) / NULLIF({vb}, 0)"),
        ("_ibi", f"({pb} * {sb} - {qb} * {cb}) / NULLIF({vb}, 0)"),
        ("_icr", f"({pc} * {cc} + {qc} * {sc}) / NULLIF({vc}, 0)"),
        ("_ici", f"({pc} * {sc} - {qc} * {cc}) / NULLIF({vc}, 0)"),
    ]


def _cosine(x: str, y: str, between: str) -> str:
    """cos of the angle between phasors of magnitudes x and y, |x - y| = between, in [-1, 1]."""
    ratio = f"({x} * {x} + {y} * {y} - {between} * {between}) / NULLIF(2 * {x} * {y}, 0)"
    return f"GREATEST(-1, LEAST(1, {ratio}))"


def _sequences() -> dict[str, tuple[str, str]]:
    """Real and imaginary parts of 3 I1 = Ia + a Ib + a² Ic, 3 I2 = Ia + a² Ib + a Ic and
    In = Ia + Ib + Ic (a = -1/2 + jK), over the phase currents' parts."""
    return {
        "corrente_seq_positiva": (
            f"`_iar` - 0.5e0 * `_ibr` - {K} * `_ibi` - 0.5e0 * `_icr` + {K} * `_ici`",
            f"`_iai` + {K} * `_ibr` - 0.5e0 * `_ibi` - {K} * `_icr` - 0.5e0 * `_ici`",
        ),
        "corrente_seq_negativa": (
            f"`_iar` - 0.5e0 * `_ibr` + {K} * `_ibi` - 0.5e0 * `_icr` - {K} * `_ici`",
            f"`_iai` - {K} * `_ibr` - 0.5e0 * `_ibi` + {K} * `_icr` - 0.5e0 * `_ici`",
        ),
        "corrente_neutro_estimada": ("`_iar` + `_ibr` + `_icr`", "`_iai` + `_ibi` + `_ici`"),
    }
