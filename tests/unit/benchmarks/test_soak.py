"""The soak's judgement and answer parsing (pure parts; no timing)."""

from __future__ import annotations

from benchmarks.soak import Mix, Sample, _statuses, judge


def sample(at: float, rss: dict[int, float], fds: dict[int, int], served: float) -> Sample:
    return Sample(at, rss, fds, served, 0.0)


def steady(pids: tuple[int, ...] = (1, 2)) -> list[Sample]:
    return [
        sample(t, {p: 70.0 + t / 1000 for p in pids}, {p: 40 for p in pids}, t * 100)
        for t in range(0, 70, 10)
    ]


def test_a_steady_run_has_no_problems() -> None:
    verdict = judge(steady(), Mix(asked={"close": 3}), rss_growth_limit=5.0)
    assert verdict.problems == []
    assert all(0 <= mb < 0.1 for mb in verdict.rss_growth_mb.values())


def test_growth_over_the_second_half_only_counts() -> None:
    samples = steady()
    samples[0].rss_mb[1] = 10.0  # start-up growth in the first half: not a leak
    samples[-1].rss_mb[2] += 6.0
    samples[-1].fds[1] += 21
    problems = judge(samples, Mix(), rss_growth_limit=5.0).problems
    assert problems == [
        "worker 2: RSS grew 6.0 MB over the second half",
        "worker 1: 21 more open descriptors over the second half",
    ]


def test_a_replaced_worker_an_idle_fast_path_and_unexpected_answers_are_problems() -> None:
    samples = steady()
    samples[-1] = sample(60, {1: 70.0, 3: 70.0}, {1: 40, 3: 40}, 0.0)
    mix = Mix()
    mix.note("head", None)
    mix.note("pipelined", "expected [200, 200], got [200]")
    problems = judge(samples, mix, rss_growth_limit=5.0).problems
    assert problems[0] == "pipelined: expected [200, 200], got [200]"
    assert "workers changed: [1, 2] → [1, 3]" in problems
    assert "the fast path served nothing" in problems
    assert mix.asked == {"head": 1, "pipelined": 1}


def test_statuses_are_found_where_one_answer_follows_a_body() -> None:
    answer = (
        b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 2\r\n\r\n{}"
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    )
    assert _statuses(answer) == [401, 200]
