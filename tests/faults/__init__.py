"""Fault injection against the real `edgelog run`, a real MariaDB and real Modbus servers."""
