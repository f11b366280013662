"""The supervisor's TOML config: reading and validation into frozen dataclasses
(:mod:`.model`), ``[[schedulers]]`` (:mod:`.schedulers`), the table reader
(:mod:`.tomltable`) and units (:mod:`.units`, also used by the queue). Import
the module you need: this package imports nothing itself, so a producer that
only needs units never loads the config model."""
