"""The manifest's ``distributed`` record: round trip, older manifests without it, bad values."""

from __future__ import annotations

import json

import pytest

from spectra.errors import SpectraError
from spectra.snapshots import Distributed, Manifest, Target


def manifest(**fields) -> Manifest:
    return Manifest(run="r", method="ft", targets={"q": Target("dense", (4, 4))}, **fields)


def test_round_trip():
    record = Distributed("zero3", 8, "fp32_master")
    assert Manifest.from_json(manifest(distributed=record).to_json()).distributed == record


def test_older_manifests_without_the_field_read_as_one_process():
    raw = json.loads(manifest().to_json())
    del raw["distributed"]
    assert Manifest.from_json(json.dumps(raw)).distributed is None


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"engine": "horovod", "world_size": 2}, "distributed.engine"),
        ({"engine": "fsdp2", "world_size": 0}, "distributed.world_size"),
        ({"engine": "fsdp2", "world_size": 2, "weights": "bf16"}, "distributed.weights"),
        ({"engine": "fsdp2", "world_size": "2"}, "world_size"),
        ({"engine": "fsdp2", "world_size": 2, "ranks": [0, 1]}, "ranks"),
        ({"world_size": 2}, "engine"),
        ("fsdp2", "distributed"),
    ],
)
def test_bad_records_are_refused_naming_the_field(value, message):
    raw = json.loads(manifest().to_json()) | {"distributed": value}
    with pytest.raises(SpectraError, match=message):
        Manifest.from_json(json.dumps(raw), "manifest.json")
