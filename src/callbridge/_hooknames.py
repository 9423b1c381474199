"""A neutral callback's methods named like hooks that are none: said at build, never silent.

A method ``on_evaluation`` (for ``on_evaluate``) or ``on_train_batch_end`` (Lightning's
name) on a :class:`callbridge.Callback` is never called; without a word, the callback
simply does nothing. At build, each such method gets one warning: the close match for a
misspelling, the neutral hook to use for a native hook name.
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger("callbridge")

# Native hook names of the HF Trainer (TrainerCallback) and Lightning (Callback) that the
# neutral protocol does not have: the neutral hook to use, or why there is none.
_STEP_END = "on_step_end (after each optimizer step)"
NATIVE_HOOKS: dict[str, str] = {
    # HF TrainerCallback
    "on_init_end": "__init__ or on_train_begin",
    "on_substep_end": "on_step_end (neutral steps are optimizer steps, not micro-batches)",
    "on_pre_optimizer_step": "on_step_begin or on_step_end",
    "on_optimizer_step": _STEP_END,
    "on_prediction_step": "on_evaluate (prediction steps have no neutral hook)",
    "on_predict": "on_evaluate (prediction has no neutral hook)",
    # Lightning Callback
    "on_fit_start": "on_train_begin",
    "on_fit_end": "on_train_end",
    "on_train_start": "on_train_begin",
    "on_train_batch_start": "on_step_begin (before each optimizer step)",
    "on_train_batch_end": _STEP_END,
    "on_train_epoch_start": "on_epoch_begin",
    "on_train_epoch_end": "on_epoch_end",
    "on_validation_start": "on_evaluate_begin",
    "on_validation_epoch_start": "on_evaluate_begin",
    "on_validation_epoch_end": "on_evaluate (it receives the metrics)",
    "on_validation_end": "on_evaluate (it receives the metrics)",
    "on_validation_batch_end": "on_evaluate (validation batches have no neutral hook)",
    "on_before_optimizer_step": "on_step_begin or on_step_end",
    "on_after_backward": _STEP_END,
    "on_before_backward": "on_step_begin",
    "on_save_checkpoint": "on_save",
    "on_load_checkpoint": "load_state_dict",
    "on_sanity_check_start": "on_train_begin (the sanity check has no neutral hook)",
    "on_test_end": "on_evaluate (testing has no neutral hook)",
    "on_predict_end": "on_evaluate (prediction has no neutral hook)",
}


def misnamed_hooks(callback: Any) -> list[str]:
    """Why each ``on_*`` method of a neutral callback's class is never called (sorted)."""
    from ._protocol import HOOKS, Callback

    if not isinstance(callback, Callback):
        return []
    names: set[str] = set()
    for klass in type(callback).__mro__:
        if klass is Callback or klass is object:
            continue
        names.update(
            name
            for name, value in vars(klass).items()
            if name.startswith("on_") and callable(value) and name not in HOOKS
        )
    reasons = []
    for name in sorted(names):
        native = NATIVE_HOOKS.get(name)
        if native is not None:
            reasons.append(
                f"{name} is never called: it is a trainer's own hook name, not a neutral "
                f"one. Use {native}"
            )
            continue
        import difflib  # only a misnamed method pays for it

        near = difflib.get_close_matches(name, HOOKS, n=1, cutoff=0.6)
        hint = f"Did you mean {near[0]}?" if near else f"The hooks: {', '.join(HOOKS)}"
        reasons.append(f"{name} is never called: no hook has that name. {hint}")
    return reasons


def warn_misnamed_hooks(callback: Any, where: str) -> None:
    """One warning per misnamed method of ``callback``; ``where`` names its config entry."""
    for reason in misnamed_hooks(callback):
        logger.warning(
            "callbridge: %s: %s.%s (to keep a helper method, name it without the on_ prefix)",
            where,
            type(callback).__qualname__,
            reason,
        )
