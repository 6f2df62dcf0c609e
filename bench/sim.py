"""PAC3100 simulators on one Modbus TCP server: one bus, several unit ids.

`edgelog.simulate.SimulatorThread` serves one meter; meters on one RS485 line
(or behind one gateway) share one connection and answer by unit id, so this
serves several `Pac3100Simulator` devices on one pymodbus server. Each device
counts its own requests, which is how the bench counts Modbus requests per poll.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

from pymodbus.server import ModbusTcpServer

from edgelog.simulate import Pac3100Simulator


class BusSimulator:
    """A pymodbus TCP server on 127.0.0.1 (a free port) with one PAC3100 per unit id."""

    def __init__(self, unit_ids: Sequence[int]):
        self.sims = [Pac3100Simulator(unit_id=u, keep_served=16) for u in unit_ids]
        self.port = 0
        self.loop = asyncio.new_event_loop()
        self.server: ModbusTcpServer | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.thread = threading.Thread(target=self._main, name="bench-modbus", daemon=True)

    @property
    def requests(self) -> int:
        return sum(s.requests for s in self.sims)

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._serve())
        except BaseException as exc:  # reported by start()
            self._error = exc
            self._ready.set()
        finally:
            self.loop.close()

    async def _serve(self) -> None:
        devices = [s.device() for s in self.sims]
        server = ModbusTcpServer(devices if len(devices) > 1 else devices[0], address=("127.0.0.1", 0))
        await server.serve_forever(background=True)
        self.server = server
        self.port = server.transport.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            await server.serving
        finally:
            await server.shutdown()

    def start(self, timeout: float = 10.0) -> BusSimulator:
        self.thread.start()
        if not self._ready.wait(timeout) or self._error:
            raise RuntimeError(f"Modbus simulator did not start: {self._error}")
        return self

    def stop(self) -> None:
        if self.server is not None and self.loop.is_running():
            asyncio.run_coroutine_threadsafe(self.server.shutdown(), self.loop).result(10)
        self.thread.join(10)
