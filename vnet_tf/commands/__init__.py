"""The command-line programs: train, evaluate, export (absl flags), installed as
``vnet-train``, ``vnet-evaluate`` and ``vnet-export`` and run by the top-level scripts of the
same names. Flags live here, never in the library."""
