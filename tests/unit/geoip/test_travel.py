import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from geoip import EARTH_RADIUS_KM, Location, distance_km, is_impossible_travel, travel_speed_kmh

LONDON = Location(country="GB", latitude=51.5074, longitude=-0.1278, accuracy_km=0)
PARIS = Location(country="FR", latitude=48.8566, longitude=2.3522, accuracy_km=0)
TOKYO = Location(country="JP", latitude=35.6762, longitude=139.6503, accuracy_km=0)
MINUTES_10 = 600.0
HOURS_10 = 36_000.0


def place(latitude: float, longitude: float, accuracy_km: float | None = None) -> Location:
    return Location(latitude=latitude, longitude=longitude, accuracy_km=accuracy_km)


def test_distance_matches_known_great_circle_distances() -> None:
    assert distance_km(LONDON, PARIS) == pytest.approx(343.6, abs=0.5)
    assert distance_km(LONDON, TOKYO) == pytest.approx(9558.6, abs=1)
    assert distance_km(place(0, 0), place(90, 0)) == pytest.approx(math.pi / 2 * EARTH_RADIUS_KM)


def test_antipodes_are_half_the_circumference_apart() -> None:
    assert distance_km(place(0, 0), place(0, 180)) == pytest.approx(math.pi * EARTH_RADIUS_KM)
    assert distance_km(place(90, 0), place(-90, 0)) == pytest.approx(math.pi * EARTH_RADIUS_KM)


def test_distance_crosses_the_date_line_the_short_way() -> None:
    assert distance_km(place(0, 179.5), place(0, -179.5)) == pytest.approx(111.2, abs=0.1)


def test_unknown_or_local_places_have_no_distance() -> None:
    assert distance_km(LONDON, Location()) is None
    assert distance_km(Location(country="DE"), LONDON) is None
    assert distance_km(Location(local=True, latitude=1, longitude=1), LONDON) is None


coordinates = st.builds(
    place,
    st.floats(min_value=-90, max_value=90),
    st.floats(min_value=-180, max_value=180),
)


@given(coordinates, coordinates)
def test_distance_is_symmetric_and_bounded(a: Location, b: Location) -> None:
    d = distance_km(a, b)
    assert d is not None
    assert d == pytest.approx(distance_km(b, a))
    assert 0.0 <= d <= math.pi * EARTH_RADIUS_KM + 1e-6


@given(coordinates)
def test_a_place_is_no_distance_from_itself(a: Location) -> None:
    assert distance_km(a, a) == pytest.approx(0.0, abs=1e-6)


def test_speed_is_distance_over_time() -> None:
    speed = travel_speed_kmh(LONDON, PARIS, 3600)
    assert speed == pytest.approx(343.6, abs=0.5)


def test_speed_takes_both_accuracy_radii_off_the_distance() -> None:
    fuzzy_london = place(51.5074, -0.1278, accuracy_km=100)
    fuzzy_paris = place(48.8566, 2.3522, accuracy_km=200)
    speed = travel_speed_kmh(fuzzy_london, fuzzy_paris, 3600)
    assert speed == pytest.approx(43.6, abs=0.5)


def test_overlapping_accuracy_circles_mean_no_travel_at_all() -> None:
    vague_london = place(51.5074, -0.1278, accuracy_km=200)
    vague_paris = place(48.8566, 2.3522, accuracy_km=200)
    assert travel_speed_kmh(vague_london, vague_paris, 1) == 0.0
    assert travel_speed_kmh(vague_london, vague_paris, 0) == 0.0


def test_a_zero_time_jump_between_separate_places_is_infinitely_fast() -> None:
    assert travel_speed_kmh(LONDON, PARIS, 0) == math.inf


def test_the_order_of_the_two_sign_ins_does_not_change_the_speed() -> None:
    assert travel_speed_kmh(LONDON, PARIS, -3600) == travel_speed_kmh(PARIS, LONDON, 3600)


def test_speed_is_unknown_when_a_place_is() -> None:
    assert travel_speed_kmh(LONDON, Location(), 60) is None


def test_london_to_tokyo_in_ten_minutes_is_impossible() -> None:
    assert is_impossible_travel(LONDON, TOKYO, MINUTES_10)


def test_london_to_tokyo_on_a_long_haul_flight_is_possible() -> None:
    assert not is_impossible_travel(LONDON, TOKYO, 14 * 3600)


def test_london_to_paris_in_ten_hours_is_possible() -> None:
    assert not is_impossible_travel(LONDON, PARIS, HOURS_10)


def test_the_speed_limit_is_configurable() -> None:
    one_hour = 3600
    assert not is_impossible_travel(LONDON, PARIS, one_hour)  # ~344 km/h
    assert is_impossible_travel(LONDON, PARIS, one_hour, max_kmh=300)


def test_a_zero_time_jump_is_impossible_by_distance_alone() -> None:
    assert is_impossible_travel(LONDON, PARIS, 0)


def test_a_short_hop_is_never_impossible_however_quick() -> None:
    reading = Location(latitude=51.4543, longitude=-0.9781, accuracy_km=0)  # ~59 km from London
    slough = Location(latitude=51.5105, longitude=-0.5950, accuracy_km=0)  # ~32 km
    assert not is_impossible_travel(LONDON, slough, 0)
    assert is_impossible_travel(LONDON, reading, 0)
    assert not is_impossible_travel(LONDON, reading, 0, nearby_km=100)


def test_wide_accuracy_radii_prevent_false_alarms() -> None:
    vague_london = place(51.5074, -0.1278, accuracy_km=500)
    vague_paris = place(48.8566, 2.3522, accuracy_km=500)
    assert not is_impossible_travel(vague_london, vague_paris, 60)


@pytest.mark.parametrize(
    "other",
    [Location(), Location(country="JP"), Location(local=True)],
    ids=["unknown", "country-only", "local"],
)
def test_unknown_or_local_places_are_never_impossible_travel(other: Location) -> None:
    assert not is_impossible_travel(LONDON, other, 0)
    assert not is_impossible_travel(other, LONDON, 0)


@pytest.mark.parametrize("max_kmh", [0, -1])
def test_a_speed_limit_must_be_positive(max_kmh: float) -> None:
    with pytest.raises(ValueError, match="max_kmh"):
        is_impossible_travel(LONDON, PARIS, 60, max_kmh=max_kmh)
