"""The simulator's plant: an electronic load controller, and disturbances on a schedule.

Expected values are worked out by hand from the model's stated rules (see
edgelog/simulate.py): below the water's power the controller holds 60 Hz; above
it, with the village demanding D against the water's W, f = 60 / sqrt(D/W) and
every power x W/D. A real pymodbus server and client show an outage on the wire.
"""

from __future__ import annotations

import datetime as dt
import math
import re

import pytest
from helpers import edgelog
from pymodbus.client import ModbusTcpClient

from edgelog.errors import EdgelogError
from edgelog.simulate import Pac3100Simulator, Plant, SimulatorThread, parse_schedule, plant_values

NOON_UTC = dt.datetime(2026, 6, 2, 15, tzinfo=dt.UTC).timestamp()  # 12:00 in Brasília
EVENING_UTC = dt.datetime(2026, 6, 2, 22, 30, tzinfo=dt.UTC).timestamp()  # 19:30, the peak


def total(v: dict[str, float], prefix: str = "potencia_ativa") -> float:
    return sum(v[f"{prefix}_l{k}"] for k in (1, 2, 3))


def test_below_the_waters_power_the_load_controller_holds_60_hz() -> None:
    plant = Plant(hydraulic_w=10_000.0)  # the evening peak is 9 kW: always below
    for hour in range(0, 24 * 3600, 600):
        v = plant_values(NOON_UTC + hour, plant=plant)
        assert total(v) < 10_000.0 and abs(v["frequencia"] - 60.0) <= 0.05


def test_above_it_frequency_and_voltage_sag_together_and_the_load_gets_the_waters_power() -> None:
    free = plant_values(EVENING_UTC, plant=Plant(hydraulic_w=100_000.0))  # as much water as wanted
    demand = total(free)
    plant = Plant(hydraulic_w=demand / 1.21)  # the village asks 1.21 x the water: sqrt(1.21) = 1.1
    v = plant_values(EVENING_UTC, plant=plant)
    assert total(v) == pytest.approx(demand / 1.21)  # the load gets the water's power
    assert v["frequencia"] == pytest.approx(free["frequencia"] / 1.1)  # e.g. 60 -> 54.5 Hz
    assert v["tensao_l1_n"] == pytest.approx(free["tensao_l1_n"] / 1.1)
    assert v["corrente_l1"] == pytest.approx(free["corrente_l1"] / 1.1)  # S / V: (1/1.21) / (1/1.1)


def test_an_outage_is_zero_volts_amps_watts_and_hertz_and_the_counters_stand() -> None:
    plant = Plant(schedule=parse_schedule("outage@2026-06-02T15:00Z+20m"))
    inside = plant_values(NOON_UTC + 600, plant=plant)
    for name, value in inside.items():
        if not name.startswith("energia"):
            assert value == 0.0, name
    after = plant_values(NOON_UTC + 1200, plant=plant)  # the 20 minutes are over
    assert after["tensao_l1_n"] > 120 and abs(after["frequencia"] - 60) < 0.1
    assert plant_values(NOON_UTC - 1, plant=plant)["tensao_l1_n"] > 120


def test_overloads_and_held_voltages_every_day_at_local_time() -> None:
    plant = Plant(hydraulic_w=8000.0, schedule=parse_schedule("overload@12:00+30m=1.44,voltage@12:00+1h=108"))
    for day in range(3):  # 12:00-12:30 local, every day: demand 1.44 x 8 kW -> sqrt(1.44) = 1.2
        v = plant_values(NOON_UTC + day * 86400 + 60, plant=plant)
        assert total(v) == pytest.approx(8000.0)
        assert v["frequencia"] == pytest.approx(60.0 / 1.2, abs=0.05 / 1.2)
        assert v["tensao_l1_n"] == pytest.approx(108.0 / 1.2, abs=0.4 / 1.2)  # held 108 V, sagged
        later = plant_values(NOON_UTC + day * 86400 + 2400, plant=plant)  # 12:40: voltage only
        assert later["tensao_l1_n"] == pytest.approx(108.0, abs=0.4) and abs(later["frequencia"] - 60) < 0.1


def test_a_bad_schedule_is_one_clear_error() -> None:
    for spec, message in [
        ("blackout@19:00+2m", "say one of outage, overload, voltage"),
        ("outage@19:00", "no +DURATION"),
        ("outage@19:00+2m=3", "an outage has no =VALUE"),
        ("overload@19:00+2m", "overload needs =VALUE in 1–10"),
        ("overload@19:00+2m=0.5", "overload needs =VALUE in 1–10"),
        ("voltage@19:00+2x=100", "DURATION is a number and s, m or h"),
        ("voltage@25:00+1h=100", "HH:MM is not a time of day"),
        ("outage@yesterday+1h", "WHEN is an ISO date-time or HH:MM"),
        ("outage@19:00+-1h", "DURATION must be positive"),
    ]:
        with pytest.raises(EdgelogError, match=re.escape(message)):
            parse_schedule(spec)
    result = edgelog("simulate", "--port", "0", "--schedule", "overload@19:00+2m=0.5")
    assert result.returncode == 1
    (line,) = result.stderr.splitlines()
    assert line.startswith("edgelog: error: simulate --schedule: 'overload@19:00+2m=0.5'")


def test_an_outage_on_the_wire() -> None:
    """The real server serves the disturbed values: a pymodbus client reads 0 V and 0 Hz."""
    plant = Plant(schedule=parse_schedule("outage@2026-06-02T15:00Z+20m"))
    sim = Pac3100Simulator(clock=lambda: NOON_UTC + 300, plant=plant)
    thread = SimulatorThread(sim).start()
    client = ModbusTcpClient("127.0.0.1", port=thread.port, timeout=2)
    try:
        assert client.connect()
        answer = client.read_holding_registers(1, count=40, device_id=126)
        assert not answer.isError()
        values = client.convert_from_registers(answer.registers, client.DATATYPE.FLOAT32)
        assert values[0] == 0.0 and values[19] == 0.0  # tensao_l1_n, frequencia
        sim.clock = lambda: NOON_UTC + 1500  # after the outage
        answer = client.read_holding_registers(1, count=40, device_id=126)
        values = client.convert_from_registers(answer.registers, client.DATATYPE.FLOAT32)
        assert values[0] > 120 and math.isclose(values[19], 60.0, abs_tol=0.1)
    finally:
        client.close()
        thread.stop()
