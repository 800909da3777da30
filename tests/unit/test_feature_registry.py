"""Registry loading: the repo's registry, and errors that name file, object and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.feature.registry import RegistryError, load_registry, parse_duration

REPO_REGISTRY = Path(__file__).resolve().parents[2] / "deploy" / "features"

BASE = """
entities:
  - name: property
    join_keys: [{name: property_id, type: INT64}]
feature_views:
  - name: property_stats
    entity: property
    ttl: 2d
    features:
      - {name: stars, type: INT64}
      - {name: review_score, type: DOUBLE}
"""


def write(tmp_path: Path, text: str, name: str = "a.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_the_repo_registry_loads() -> None:
    reg = load_registry([REPO_REGISTRY])
    assert {"property_stats", "property_content", "property_pricing", "user_profile"} <= set(
        reg.views
    )
    assert len(reg.services["property_ranking_v1"].refs) == 20
    assert reg.views["property_pricing"].ttl_s == 3600
    assert reg.views["user_profile"].by_name["taste_embedding"].dimension == 16
    assert len(reg.revision) == 12


def test_revision_changes_exactly_with_the_files(tmp_path: Path) -> None:
    write(tmp_path, BASE)
    first = load_registry([tmp_path])
    assert load_registry([tmp_path]).revision == first.revision
    write(tmp_path, BASE.replace("ttl: 2d", "ttl: 3d"))
    second = load_registry([tmp_path])
    assert second.revision != first.revision
    assert second.views["property_stats"].revision != first.views["property_stats"].revision


@pytest.mark.parametrize(
    ("edit", "where", "message"),
    [
        (("type: INT64}\n      - {name: review", "type: INT}\n      - {name: review"),
         "feature_views[property_stats].features[stars].type", "unknown type 'INT'"),
        (("entity: property\n    ttl", "entity: hotel\n    ttl"),
         "feature_views[property_stats].entity", "unknown entity 'hotel'"),
        (("ttl: 2d", "ttl: two days"), "feature_views[property_stats].ttl", "not a duration"),
        (("name: stars", "name: Stars"), "features[Stars].name", "not lower_snake_case"),
        (("type: INT64}]", "type: DOUBLE}]"), "entities[property].join_keys[property_id].type",
         "join keys are one of"),
        (("name: stars", "name: property_id"), "features[property_id]", "join key"),
        (("review_score, type: DOUBLE}", "review_score, type: DOUBLE, dimension: 3}"),
         "features[review_score].dimension", "only FLOAT_VECTOR"),
        (("    ttl: 2d\n", "    ttl: 2d\n    colour: red\n"),
         "feature_views[property_stats].colour", "Extra inputs"),
    ],
)  # fmt: skip
def test_errors_name_file_object_and_field(
    tmp_path: Path, edit: tuple[str, str], where: str, message: str
) -> None:
    assert edit[0] in BASE
    path = write(tmp_path, BASE.replace(*edit))
    with pytest.raises(RegistryError) as info:
        load_registry([tmp_path])
    assert info.value.field.startswith(str(path))
    assert where in info.value.field
    assert message in info.value.message


def test_duplicates_across_files_name_both(tmp_path: Path) -> None:
    first = write(tmp_path, BASE, "a.yaml")
    second = write(tmp_path, BASE.split("feature_views:")[1].join(["feature_views:", ""]), "b.yaml")
    with pytest.raises(RegistryError) as info:
        load_registry([tmp_path])
    assert str(second) in info.value.field
    assert str(first) in info.value.message


def test_feature_service_refs_are_checked(tmp_path: Path) -> None:
    write(tmp_path, BASE + "feature_services:\n  - name: s\n    features: [property_stats:nope]\n")
    with pytest.raises(RegistryError, match=r"feature_services\[s\]\.features\[0\]"):
        load_registry([tmp_path])
    write(tmp_path, BASE + "feature_services:\n  - name: s\n    features: [property_stats]\n")
    with pytest.raises(RegistryError, match="not 'view:feature'"):
        load_registry([tmp_path])


def test_yaml_errors_and_missing_paths(tmp_path: Path) -> None:
    write(tmp_path, "entities: [\n")
    with pytest.raises(RegistryError, match="not valid YAML"):
        load_registry([tmp_path])
    with pytest.raises(RegistryError, match="no such file"):
        load_registry([tmp_path / "missing"])


@pytest.mark.parametrize(
    ("text", "seconds"), [("90", 90), ("90s", 90), ("15m", 900), ("6h", 21600), ("2w", 1209600)]
)
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds
