"""Reference limits the report draws and counts against, with where they come from.

Steady-state voltage, ANEEL PRODIST Módulo 8 ("Qualidade do Fornecimento de
Energia Elétrica"), section on "tensão em regime permanente": the table of
"faixas de classificação de tensões – tensões de regime permanente" for
connection points at a nominal voltage of at most 2.3 kV, line for the 220/127 V
system (Tabela 3 of the annex in the revisions we know; 0.92–1.05 of the
reference voltage for the adequate range):

    TL = reading voltage     phase-neutral (127 V)           phase-phase (220 V)
    adequada                 117 <= TL <= 133                 202 <= TL <= 231
    precária                 110 <= TL < 117 or 133 < TL <= 135   191 <= TL < 202 or 231 < TL <= 233
    crítica                  TL < 110 or TL > 135             TL < 191 or TL > 233

PRODIST evaluates 10-minute readings (1008 of them, a week): DRP and DRC are the
shares of readings in the precarious and critical ranges. The 127 V and 220 V
ranges were checked against an independent transcription of the table (not
against ANEEL's PDF itself, which was out of reach); the table's number differs
between revisions. Check the revision in force before quoting it in a thesis.
The frequency, power-factor and unbalance limits below are quoted from the
module's text as we know it and were not re-checked here.

Frequency, PRODIST Módulo 8, "variação de frequência": in normal operation and
steady state between 59.9 and 60.1 Hz; after a disturbance it must be back in
59.5–60.5 Hz within 30 s.

Power factor, PRODIST Módulo 8, "fator de potência": reference 0.92 to 1.00
(inductive or capacitive) at connection points below 230 kV.

Voltage unbalance, PRODIST Módulo 8, "desequilíbrio de tensão": FD95% (the 95th
percentile of the 10-minute values of the unbalance factor FD) at most 3.0 % for
a nominal voltage of at most 2.3 kV; FD from the three line-line voltages by the
CIGRÉ expression used there.
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

FREQ_NOMINAL = 60.0
FREQ_NORMAL = (59.9, 60.1)
FREQ_RECOVERY = (59.5, 60.5)
PF_REFERENCE = 0.92
FD95_LIMIT_PCT = 3.0
#: Demand integration window, the usual billing one.
DEMAND_WINDOW_S = 900
#: PRODIST's voltage readings are 10-minute aggregates.
PRODIST_WINDOW_S = 600
#: A bus below this share of nominal is dead (an outage measured by the meter).
DEAD_BUS_PU = 0.5


def unbalance_fd_pct(vab: float, vbc: float, vca: float) -> float:
    """Voltage unbalance factor FD (%) from the three line-line voltages (PRODIST Módulo 8):
    FD = 100 * sqrt((1 - sqrt(3 - 6 b)) / (1 + sqrt(3 - 6 b))), b = sum(V^4) / sum(V^2)^2."""
    squares = vab**2 + vbc**2 + vca**2
    if not squares:
        return math.nan
    beta = (vab**4 + vbc**4 + vca**4) / squares**2
    root = math.sqrt(max(0.0, 3 - 6 * beta))
    return 100 * math.sqrt((1 - root) / (1 + root))
