"""PAC3100 simulators on one Modbus TCP server: one bus, several unit ids.

`edgelog.simulate.SimulatorThread` serves one meter; meters on one RS485 line
(or behind one gateway) share one connection and answer by unit id, so this
serves several `Pac3100Simulator` devices on one pymodbus server, through the same
`SimulatorThread`. Each device counts its own requests, which is how the bench
counts Modbus requests per poll.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from pymodbus.simulator import SimDevice

from edgelog.simulate import Pac3100Simulator, SimulatorThread


@dataclass
class _Bus(Pac3100Simulator):
    """The devices of `members`, one per unit id, behind one server (`serve_tcp`)."""

    members: list[Pac3100Simulator] = field(default_factory=list)

    def device(self) -> list[SimDevice]:  # type: ignore[override]
        return [m.device() for m in self.members]


class BusSimulator(SimulatorThread):
    """A pymodbus TCP server on 127.0.0.1 (a free port) with one PAC3100 per unit id."""

    def __init__(self, unit_ids: Sequence[int]):
        self.sims = [Pac3100Simulator(unit_id=u, keep_served=16) for u in unit_ids]
        super().__init__(_Bus(members=self.sims))
        self.thread.name = "bench-modbus"

    @property
    def requests(self) -> int:
        return sum(s.requests for s in self.sims)

    def start(self, timeout: float = 10.0) -> BusSimulator:
        super().start(timeout)
        return self
