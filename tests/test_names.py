"""Names Google accepts: run ids, label values, VM names, and refused collisions."""

from __future__ import annotations

import random
import re
import string
from datetime import UTC, datetime, timedelta, timezone

import pytest

from parallel_engine.errors import NameCollisionError
from parallel_engine.names import (
    gce_name,
    label_value,
    new_run_id,
    short_hash,
    unique_names,
    vm_name,
)
from tests.hostile import NAME_TEXTS

GCE_NAME = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")
LABEL_VALUE = re.compile(r"[a-z0-9_-]{0,63}")
RUN_ID = re.compile(r"\d{8}-\d{6}-[a-z0-9]{5}")
SUFFIX = re.compile(r"-[0-9a-f]{8}$")



def random_texts(count: int = 500) -> list[str]:
    rng = random.Random(1234)
    alphabet = string.printable + "éß漢🚀İ\u2028\x00-_"
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 90))) for _ in range(count)]


RANDOM = random_texts()


def test_run_id_format_is_utc_time_and_five_random_chars() -> None:
    now = datetime(2024, 3, 9, 7, 5, 1, tzinfo=UTC)
    assert new_run_id(now, "ab1c9") == "20240309-070501-ab1c9"


def test_run_id_converts_aware_times_to_utc_and_takes_naive_as_utc() -> None:
    paris = timezone(timedelta(hours=2))
    assert new_run_id(datetime(2024, 3, 9, 9, 0, 0, tzinfo=paris), "aaaaa").startswith(
        "20240309-070000-"
    )
    assert new_run_id(datetime(2024, 3, 9, 7, 0, 0), "aaaaa") == "20240309-070000-aaaaa"


def test_run_ids_are_valid_labels_and_differ_between_calls() -> None:
    ids = {new_run_id() for _ in range(200)}
    assert len(ids) == 200
    for run_id in ids:
        assert RUN_ID.fullmatch(run_id)
        assert label_value(run_id) == run_id, "a run id is already a valid label value"


def test_run_ids_sort_by_time() -> None:
    base = datetime(2024, 12, 31, 23, 59, 58, tzinfo=UTC)
    rands = ["zzzzz", "00000", "zzzzz", "00000", "mmmmm"]
    ids = [new_run_id(base + timedelta(seconds=s), r) for s, r in enumerate(rands)]
    assert ids == sorted(ids)


@pytest.mark.parametrize("rand", ["ABCDE", "abcd", "abcdef", "ab-de"])
def test_run_id_rejects_a_bad_random_part(rand: str) -> None:
    with pytest.raises(ValueError):
        new_run_id(rand=rand)


@pytest.mark.parametrize("text", ["", "abc", "a-b_c", "0", "x" * 63, "20240101-000000-abcde"])
def test_label_value_keeps_valid_text_unchanged(text: str) -> None:
    assert label_value(text) == text


@pytest.mark.parametrize("text", ["ABC", "a.b", "a b", "é", "x" * 64])
def test_label_value_adds_hash_suffix_when_changed_or_cut(text: str) -> None:
    value = label_value(text)
    assert value != text
    assert value.endswith("-" + short_hash(text))
    assert len(value) <= 63


def test_label_value_suffix_keeps_lowercase_twins_apart() -> None:
    assert label_value("Run") != label_value("run")
    assert label_value("a.b") != label_value("a-b")


@pytest.mark.parametrize("text", NAME_TEXTS)
def test_label_value_is_always_valid_and_deterministic(text: str) -> None:
    value = label_value(text)
    assert LABEL_VALUE.fullmatch(value), value
    assert label_value(text) == value
    if value != text:
        assert SUFFIX.search(value)


def test_label_value_is_valid_for_random_texts() -> None:
    for text in RANDOM:
        value = label_value(text)
        assert LABEL_VALUE.fullmatch(value), (text, value)
        assert value == text or SUFFIX.search(value)


@pytest.mark.parametrize("parts", [("abc",), ("pe", "run", "w-0"), ("a1",), ("x" * 63,)])
def test_gce_name_keeps_valid_names_unchanged(parts: tuple[str, ...]) -> None:
    assert gce_name(*parts) == "-".join(parts)


@pytest.mark.parametrize(
    ("parts", "prefix"),
    [
        (("Worker",), "worker-"),
        (("my_task",), "my-task-"),
        (("1abc",), "pe-1abc-"),
        (("-abc",), "pe--abc-"),
        (("abc-",), "abc-"),
        (("x" * 64,), "x" * 54 + "-"),
        (("a", ""), "a-"),
    ],
)
def test_gce_name_adds_hash_suffix_when_changed_or_cut(parts: tuple[str, ...], prefix: str) -> None:
    name = gce_name(*parts)
    assert name == prefix + short_hash("-".join(parts))
    assert GCE_NAME.fullmatch(name)


def test_gce_name_prefix_counts_as_a_change() -> None:
    assert gce_name("1x") != gce_name("pe-1x")
    assert gce_name("pe-1x") == "pe-1x"


def test_gce_name_with_no_parts_is_still_valid() -> None:
    assert GCE_NAME.fullmatch(gce_name())


@pytest.mark.parametrize("text", NAME_TEXTS)
def test_gce_name_is_always_valid_and_deterministic(text: str) -> None:
    name = gce_name(text)
    assert GCE_NAME.fullmatch(name), name
    assert gce_name(text) == name
    if name != text:
        assert SUFFIX.search(name)


def test_gce_name_is_valid_for_random_texts() -> None:
    for text in RANDOM:
        name = gce_name(text)
        assert GCE_NAME.fullmatch(name), (text, name)
        assert name == text or SUFFIX.search(name)


def test_gce_name_of_hostile_parts_is_valid() -> None:
    texts = NAME_TEXTS + RANDOM
    for first, second in zip(texts, reversed(texts), strict=True):
        assert GCE_NAME.fullmatch(gce_name(first, second))


def test_vm_name_is_readable_and_valid() -> None:
    run_id = "20240309-070501-ab1c9"
    assert vm_name(run_id, "w-3") == "pe-20240309-070501-ab1c9-w-3"
    for worker in NAME_TEXTS + RANDOM:
        assert GCE_NAME.fullmatch(vm_name(run_id, worker))


def test_vm_names_stay_unique_when_long_workers_are_cut() -> None:
    run_id = "20240309-070501-ab1c9"
    long = "worker-" + "x" * 60
    names = {w: vm_name(run_id, w) for w in (long + "1", long + "2")}
    unique_names(names, "worker")
    assert len(set(names.values())) == 2


def test_unique_names_accepts_distinct_names() -> None:
    unique_names({"a": "a", "B": gce_name("B"), "b": "b"}, "task")


def test_unique_names_refuses_a_collision_naming_both_originals() -> None:
    with pytest.raises(NameCollisionError) as info:
        unique_names({"a.1": "a-1", "x": "x", "a_1": "a-1"}, "task")
    message = str(info.value)
    assert "'a.1'" in message and "'a_1'" in message and "'a-1'" in message
    assert info.value.hint


def test_unique_names_counts_further_collisions() -> None:
    with pytest.raises(NameCollisionError, match=r"and 2 more"):
        unique_names({"a": "n", "b": "n", "c": "m", "d": "m", "e": "n"}, "worker")
