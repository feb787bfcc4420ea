"""Scenario files: every number of the model, with sane defaults, validated by pydantic.

A scenario is YAML, TOML or JSON. Anything left out takes the default documented here, so the
smallest scenario is ``{}``. A wrong file gets one message per problem, naming the file, the line and
the field path::

    scenarios/x.yaml:14 services.llm.capacity: must be >= 1, got 0

Problems are listed in line order. A broken file (bad syntax, not UTF-8) is one such line too. Empirical
distributions read from a CSV (anywhere in the scenario) are read when the scenario is loaded, relative
to the scenario file's folder, so a missing or bad CSV is a load-time problem.

Limits. A file is refused, with one line saying which limit and where, if it is

* larger than :data:`MAX_FILE_BYTES` (1 MiB; nothing past it is read, so even a link to ``/dev/zero`` is
  refused at once);
* nested deeper than :data:`MAX_DEPTH` (32) lists/mappings (a scenario needs 6; the parsers recurse);
* holding an integer of more than :data:`MAX_INT_DIGITS` (640) digits (Python refuses ``int(str)`` beyond
  4300 by default, 640 at the lowest setting);
* YAML whose aliases expand to more than :data:`MAX_ALIAS_NODES` (100,000) nodes, or an alias inside its
  own anchor (counted while composing, so a "billion laughs" is refused in milliseconds);
* YAML with tags beyond the safe ones (``!!python/object`` and friends: only the safe loader is used);
* an empirical CSV larger than :data:`pipesim.distributions.MAX_CSV_BYTES` (64 MiB), with a field over
  Python's csv field limit (128 KiB), not UTF-8, empty, without the column, or with a value that is not
  a finite number >= 0 (the message names the CSV's line).

>>> scn = Scenario.model_validate({"name": "tiny", "sessions": {"arrivals": {"kind": "at_once", "count": 2}}})
>>> scn.services.llm.capacity
12
>>> scn.override({"services.llm.capacity": 2}).services.llm.capacity
2

Where each part lives (everything below is importable from ``pipesim.scenario`` as well):

* :mod:`pipesim.scenario.schema`: the pydantic models, their defaults and bounds, and :func:`validate_scenario`;
* :mod:`pipesim.scenario.validation`: pydantic's errors as one line each (file, line, field), empirical CSVs read;
* :mod:`pipesim.scenario.parsing`: YAML, TOML and JSON parsed within the limits, and the line of a field path;
* :mod:`pipesim.scenario.files`: :func:`load_scenario`, the bundled scenarios (data in ``pipesim/scenarios/``),
  :func:`as_scenario`.
"""

from pipesim.errors import ScenarioError
from pipesim.scenario.files import (
    BUNDLED_DIR,
    MAX_FILE_BYTES,
    as_scenario,
    bundled_scenarios,
    load_scenario,
    scenario_path,
)
from pipesim.scenario.parsing import MAX_ALIAS_NODES, MAX_DEPTH, MAX_INT_DIGITS
from pipesim.scenario.schema import (
    LLM,
    MAX_RAMP_CANDIDATES,
    MAX_RATE_PER_S,
    MAX_TIME_S,
    MAX_UTTERANCE_S,
    STT,
    TTS,
    Arrivals,
    AtOnce,
    Audio,
    Decibels,
    Dist,
    Kafka,
    NonNeg,
    Outage,
    Poisson,
    Probability,
    Quality,
    Ramp,
    Rate,
    Scenario,
    ScheduledOutage,
    ScriptedSession,
    ScriptStep,
    Services,
    Sessions,
    Stalls,
    Time,
    validate_scenario,
)

__all__ = [
    "BUNDLED_DIR", "LLM", "MAX_ALIAS_NODES", "MAX_DEPTH", "MAX_FILE_BYTES", "MAX_INT_DIGITS", "MAX_RAMP_CANDIDATES",
    "MAX_RATE_PER_S", "MAX_TIME_S", "MAX_UTTERANCE_S", "STT", "TTS", "Arrivals", "AtOnce", "Audio", "Decibels", "Dist",
    "Kafka", "NonNeg", "Outage", "Poisson", "Probability", "Quality", "Ramp", "Rate", "Scenario", "ScenarioError",
    "ScheduledOutage", "ScriptStep", "ScriptedSession", "Services", "Sessions", "Stalls", "Time", "as_scenario",
    "bundled_scenarios", "load_scenario", "scenario_path", "validate_scenario",
]
