"""edgelog: a store-and-forward data logger for small power plants.

The data path, one module per stage::

    config -> profiles -> meter (read) -> buffer (store) -> sync (forward) -> cli
"""

__version__ = "0.1.0"
