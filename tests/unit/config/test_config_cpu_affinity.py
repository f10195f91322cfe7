"""server.cpu_affinity as the config file and the environment give it."""

from __future__ import annotations

from tests.unit.config.conftest import Load, Problems


def test_the_config_takes_none_auto_or_cpu_numbers(load: Load) -> None:
    assert load("server: {}\n").server.cpu_affinity == "none"
    assert load("server: {cpu_affinity: auto}\n").server.cpu_affinity == "auto"
    assert load("server: {cpu_affinity: [1, 0]}\n").server.cpu_affinity == (1, 0)
    assert load("server: {cpu_affinity: '0-2,5'}\n").server.cpu_affinity == (0, 1, 2, 5)
    assert load("server: {cpu_affinity: 3}\n").server.cpu_affinity == (3,)
    assert load("", {"AUTHGATE_SERVER_CPU_AFFINITY": "auto"}).server.cpu_affinity == "auto"
    assert load("", {"AUTHGATE_SERVER_CPU_AFFINITY": "0,1"}).server.cpu_affinity == (0, 1)


def test_a_bad_setting_names_line_and_key(problems: Problems) -> None:
    range_expected = (
        'config.yaml:2: server.cpu_affinity: expected "none", "auto" or CPU numbers'
        ' (a list, or "0-3,6"), each from 0 to 4095'
    )
    assert problems("server:\n  cpu_affinity: all\n") == [range_expected]
    assert problems("server:\n  cpu_affinity: 3-1\n") == [range_expected]
    assert problems("server:\n  cpu_affinity: 0-4096\n") == [range_expected]
    assert problems("server:\n  cpu_affinity: 0-4000000000\n") == [range_expected]  # at once
    assert problems("server:\n  cpu_affinity: \u0661\n") == [range_expected]  # Arabic-Indic 1
    assert problems("server:\n  cpu_affinity: 0-2,1\n") == [
        "config.yaml:2: server.cpu_affinity: a CPU is listed twice"
    ]
    assert problems("server:\n  cpu_affinity:\n    - 0\n    - -1\n    - 0\n") == [
        "config.yaml:4: server.cpu_affinity[1]: expected an integer from 0 to 4095",
        "config.yaml:5: server.cpu_affinity[2]: listed twice (also [0])",
    ]
    assert problems("server:\n  cpu_affinity: []\n") == [
        "config.yaml:2: server.cpu_affinity: expected a list of CPU numbers (at least one)"
    ]
