"""Words and number formats of the report, in Portuguese (the default) and English."""

from __future__ import annotations

import datetime as dt
import math

TEXT: dict[str, dict[str, str]] = {
    "pt": {
        "title": "Estudo de carga",
        "study_title": "Estudo de carga: análises",
        "panel_load": "(a) Curva de carga: potência ativa",
        "panel_voltage": "(b) Tensão fase-neutro e faixas do PRODIST Módulo 8 (sistema 220/127 V)",
        "panel_freq": "(c) Frequência e faixas (PRODIST: regime normal e recuperação; EN 50160: ilha ±2 %)",
        "panel_pf": "(d) Fator de potência: fp = P/√(P²+Q²) (PRODIST) e ΣP/ΣS (com distorção)",
        "panel_reactive": "(e) Potência reativa (positiva: indutiva)",
        "panel_typical": "(f) Dia típico: demanda de 15 min, média e faixa P10–P90",
        "panel_duration": "(g) Curva de duração de carga (médias de 1 min)",
        "panel_phases": "(h) Carga por fase: corrente e neutro",
        "panel_days": "(i) Energia diária e demanda máxima",
        "panel_freq_load": "(j) Frequência × carga (médias de 1 min)",
        "panel_volt_load": "(k) Tensão × carga (médias de 1 min, média das fases)",
        "phase": "Fase {k}",
        "neutral": "Neutro",
        "total": "Total",
        "range": "mín.–máx. (total)",
        "range_v": "mín.–máx. (todas as fases)",
        "no_data": "sem registros (registrador desligado / falta de energia)",
        "failed": "falha de leitura do medidor",
        "dead": "interrupção medida (tensão < 0,1 pu)",
        "adequate": "adequada",
        "precarious": "precária",
        "critical": "crítica",
        "freq_line": "frequência",
        "freq_band": "59,9–60,1 Hz (regime normal)",
        "freq_recovery": "59,5–60,5 Hz (recuperação)",
        "freq_island": "58,8–61,2 Hz (ilha, EN 50160)",
        "pf_fp_total": "fp total (PRODIST)",
        "pf_true_total": "ΣP/ΣS total",
        "pf_ref": "referência 0,92",
        "weekday": "dias úteis ({n} dias)",
        "weekend": "fins de semana ({n} dias)",
        "hour_of_day": "hora do dia",
        "hours": "horas",
        "p_kw": "P (kW)",
        "s_kva": "S (kVA)",
        "generator": "gerador {x} kVA",
        "water": "água {x} kW",
        "rated_current": "corrente nominal {x} A",
        "i_mean": "média",
        "i_peak": "máx. média de 1 min",
        "i_max": "máx. leitura",
        "energy_day": "energia (kWh)",
        "peak_day": "demanda máx. (kW)",
        "mean_voltage": "tensão média (V)",
        "no_plant": "[plant] não configurado",
        "local_time": "hora local ({tz})",
        "subtitle": "Local {site} · medidor {meter} · {period} · fonte: {source}",
        "footer": (
            "Faixas: ANEEL, PRODIST Módulo 8 (tensão em regime permanente, 220/127 V: adequada 117–133 V; "
            "precária 110–117 e 133–135 V; crítica fora disso; frequência) e EN 50160 (sistemas sem "
            "conexão síncrona). Amostras com tensão < 0,1 pu (interrupções) ficam fora de tensão, "
            "frequência, fator de potência e desequilíbrio. Gerado por edgelog {version} em {when}."
        ),
        "day": "{d} de {month} de {y}",
        "week": "semana de {d1} a {d2}",
        "month": "{month} de {y}",
        "summary": "Resumo",
        "section_energy": "Energia e demanda",
        "section_capacity": "Capacidade (gerador e água, seção [plant])",
        "section_voltage": "Tensão (PRODIST Módulo 8)",
        "section_interruptions": "Interrupções",
        "section_freq": "Frequência (interrupções excluídas)",
        "section_pf": "Fator de potência",
        "section_balance": "Equilíbrio entre fases",
        "section_data": "Dados",
        "energy_int": "Energia ativa (integrada da potência)",
        "energy_phase": "Energia ativa, fase {k}",
        "reactive_int": "Energia reativa (integrada)",
        "energy_counter": "Energia ativa (contador do medidor)",
        "reactive_counter": "Energia reativa (contador do medidor)",
        "peak": "Demanda máxima (integração de 15 min)",
        "mean_demand": "Demanda média (tempo suprido)",
        "load_factor": "Fator de carga",
        "duration": "Potência excedida em 1 / 10 / 50 / 90 % do tempo",
        "plant": "Gerador / corrente nominal / potência da água",
        "s_peak": "Potência aparente máx. (média de 1 min)",
        "s_max": "Potência aparente máx. (uma leitura)",
        "s_hours": "Horas acima de 80 / 90 / 100 % da potência do gerador",
        "i_peak_phase": "Corrente máx. fase {k} (média de 1 min / leitura)",
        "i_hours": "Horas com corrente acima de 80 / 90 / 100 % da nominal",
        "hydraulic_hours": "Horas com carga acima da potência da água",
        "v_phase": "Tensão fase {k}: média / mín. / máx.",
        "v_line": "Tensão {a}-{b}: média / mín. / máx.",
        "windows": "Leituras de 10 min: válidas / expurgadas (interrupção / incompletas)",
        "phase_counts": "Leituras precárias / críticas, fase {k}",
        "drp": "DRP = nlp/1008 × 100 (limite 3 %)",
        "drc": "DRC = nlc/1008 × 100 (limite 0,5 %)",
        "indicative": "indicativo: {n} leituras válidas, menos de 1008 (100 × {x}/{n})",
        "campaign": "pior campanha de 1008 leituras ({c} no período)",
        "conform": "conforme",
        "violated": "acima do limite",
        "fd95": "Desequilíbrio de tensão FD95% / máx. (limite 3 %)",
        "interruptions": "Interrupções: número / longas (3 min ou mais)",
        "interrupted_time": "Tempo interrompido / a mais longa",
        "freq": "Frequência: média / mín. / máx.",
        "f_out_normal": "Fora de 59,9–60,1 Hz (regime normal)",
        "f_out_recovery": "Fora de 59,5–60,5 Hz (deve voltar em 30 s)",
        "f_out_extreme": "Fora de 56,5–66 Hz (limites extremos)",
        "f_above_62": "Acima de 62 Hz (no máximo 30 s)",
        "f_above_63_5": "Acima de 63,5 Hz (no máximo 10 s)",
        "f_below_58_5": "Abaixo de 58,5 Hz (no máximo 10 s)",
        "f_below_57_5": "Abaixo de 57,5 Hz (no máximo 5 s)",
        "f_out_island": "Ilha (EN 50160): dentro de 58,8–61,2 Hz (mín. 95 % da semana)",
        "f_out_island_wide": "Ilha (EN 50160): dentro de 51–69 Hz (100 % do tempo)",
        "events_n": "{n} eventos",
        "pf_total": "Total: fp (PRODIST) / ΣP/ΣS (referência 0,92)",
        "pf_phase": "Fase {k}: fp (PRODIST) / ΣP/ΣS",
        "inductive": "indutivo",
        "capacitive": "capacitivo",
        "kva_mean": "Potência aparente média por fase (kVA)",
        "kva_peak": "Potência aparente por fase na demanda máxima (kVA)",
        "neutral_row": "Corrente de neutro medida: média / máx. / na demanda máx.",
        "neutral_est": "Corrente de neutro estimada na demanda máx. (de P, Q e tensões)",
        "i_unbalance": "Desequilíbrio de corrente: ponderado pela corrente / na demanda máx.",
        "i2_i1": "I2/I1 estimado (de P, Q e tensões): ponderado / na demanda máx.",
        "i2_in": "I2/IN máx. (média de 15 min), limite contínuo 8 % (IEC 60034-1)",
        "hours_no_data": "Horas sem dados",
        "hours_failed": "  das quais falhas de leitura",
        "hours_no_rows": "  das quais sem registros (registrador desligado)",
        "coverage": "Cobertura (tempo com dados / período)",
        "rows": "Registros (falhas de leitura)",
        "bad_clock": "Registros com relógio não sincronizado (incluídos)",
        "interval": "Intervalo de amostragem",
        "at": "em",
        "none": "–",
        "days_title": "Dias",
        "day_cols": (
            "Dia|Energia (kWh)|Demanda máx. (kW)|Hora|Fator de carga|S máx. (kVA)|Interrupção (min)|"
            "Cobertura (%)"
        ),
        "events_title": "Eventos",
        "event_cols": "Início|Evento|Duração|Valor|Limite",
        "events_more": "… e mais {n} eventos não listados.",
        "no_events": "Nenhum evento.",
        "ev_interruption": "interrupção (tensão < 0,1 pu)",
        "ev_f_extreme": "frequência fora de 56,5–66 Hz",
        "ev_f_recovery": "fora de 59,5–60,5 Hz por mais de 30 s",
        "ev_f_above_62": "acima de 62 Hz por mais de 30 s",
        "ev_f_above_63.5": "acima de 63,5 Hz por mais de 10 s",
        "ev_f_below_58.5": "abaixo de 58,5 Hz por mais de 10 s",
        "ev_f_below_57.5": "abaixo de 57,5 Hz por mais de 5 s",
        "ev_overload": "sobrecarga: S acima da potência do gerador",
        "ev_no_rows": "sem registros (registrador desligado)",
        "ev_failed": "falhas de leitura do medidor",
        "notes_title": "Notas",
        "notes": (
            "Energia integrada: por minuto, potência média × tempo coberto pelas leituras. Contador: "
            "última menos primeira leitura do contador do medidor. Demanda: média da potência ativa em "
            "janelas fixas de 15 min; janelas com menos da metade das leituras ficam de fora. DRP/DRC "
            "(PRODIST Módulo 8): leituras de 10 min válidas (sem amostra interrompida e com leituras das "
            "três fases cobrindo ao menos 90 % da janela); nlp/nlc = maior número de leituras precárias/"
            "críticas entre as fases; com menos de 1008 leituras válidas o resultado é indicativo "
            "(100 × nlp/N); com mais, vale a pior campanha de 1008. Interrupção: amostra com alguma "
            "tensão fase-neutro abaixo de 0,1 pu; contada à parte e excluída de tensão, frequência, "
            "fator de potência, desequilíbrio e demanda. Frequência: tempo fora de cada faixa = "
            "amostras fora × intervalo; eventos quando uma faixa com tempo máximo é excedida por mais "
            "tempo. fp = P/√(P²+Q²) das energias do período (PRODIST); ΣP/ΣS inclui a distorção; "
            "indutivo quando Q > 0 (convenção de carga). I2/I1 e neutro estimado: fasores de tensão "
            "pelas seis tensões medidas (sequência positiva) e correntes por conj(S/V); só as três "
            "correntes não bastam. Capacidade: médias de 1 min contra a seção [plant] da configuração. "
            "Detalhes e fontes: docs/load-study.md."
        ),
        "figure_caption": (
            "Figura: (a)–(e) séries no tempo; (f)–(k) análises do estudo de carga. Áreas cinzas: sem "
            "registros; vermelhas: falhas de leitura; roxas: interrupção medida."
        ),
        "generated": "Gerado por edgelog {version} em {when}",
    },
    "en": {
        "title": "Load study",
        "study_title": "Load study: analyses",
        "panel_load": "(a) Load curve: active power",
        "panel_voltage": "(b) Phase-neutral voltage and PRODIST Module 8 ranges (220/127 V system)",
        "panel_freq": "(c) Frequency and bands (PRODIST: normal operation, recovery; EN 50160: island ±2 %)",
        "panel_pf": "(d) Power factor: fp = P/√(P²+Q²) (PRODIST) and ΣP/ΣS (with distortion)",
        "panel_reactive": "(e) Reactive power (positive: inductive)",
        "panel_typical": "(f) Typical day: 15-min demand, mean and P10–P90 band",
        "panel_duration": "(g) Load-duration curve (1-min means)",
        "panel_phases": "(h) Load per phase: current and neutral",
        "panel_days": "(i) Daily energy and peak demand",
        "panel_freq_load": "(j) Frequency against load (1-min means)",
        "panel_volt_load": "(k) Voltage against load (1-min means, mean of the phases)",
        "phase": "Phase {k}",
        "neutral": "Neutral",
        "total": "Total",
        "range": "min–max (total)",
        "range_v": "min–max (all phases)",
        "no_data": "no rows (logger off / power cut)",
        "failed": "meter did not answer",
        "dead": "measured interruption (voltage < 0.1 pu)",
        "adequate": "adequate",
        "precarious": "precarious",
        "critical": "critical",
        "freq_line": "frequency",
        "freq_band": "59.9–60.1 Hz (normal operation)",
        "freq_recovery": "59.5–60.5 Hz (recovery)",
        "freq_island": "58.8–61.2 Hz (island, EN 50160)",
        "pf_fp_total": "total fp (PRODIST)",
        "pf_true_total": "total ΣP/ΣS",
        "pf_ref": "reference 0.92",
        "weekday": "weekdays ({n} days)",
        "weekend": "weekends ({n} days)",
        "hour_of_day": "hour of day",
        "hours": "hours",
        "p_kw": "P (kW)",
        "s_kva": "S (kVA)",
        "generator": "generator {x} kVA",
        "water": "water {x} kW",
        "rated_current": "rated current {x} A",
        "i_mean": "mean",
        "i_peak": "max 1-min mean",
        "i_max": "max reading",
        "energy_day": "energy (kWh)",
        "peak_day": "peak demand (kW)",
        "mean_voltage": "mean voltage (V)",
        "no_plant": "[plant] not configured",
        "local_time": "local time ({tz})",
        "subtitle": "Site {site} · meter {meter} · {period} · source: {source}",
        "footer": (
            "Ranges: ANEEL, PRODIST Module 8 (steady-state voltage, 220/127 V: adequate 117–133 V; "
            "precarious 110–117 and 133–135 V; critical beyond; frequency) and EN 50160 (systems without "
            "a synchronous connection). Samples with a voltage below 0.1 pu (interruptions) are left out "
            "of voltage, frequency, power factor and unbalance. Made by edgelog {version} on {when}."
        ),
        "day": "{month} {d}, {y}",
        "week": "week of {d1} to {d2}",
        "month": "{month} {y}",
        "summary": "Summary",
        "section_energy": "Energy and demand",
        "section_capacity": "Capacity (generator and water, section [plant])",
        "section_voltage": "Voltage (PRODIST Module 8)",
        "section_interruptions": "Interruptions",
        "section_freq": "Frequency (interruptions left out)",
        "section_pf": "Power factor",
        "section_balance": "Balance between phases",
        "section_data": "Data",
        "energy_int": "Active energy (integrated from power)",
        "energy_phase": "Active energy, phase {k}",
        "reactive_int": "Reactive energy (integrated)",
        "energy_counter": "Active energy (meter counter)",
        "reactive_counter": "Reactive energy (meter counter)",
        "peak": "Peak demand (15-min integration)",
        "mean_demand": "Mean demand (supplied time)",
        "load_factor": "Load factor",
        "duration": "Power exceeded during 1 / 10 / 50 / 90 % of the time",
        "plant": "Generator / rated current / water's power",
        "s_peak": "Peak apparent power (1-min mean)",
        "s_max": "Peak apparent power (one reading)",
        "s_hours": "Hours above 80 / 90 / 100 % of the generator's rating",
        "i_peak_phase": "Peak current phase {k} (1-min mean / reading)",
        "i_hours": "Hours with a current above 80 / 90 / 100 % of rated",
        "hydraulic_hours": "Hours with the load above the water's power",
        "v_phase": "Voltage phase {k}: mean / min / max",
        "v_line": "Voltage {a}-{b}: mean / min / max",
        "windows": "10-min readings: valid / discarded (interruption / incomplete)",
        "phase_counts": "Precarious / critical readings, phase {k}",
        "drp": "DRP = nlp/1008 × 100 (limit 3 %)",
        "drc": "DRC = nlc/1008 × 100 (limit 0.5 %)",
        "indicative": "indicative: {n} valid readings, fewer than 1008 (100 × {x}/{n})",
        "campaign": "worst campaign of 1008 readings ({c} in the period)",
        "conform": "within the limit",
        "violated": "above the limit",
        "fd95": "Voltage unbalance FD95% / max (limit 3 %)",
        "interruptions": "Interruptions: number / long ones (3 min or more)",
        "interrupted_time": "Time interrupted / the longest",
        "freq": "Frequency: mean / min / max",
        "f_out_normal": "Outside 59.9–60.1 Hz (normal operation)",
        "f_out_recovery": "Outside 59.5–60.5 Hz (must be back within 30 s)",
        "f_out_extreme": "Outside 56.5–66 Hz (extreme limits)",
        "f_above_62": "Above 62 Hz (at most 30 s)",
        "f_above_63_5": "Above 63.5 Hz (at most 10 s)",
        "f_below_58_5": "Below 58.5 Hz (at most 10 s)",
        "f_below_57_5": "Below 57.5 Hz (at most 5 s)",
        "f_out_island": "Island (EN 50160): within 58.8–61.2 Hz (at least 95 % of a week)",
        "f_out_island_wide": "Island (EN 50160): within 51–69 Hz (100 % of the time)",
        "events_n": "{n} events",
        "pf_total": "Total: fp (PRODIST) / ΣP/ΣS (reference 0.92)",
        "pf_phase": "Phase {k}: fp (PRODIST) / ΣP/ΣS",
        "inductive": "inductive",
        "capacitive": "capacitive",
        "kva_mean": "Mean apparent power per phase (kVA)",
        "kva_peak": "Apparent power per phase at peak demand (kVA)",
        "neutral_row": "Measured neutral current: mean / max / at peak demand",
        "neutral_est": "Neutral current estimated at peak demand (from P, Q and voltages)",
        "i_unbalance": "Current unbalance: weighted by current / at peak demand",
        "i2_i1": "I2/I1 estimated (from P, Q and voltages): weighted / at peak demand",
        "i2_in": "I2/IN max (15-min mean), continuous limit 8 % (IEC 60034-1)",
        "hours_no_data": "Hours without data",
        "hours_failed": "  of which failed polls",
        "hours_no_rows": "  of which no rows (logger off)",
        "coverage": "Coverage (time with data / period)",
        "rows": "Rows (failed polls)",
        "bad_clock": "Rows taken with an unsynchronised clock (included)",
        "interval": "Sampling interval",
        "at": "at",
        "none": "–",
        "days_title": "Days",
        "day_cols": (
            "Day|Energy (kWh)|Peak demand (kW)|Time|Load factor|Max S (kVA)|Interruption (min)|Coverage (%)"
        ),
        "events_title": "Events",
        "event_cols": "Start|Event|Duration|Value|Limit",
        "events_more": "… and {n} more events not listed.",
        "no_events": "No events.",
        "ev_interruption": "interruption (voltage < 0.1 pu)",
        "ev_f_extreme": "frequency outside 56.5–66 Hz",
        "ev_f_recovery": "outside 59.5–60.5 Hz for more than 30 s",
        "ev_f_above_62": "above 62 Hz for more than 30 s",
        "ev_f_above_63.5": "above 63.5 Hz for more than 10 s",
        "ev_f_below_58.5": "below 58.5 Hz for more than 10 s",
        "ev_f_below_57.5": "below 57.5 Hz for more than 5 s",
        "ev_overload": "overload: S above the generator's rating",
        "ev_no_rows": "no rows (logger off)",
        "ev_failed": "meter did not answer",
        "notes_title": "Notes",
        "notes": (
            "Integrated energy: per minute, mean power × time covered by readings. Counter: last minus "
            "first reading of the meter's counter. Demand: mean active power over fixed 15-min windows; "
            "windows with less than half their readings are left out. DRP/DRC (PRODIST Module 8): valid "
            "10-min readings (no interrupted sample, readings of all three phases covering at least 90 % "
            "of the window); nlp/nlc = the largest number of precarious/critical readings among the "
            "phases; with fewer than 1008 valid readings the result is indicative (100 × nlp/N); with "
            "more, the worst campaign of 1008 counts. Interruption: a sample with a phase-neutral voltage "
            "below 0.1 pu; counted apart and left out of voltage, frequency, power factor, unbalance and "
            "demand. Frequency: time outside a band = samples outside × interval; events where a timed "
            "band is exceeded for longer than allowed. fp = P/√(P²+Q²) from the period's energies "
            "(PRODIST); ΣP/ΣS includes distortion; inductive when Q > 0 (load convention). I2/I1 and the "
            "estimated neutral: voltage phasors from the six measured voltages (positive sequence), "
            "currents as conj(S/V); the three currents alone are not enough. Capacity: 1-min means "
            "against the config's [plant] section. Details and sources: docs/load-study.md."
        ),
        "figure_caption": (
            "Figure: (a)–(e) time series; (f)–(k) load-study analyses. Grey areas: no rows; red: failed "
            "polls; purple: measured interruption."
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
STUDY_PANELS = (
    "panel_typical",
    "panel_duration",
    "panel_phases",
    "panel_days",
    "panel_freq_load",
    "panel_volt_load",
)


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
