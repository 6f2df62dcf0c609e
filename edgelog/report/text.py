"""Words and number formats of the report, in Portuguese (the default) and English."""

from __future__ import annotations

import datetime as dt
import math

TEXT: dict[str, dict[str, str]] = {
    "pt": {
        "title": "Estudo de carga",
        "panel_load": "Curva de carga: potência ativa",
        "panel_voltage": "Tensão fase-neutro e faixas do PRODIST Módulo 8 (sistema 220/127 V)",
        "panel_freq": "Frequência",
        "panel_pf": "Fator de potência (P/S)",
        "panel_reactive": "Potência reativa",
        "phase": "Fase {k}",
        "total": "Total",
        "range": "mín.–máx. (total)",
        "range_v": "mín.–máx. (todas as fases)",
        "no_data": "sem registros (registrador desligado / falta de energia)",
        "failed": "falha de leitura do medidor",
        "adequate": "adequada",
        "precarious": "precária",
        "critical": "crítica",
        "freq_band": "59,9–60,1 Hz (regime normal)",
        "pf_ref": "referência 0,92",
        "local_time": "hora local ({tz})",
        "subtitle": "Local {site} · medidor {meter} · {period} · fonte: {source}",
        "footer": (
            "Faixas de tensão: ANEEL, PRODIST Módulo 8, tensão em regime permanente, sistema 220/127 V "
            "(adequada 117–133 V; precária 110–117 e 133–135 V; crítica fora disso). Gerado por edgelog"
            " {version} em {when}."
        ),
        "day": "{d} de {month} de {y}",
        "week": "semana de {d1} a {d2}",
        "month": "{month} de {y}",
        "summary": "Resumo",
        "section_energy": "Energia e demanda",
        "section_voltage": "Tensão",
        "section_quality": "Frequência, fator de potência e equilíbrio",
        "section_data": "Dados",
        "energy_int": "Energia ativa (integrada da potência)",
        "energy_phase": "Energia ativa, fase {k}",
        "reactive_int": "Energia reativa (integrada)",
        "energy_counter": "Energia ativa (contador do medidor)",
        "reactive_counter": "Energia reativa (contador do medidor)",
        "peak": "Demanda máxima (integração de 15 min)",
        "mean_demand": "Demanda média (tempo com dados)",
        "load_factor": "Fator de carga",
        "v_phase": "Tensão fase {k}: média / mín. / máx.",
        "v_line": "Tensão {a}-{b}: média / mín. / máx.",
        "drp_drc": "DRP / DRC fase {k} (janelas de 10 min)",
        "fd95": "Desequilíbrio de tensão FD95% / máx. (limite 3 %)",
        "i_unbalance": "Desequilíbrio de corrente médio (máx. desvio da média)",
        "freq": "Frequência: média / mín. / máx.",
        "freq_out": "Tempo fora de 59,9–60,1 Hz",
        "pf_total": "Fator de potência médio (ΣP/ΣS)",
        "pf_phase": "Fator de potência, fase {k}",
        "hours_no_data": "Horas sem dados",
        "hours_failed": "  das quais falhas de leitura",
        "hours_no_rows": "  das quais sem registros (registrador desligado)",
        "hours_dead": "Horas com tensão nula medida (falta de energia)",
        "coverage": "Cobertura (tempo com dados / período)",
        "rows": "Registros (falhas de leitura)",
        "bad_clock": "Registros com relógio não sincronizado (incluídos)",
        "interval": "Intervalo de amostragem",
        "at": "em",
        "none": "–",
        "notes_title": "Notas",
        "notes": (
            "Energia integrada: por minuto, potência média × tempo coberto pelas leituras; períodos sem"
            " dados não somam. Contador: última menos primeira leitura do contador do medidor no "
            "período (inclui os períodos sem dados em que o medidor seguiu contando). Demanda: média da"
            " potência ativa em janelas fixas de 15 min (:00, :15, :30, :45); janelas com menos da "
            "metade das leituras ficam de fora. Fator de carga: demanda média no tempo com dados / "
            "demanda máxima. DRP/DRC: parcela das médias de 10 min de cada fase nas faixas "
            "precária/crítica (PRODIST Módulo 8). FD: fator de desequilíbrio pelas três tensões de "
            "linha; FD95% = percentil 95 das médias de 10 min. Frequência: PRODIST Módulo 8, 59,9–60,1 "
            "Hz em regime normal. Fator de potência de referência: 0,92."
        ),
        "figure_caption": (
            "Figura: (a) curva de carga, potência ativa por fase e total; (b) tensão fase-neutro com as"
            " faixas do PRODIST Módulo 8; (c) frequência; (d) fator de potência; (e) potência reativa. "
            "Áreas cinzas: sem registros; áreas vermelhas: falhas de leitura."
        ),
        "generated": "Gerado por edgelog {version} em {when}",
    },
    "en": {
        "title": "Load study",
        "panel_load": "Load curve: active power",
        "panel_voltage": "Phase-neutral voltage and PRODIST Module 8 ranges (220/127 V system)",
        "panel_freq": "Frequency",
        "panel_pf": "Power factor (P/S)",
        "panel_reactive": "Reactive power",
        "phase": "Phase {k}",
        "total": "Total",
        "range": "min–max (total)",
        "range_v": "min–max (all phases)",
        "no_data": "no rows (logger off / power cut)",
        "failed": "meter did not answer",
        "adequate": "adequate",
        "precarious": "precarious",
        "critical": "critical",
        "freq_band": "59.9–60.1 Hz (normal operation)",
        "pf_ref": "reference 0.92",
        "local_time": "local time ({tz})",
        "subtitle": "Site {site} · meter {meter} · {period} · source: {source}",
        "footer": (
            "Voltage ranges: ANEEL, PRODIST Module 8, steady-state voltage, 220/127 V system (adequate "
            "117–133 V; precarious 110–117 and 133–135 V; critical beyond). Made by edgelog {version} "
            "on {when}."
        ),
        "day": "{month} {d}, {y}",
        "week": "week of {d1} to {d2}",
        "month": "{month} {y}",
        "summary": "Summary",
        "section_energy": "Energy and demand",
        "section_voltage": "Voltage",
        "section_quality": "Frequency, power factor and balance",
        "section_data": "Data",
        "energy_int": "Active energy (integrated from power)",
        "energy_phase": "Active energy, phase {k}",
        "reactive_int": "Reactive energy (integrated)",
        "energy_counter": "Active energy (meter counter)",
        "reactive_counter": "Reactive energy (meter counter)",
        "peak": "Peak demand (15-min integration)",
        "mean_demand": "Mean demand (time with data)",
        "load_factor": "Load factor",
        "v_phase": "Voltage phase {k}: mean / min / max",
        "v_line": "Voltage {a}-{b}: mean / min / max",
        "drp_drc": "DRP / DRC phase {k} (10-min windows)",
        "fd95": "Voltage unbalance FD95% / max (limit 3 %)",
        "i_unbalance": "Mean current unbalance (max deviation from mean)",
        "freq": "Frequency: mean / min / max",
        "freq_out": "Time outside 59.9–60.1 Hz",
        "pf_total": "Mean power factor (ΣP/ΣS)",
        "pf_phase": "Power factor, phase {k}",
        "hours_no_data": "Hours without data",
        "hours_failed": "  of which failed polls",
        "hours_no_rows": "  of which no rows (logger off)",
        "hours_dead": "Hours with zero voltage measured (outage)",
        "coverage": "Coverage (time with data / period)",
        "rows": "Rows (failed polls)",
        "bad_clock": "Rows taken with an unsynchronised clock (included)",
        "interval": "Sampling interval",
        "at": "at",
        "none": "–",
        "notes_title": "Notes",
        "notes": (
            "Integrated energy: per minute, mean power × time covered by readings; periods without data"
            " add nothing. Counter: last minus first reading of the meter's counter in the period "
            "(includes periods without data while the meter kept counting). Demand: mean active power "
            "over fixed 15-min windows (:00, :15, :30, :45); windows with less than half their readings"
            " are left out. Load factor: mean demand over the time with data / peak demand. DRP/DRC: "
            "share of each phase's 10-min means in the precarious/critical ranges (PRODIST Module 8). "
            "FD: unbalance factor from the three line voltages; FD95% = 95th percentile of the 10-min "
            "means. Frequency: PRODIST Module 8, 59.9–60.1 Hz in normal operation. Reference power "
            "factor: 0.92."
        ),
        "figure_caption": (
            "Figure: (a) load curve, active power per phase and total; (b) phase-neutral voltage with "
            "the PRODIST Module 8 ranges; (c) frequency; (d) power factor; (e) reactive power. Grey "
            "areas: no rows; red areas: failed polls."
        ),
        "generated": "Made by edgelog {version} on {when}",
    },
}

MONTHS = {
    "pt": [
        "janeiro",
        "fevereiro",
        "março",
        "abril",
        "maio",
        "junho",
        "julho",
        "agosto",
        "setembro",
        "outubro",
        "novembro",
        "dezembro",
    ],
    "en": [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ],
}
WEEKDAYS = {
    "pt": ["seg", "ter", "qua", "qui", "sex", "sáb", "dom"],
    "en": ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"],
}
PANELS = ("panel_load", "panel_voltage", "panel_freq", "panel_pf", "panel_reactive")


def t(lang: str, key: str, **kw: object) -> str:
    return TEXT[lang][key].format(**kw)


def number(x: float | None, lang: str, digits: int = 1) -> str:
    """1 234,5 (pt) or 1 234.5 (en); '–' for None/NaN."""
    if x is None or not math.isfinite(x):
        return TEXT[lang]["none"]
    text = f"{x:,.{digits}f}".replace(",", "\u202f")
    return text.replace(".", ",") if lang == "pt" else text


def tick(x: float, lang: str) -> str:
    """An axis tick: as few decimals as it needs, decimal comma in Portuguese."""
    text = f"{x:.6g}"
    return text.replace(".", ",") if lang == "pt" else text


def date_label(d: dt.date, lang: str) -> str:
    return t(lang, "day", d=d.day, month=MONTHS[lang][d.month - 1], y=d.year)


def period_label(kind: str, start: dt.datetime, end: dt.datetime, lang: str) -> str:
    if kind == "day":
        return date_label(start.date(), lang)
    if kind == "week":
        last = (end - dt.timedelta(seconds=1)).date()
        return t(lang, "week", d1=date_label(start.date(), lang), d2=date_label(last, lang))
    return t(lang, "month", month=MONTHS[lang][start.month - 1], y=start.year)
