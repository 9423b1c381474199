"""The built-in ``early_stopping`` callback (callbridge.callbacks.early_stopping)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import pytest

import callbridge
from callbridge.callbacks.early_stopping import EarlyStoppingCallback
from callbridge.testing import Driver


def series(values: Sequence[float], key: str = "eval_loss") -> Callable[[int], dict[str, float]]:
    """Evaluation metrics at step n (1-based, one evaluation per step): ``values[n - 1]``."""
    return lambda step: {key: values[step - 1]}


def drive(
    callback: EarlyStoppingCallback,
    values: Sequence[float],
    key: str = "eval_loss",
    **kwargs: object,
) -> int:
    """Evaluate every step; return the step training ended at."""
    kwargs.setdefault("max_steps", len(values))
    result = Driver([callback], eval_steps=1, eval_metrics=series(values, key), **kwargs).run()  # type: ignore[arg-type]
    return result.run.state.global_step


def test_stops_after_patience_evaluations_without_improvement() -> None:
    es = EarlyStoppingCallback(early_stopping_patience=2)
    assert drive(es, [1.0, 0.8, 0.9, 0.85, 0.7, 0.6]) == 4
    assert (es.best, es.wait, es.stopped_at_step) == (0.8, 2, 4)


def test_an_improvement_resets_the_patience() -> None:
    es = EarlyStoppingCallback(early_stopping_patience=2)
    assert drive(es, [1.0, 1.1, 0.9, 1.0, 0.8, 0.95, 0.97]) == 7
    assert es.best == 0.8


def test_runs_to_the_end_when_the_metric_keeps_improving() -> None:
    es = EarlyStoppingCallback(early_stopping_patience=1)
    assert drive(es, [5.0, 4.0, 3.0, 2.0]) == 4
    assert es.stopped_at_step is None


def test_improvements_within_the_threshold_do_not_count() -> None:
    es = EarlyStoppingCallback(early_stopping_patience=2, early_stopping_threshold=0.1)
    assert drive(es, [1.0, 0.95, 0.91, 0.5]) == 3
    assert es.best == 1.0


def test_mode_max_watches_a_metric_that_should_rise() -> None:
    es = EarlyStoppingCallback(early_stopping_patience=2, metric="accuracy", mode="max")
    assert drive(es, [0.5, 0.6, 0.7, 0.65, 0.69, 0.9], key="eval_accuracy") == 5
    assert es.best == 0.7


@pytest.mark.parametrize(
    ("metric", "key"),
    [("loss", "eval_loss"), ("loss", "val_loss"), ("eval_f1", "val_f1"), ("val_f1", "f1")],
)
def test_the_metric_is_found_with_or_without_its_prefix(metric: str, key: str) -> None:
    es = EarlyStoppingCallback(metric=metric)
    assert drive(es, [1.0, 2.0], key=key) == 2
    assert es.best == 1.0


def test_a_missing_metric_warns_once_and_never_stops(caplog: pytest.LogCaptureFixture) -> None:
    es = EarlyStoppingCallback(early_stopping_patience=1, metric="eval_bleu")
    with caplog.at_level(logging.WARNING, logger="callbridge"):
        assert drive(es, [1.0, 2.0, 3.0, 4.0]) == 4
    assert [r.getMessage() for r in caplog.records] == [
        "callbridge early_stopping: metric 'eval_bleu' not among the evaluation metrics "
        "(eval_loss); "
        "set args.metric to one of them"
    ]


def test_state_round_trip_continues_identically() -> None:
    """Pause at step 4 of 10, save, restore into a new callback: the rest runs as if unpaused."""
    values = [1.0, 0.7, 0.8, 0.75, 0.6, 0.65, 0.66, 0.67, 0.5, 0.4]
    uninterrupted = EarlyStoppingCallback(early_stopping_patience=3)
    end = drive(uninterrupted, values)

    first = EarlyStoppingCallback(early_stopping_patience=3)
    drive(first, values, max_steps=4)
    saved = first.state_dict()
    assert saved == {"best": 0.7, "wait": 2, "stopped_at_step": None}
    resumed = EarlyStoppingCallback(early_stopping_patience=3)
    resumed.load_state_dict(saved)
    assert drive(resumed, values, max_steps=len(values), start_step=4) == end == 8
    assert (
        resumed.state_dict()
        == uninterrupted.state_dict()
        == {"best": 0.6, "wait": 3, "stopped_at_step": 8}
    )


def test_state_dict_is_plain_data() -> None:
    es = EarlyStoppingCallback()
    drive(es, [3.0])
    assert es.state_dict() == {"best": 3.0, "wait": 0, "stopped_at_step": None}


def test_arguments_from_yaml_strings() -> None:
    [es] = callbridge.build(
        {
            "custom_callbacks": [
                {
                    "name": "early_stopping",
                    "args": {
                        "early_stopping_patience": "3",
                        "early_stopping_threshold": "0.01",
                        "mode": "max",
                        "metric": "acc",
                    },
                }
            ]
        },
        strict=True,
    )
    assert (es.early_stopping_patience, es.early_stopping_threshold, es.mode, es.metric) == (
        3,
        0.01,
        "max",
        "acc",
    )


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        ({"early_stopping_patience": 0}, "'early_stopping_patience' must be >= 1: 0"),
        ({"early_stopping_threshold": -0.5}, "'early_stopping_threshold' must be >= 0.0: -0.5"),
    ],
)
def test_invalid_settings_are_config_errors(args: dict[str, object], fragment: str) -> None:
    with pytest.raises(callbridge.ConfigError) as info:
        callbridge.build(
            {"custom_callbacks": [{"name": "early_stopping", "args": args}]}, strict=True
        )
    assert info.value.key_path == "custom_callbacks[0]"
    assert fragment in info.value.message
