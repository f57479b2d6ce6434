import numpy as np
import pytest

from faceage.groups import SCHEMES, AgeScheme, get_scheme

# (scheme, [(age, expected group)...]) at every boundary
BOUNDARIES = {
    "ffhq10": [
        (0, 0),
        (2, 0),
        (3, 1),
        (6, 1),
        (7, 2),
        (9, 2),
        (10, 3),
        (14, 3),
        (15, 4),
        (19, 4),
        (20, 5),
        (29, 5),
        (30, 6),
        (39, 6),
        (40, 7),
        (49, 7),
        (50, 8),
        (69, 8),
        (70, 9),
        (116, 9),
    ],
    "agecgan6": [
        (0, 0),
        (18, 0),
        (19, 1),
        (29, 1),
        (30, 2),
        (39, 2),
        (40, 3),
        (49, 3),
        (50, 4),
        (59, 4),
        (60, 5),
        (99, 5),
    ],
    "acgan5": [(0, 0), (20, 0), (21, 1), (30, 1), (31, 2), (40, 2), (41, 3), (50, 3), (51, 4), (90, 4)],
    "caae10": [
        (0, 0),
        (5, 0),
        (6, 1),
        (10, 1),
        (11, 2),
        (15, 2),
        (16, 3),
        (20, 3),
        (21, 4),
        (30, 4),
        (31, 5),
        (40, 5),
        (41, 6),
        (50, 6),
        (51, 7),
        (60, 7),
        (61, 8),
        (70, 8),
        (71, 9),
        (100, 9),
    ],
    "utk14": [
        (0, 0),
        (5, 0),
        (6, 1),
        (10, 1),
        (11, 2),
        (15, 2),
        (16, 3),
        (20, 3),
        (21, 4),
        (25, 4),
        (26, 5),
        (30, 5),
        (31, 6),
        (40, 6),
        (41, 7),
        (50, 7),
        (51, 8),
        (60, 8),
        (61, 9),
        (70, 9),
        (71, 10),
        (80, 10),
        (81, 11),
        (90, 11),
        (91, 12),
        (100, 12),
        (101, 13),
        (116, 13),
    ],
}
SIZES = {"ffhq10": 10, "agecgan6": 6, "acgan5": 5, "caae10": 10, "utk14": 14}


@pytest.mark.parametrize("name", sorted(BOUNDARIES))
def test_scheme_boundaries(name):
    scheme = get_scheme(name)
    assert scheme.num_groups == SIZES[name]
    for age, group in BOUNDARIES[name]:
        assert scheme.group(age) == group, (name, age)


@pytest.mark.parametrize("name", sorted(SCHEMES))
def test_labels_round_trip_and_representative_age_inside_group(name):
    scheme = get_scheme(name)
    for g, label in enumerate(scheme.labels):
        assert scheme.parse(label) == g
        assert scheme.group(scheme.representative_age(g)) == g
    assert AgeScheme.from_dict(scheme.to_dict()) == scheme


def test_labels_read_like_the_papers():
    assert get_scheme("ffhq10").labels[:2] == ["0-2", "3-6"]
    assert get_scheme("ffhq10").labels[-1] == "70+"
    assert get_scheme("acgan5").labels == ["0-20", "21-30", "31-40", "41-50", "51+"]
    assert get_scheme("utk14").labels[-1] == "101+"


def test_custom_edges():
    scheme = get_scheme("0,20,40,60")
    assert scheme.labels == ["0-19", "20-39", "40-59", "60+"]
    assert [scheme.group(a) for a in (0, 19, 20, 59, 60, 80)] == [0, 0, 1, 2, 3, 3]


def test_parse_age_or_label():
    scheme = get_scheme("ffhq10")
    assert scheme.parse(70) == scheme.parse("70") == scheme.parse("70+") == 9
    assert scheme.parse("30-39") == 6
    with pytest.raises(ValueError, match="30-40.*groups: 0-2"):
        scheme.parse("30-40")


@pytest.mark.parametrize("bad", ["", "ffhq", "10,5", "5,10,20"])
def test_bad_scheme_specs_are_named(bad):
    with pytest.raises(ValueError, match="scheme|edges"):
        get_scheme(bad)


def test_negative_age_rejected():
    with pytest.raises(ValueError, match="-1"):
        get_scheme("utk14").group(-1)


@pytest.mark.parametrize("name", sorted(SCHEMES))
def test_positions_run_through_the_representative_ages_and_back(name):
    scheme = get_scheme(name)
    for g in range(scheme.num_groups):
        assert scheme.position(scheme.representative_age(g)) == g
        assert scheme.age_at(g) == scheme.representative_age(g)
    for position in np.linspace(0, scheme.num_groups - 1, 37):
        assert scheme.position(scheme.age_at(position)) == pytest.approx(position, abs=1e-9)
    ages = np.linspace(0, 120, 241)
    positions = [scheme.position(a) for a in ages]
    assert all(b >= a for a, b in zip(positions, positions[1:], strict=False)), "position never falls with age"


def test_position_interpolates_between_groups_and_clamps_at_the_ends():
    scheme = get_scheme("ffhq10")  # 30-39 stands for 34.5, 40-49 for 44.5; 0-2 for 1, 70+ for 75
    assert scheme.position(37) == pytest.approx(6.25)
    assert scheme.age_at(6.25) == pytest.approx(37)
    assert scheme.position(0) == scheme.position(1) == 0.0
    assert scheme.position(75) == scheme.position(110) == 9.0
    with pytest.raises(ValueError, match="-1"):
        scheme.position(-1)
    for bad in (-0.1, 9.5):
        with pytest.raises(ValueError, match=rf"position must be in \[0, 9\], got {bad}"):
            scheme.age_at(bad)


def test_parse_position_takes_ages_and_labels():
    scheme = get_scheme("ffhq10")
    assert scheme.parse_position(37) == scheme.parse_position("37") == scheme.parse_position(" 37.0 ") == 6.25
    assert scheme.parse_position("30-39") == 6.0 and scheme.parse_position("70+") == 9.0
    assert scheme.parse_position(34.5) == scheme.parse_position("30-39")  # a group's age is that group exactly
    assert scheme.parse("37") == 6, "parse still names the group an age lies in"
    with pytest.raises(ValueError, match="'30-40' is neither an age in years nor a group.*groups: 0-2"):
        scheme.parse_position("30-40")
    with pytest.raises(ValueError, match="neither an age"):
        scheme.parse_position(True)
