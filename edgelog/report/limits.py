"""Reference limits the report counts against, with where each comes from.

What was checked, and against what: the PRODIST Módulo 8 text (ANEEL, revision
of REN 956/2021) could not be opened from where this was written; every PRODIST
figure below is quoted from the module's text as it is widely transcribed, and
the 220/127 V voltage table was compared with one independent transcription
only. The EN 50160 frequency bands for islands were checked against a meter
vendor's description of EN 50160 conformance (10-second mean frequency). Check
the revision in force before quoting any of these in a thesis. docs/load-study.md
explains each indicator built on them.

Steady-state voltage (PRODIST Módulo 8, "tensão em regime permanente"): the
table of "faixas de classificação de tensões" for connection points at a nominal
voltage of at most 2.3 kV, 220/127 V line (adequate range 0.92–1.05 of 127 V):

    TL = reading voltage     phase-neutral (127 V)                phase-phase (220 V)
    adequada                 117 <= TL <= 133                     202 <= TL <= 231
    precária                 110 <= TL < 117 or 133 < TL <= 135   191 <= TL < 202 or 231 < TL <= 233
    crítica                  TL < 110 or TL > 135                 TL < 191 or TL > 233

A reading is the RMS voltage over 10 minutes; a campaign is 1,008 valid
consecutive readings (a week). DRP = nlp/1008 x 100 and DRC = nlc/1008 x 100,
nlp and nlc the largest number of precarious and critical readings among the
phases; limits DRPlim = 3 % and DRClim = 0.5 %. Readings of 10-minute intervals
with an interruption are discarded and replaced by as many valid readings
(PRODIST: "expurgo"). The report's own rule for a valid window is in
`WINDOW_MIN_COVERAGE` and `INTERRUPTION_PU`.

Interruption (PRODIST Módulo 8, short-duration voltage variations): a voltage
below 0.1 pu; momentary up to 3 s, temporary up to 3 min, long from 3 min.

Frequency (PRODIST Módulo 8, "variação de frequência"): 59.9–60.1 Hz in normal
operation and steady state; after a disturbance back within 59.5–60.5 Hz in 30 s;
while load or generation is shed never above 66 Hz nor below 56.5 Hz, above
62 Hz for at most 30 s and above 63.5 Hz for at most 10 s, below 58.5 Hz for at
most 10 s and below 57.5 Hz for at most 5 s.

Frequency of a system without a synchronous connection to an interconnected one
(EN 50160, an island such as this plant): nominal ± 2 % during 95 % of a week,
nominal + 15 % / − 15 % during 100 % of the time (10-second mean values; the
report judges each reading instead, which is stricter).

Power factor (PRODIST Módulo 8, "fator de potência"): fp = P / sqrt(P² + Q²), or
with energies EA / sqrt(EA² + ER²); reference 0.92 to 1.00 inductive or
capacitive at connection points below 230 kV.

Voltage unbalance (PRODIST Módulo 8, "desequilíbrio de tensão"): FD95% (95th
percentile of the 10-minute FD values) at most 3.0 % at nominal voltages up to
2.3 kV; FD from the three line-line voltages (`unbalance_fd_pct`).

Generator negative-sequence current (IEC 60034-1, unbalanced operating
conditions of synchronous machines): a salient-pole generator with indirectly
cooled windings carries I2/IN = 0.08 continuously. A plant's own machine may
differ: its data sheet wins.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class VoltageRanges:
    nominal: float
    adequate: tuple[float, float]
    precarious: tuple[float, float]  # outer bounds of the precarious ranges
    # critical: outside `precarious`

    def classify(self, v: float) -> str:
        lo, hi = self.adequate
        plo, phi = self.precarious
        if lo <= v <= hi:
            return "adequate"
        if plo <= v <= phi:
            return "precarious"
        return "critical"


#: 220/127 V system, phase-neutral readings.
PHASE_NEUTRAL_127 = VoltageRanges(127.0, (117.0, 133.0), (110.0, 135.0))
#: 220/127 V system, phase-phase readings.
PHASE_PHASE_220 = VoltageRanges(220.0, (202.0, 231.0), (191.0, 233.0))

#: PRODIST's voltage readings are 10-minute aggregates; a campaign has 1,008 of them.
PRODIST_WINDOW_S = 600
PRODIST_READINGS = 1008
DRP_LIMIT_PCT = 3.0
DRC_LIMIT_PCT = 0.5
#: A 10-minute window is a valid reading when it holds no interrupted sample and the
#: readings of all three phase voltages cover at least this share of it. Our rule:
#: PRODIST asks for integrated 10-minute values and says nothing of a partial window.
WINDOW_MIN_COVERAGE = 0.9
#: A sample is interrupted when any phase-neutral voltage is below this share of
#: nominal (PRODIST's amplitude of an interruption). Interrupted samples are counted
#: apart and left out of every voltage, frequency, power-factor and unbalance figure.
INTERRUPTION_PU = 0.1
#: PRODIST: an interruption of 3 minutes or more is a long one.
LONG_INTERRUPTION_S = 180.0

FREQ_NOMINAL = 60.0
FREQ_NORMAL = (59.9, 60.1)
#: After a disturbance the frequency must be back in this band within FREQ_RECOVERY_S.
FREQ_RECOVERY = (59.5, 60.5)
FREQ_RECOVERY_S = 30.0
#: Never outside these, even while load or generation is shed.
FREQ_EXTREME = (56.5, 66.0)
#: (side, threshold Hz, longest time allowed beyond it in seconds), PRODIST Módulo 8.
FREQ_TIME_LIMITS: tuple[tuple[str, float, float], ...] = (
    ("above", 62.0, 30.0),
    ("above", 63.5, 10.0),
    ("below", 58.5, 10.0),
    ("below", 57.5, 5.0),
)
#: EN 50160, systems without a synchronous connection: ±2 % for 95 % of a week, +15/−15 % always.
FREQ_ISLAND_NARROW = (FREQ_NOMINAL * 0.98, FREQ_NOMINAL * 1.02)
FREQ_ISLAND_NARROW_SHARE = 95.0
FREQ_ISLAND_WIDE = (FREQ_NOMINAL * 0.85, FREQ_NOMINAL * 1.15)

PF_REFERENCE = 0.92
FD95_LIMIT_PCT = 3.0
#: IEC 60034-1, salient-pole generator, indirectly cooled windings: continuous I2/IN.
GENERATOR_I2_CONTINUOUS = 0.08
#: Loading levels of the capacity figures, as shares of the generator's rating.
CAPACITY_LEVELS = (0.8, 0.9, 1.0)
#: Demand integration window, the usual billing one.
DEMAND_WINDOW_S = 900


def unbalance_fd_pct(vab: float, vbc: float, vca: float) -> float:
    """Voltage unbalance factor FD (%) from the three line-line voltages (PRODIST Módulo 8):
    FD = 100 * sqrt((1 - sqrt(3 - 6 b)) / (1 + sqrt(3 - 6 b))), b = sum(V^4) / sum(V^2)^2."""
    squares = vab**2 + vbc**2 + vca**2
    if not squares:
        return math.nan
    beta = (vab**4 + vbc**4 + vca**4) / squares**2
    root = math.sqrt(max(0.0, 3 - 6 * beta))
    return 100 * math.sqrt(max(0.0, (1 - root) / (1 + root)))  # rounding: a balanced set gives 0
