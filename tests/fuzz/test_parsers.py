"""The network parsers on the committed fuzz corpus and on bounded random input.

The coverage-guided run is ``benchmarks/fuzz_run.py`` (atheris, optional); the suite does
not need atheris: it replays the seed corpus through the same target and runs a
derandomized hypothesis search over it, so a parser that starts raising anything but
its declared error fails here.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz.targets import PARSERS, corpus_inputs, parse_one, selector

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "150"))


def test_the_corpus_has_seeds_for_every_parser() -> None:
    names = [name for name, _ in corpus_inputs()]
    for parser in PARSERS:
        assert any(name.startswith(f"{parser}-") for name in names), parser


@pytest.mark.parametrize(("name", "data"), corpus_inputs())
def test_every_seed_parses_without_a_crash(name: str, data: bytes) -> None:
    parse_one(data)


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    parser=st.sampled_from(list(PARSERS)),
    seed=st.sampled_from([data for _, data in corpus_inputs()]),
    cuts=st.lists(st.tuples(st.integers(0, 4000), st.binary(max_size=8)), max_size=4),
)
def test_mutated_seeds_parse_without_a_crash(
    parser: str, seed: bytes, cuts: list[tuple[int, bytes]]
) -> None:
    """Seeds with bytes overwritten or inserted, sent to any parser."""
    body = bytearray(seed[1:])
    for position, patch in cuts:
        at = position % (len(body) + 1)
        body[at : at + len(patch) // 2] = patch
    parse_one(selector(parser) + bytes(body))
