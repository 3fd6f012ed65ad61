"""Golden IR dumps for every model in models/: the dump is deterministic and reviewed.

Regenerate after an intended change with ``PRUNEPASS_UPDATE_GOLDEN=1 pytest tests/test_golden.py``
and read the diff."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import models
from prunepass import analyze

GOLDEN = Path(__file__).parent / "golden"


@pytest.fixture(scope="module", params=models.names())
def analysed(request):
    model, inputs = models.get(request.param)
    return request.param, analyze(model, inputs)


def test_golden_dump(analysed):
    name, a = analysed
    text = a.dump()
    path = GOLDEN / f"{name}.txt"
    if os.environ.get("PRUNEPASS_UPDATE_GOLDEN") == "1" or not path.exists():
        if os.environ.get("CI") and not path.exists():
            pytest.fail(f"golden file {path} is missing")
        path.write_text(text)
    assert text == path.read_text(), f"IR dump of {name} changed; see PRUNEPASS_UPDATE_GOLDEN in this file"


def test_zoo_model_has_prunable_groups_and_no_barrier(analysed):
    name, a = analysed
    assert a.prunable_groups, f"{name}: nothing prunable"
    assert not a.barriers, f"{name}: unexpected barriers {a.barriers}"
    # every unprunable group says why
    assert all(g.reasons for g in a.unprunable_groups)
    # labels are contiguous and cover every group exactly once
    starts = [g.labels[0] for g in a.groups]
    assert starts == sorted(starts)
    assert all(g.labels[1] - g.labels[0] == g.size for g in a.groups)


def test_dump_is_idempotent(analysed):
    name, a = analysed
    assert a.dump() == a.dump()
    if name in ("resnet18", "vit", "llama"):
        model, inputs = models.get(name)
        assert analyze(model, inputs).dump() == a.dump()


def test_json_matches_text(analysed):
    name, a = analysed
    d = a.to_dict()
    assert [g["name"] for g in d["groups"]] == [g.name for g in a.groups]
    assert sum(g["prunable"] for g in d["groups"]) == len(a.prunable_groups)
