"""TRL's ``SFTTrainer``, tiny GPT-2, in-code tokenizer: neutral and native callbacks together.

Offline: the model is an object (not a hub id) and ``processing_class`` is given,
so SFTTrainer never looks a tokenizer up.
"""

from __future__ import annotations

from pathlib import Path

from trl import RichProgressCallback, SFTConfig, SFTTrainer

import callbridge_hf
from support.hf_models import neutral_callbacks, text_dataset, tiny_gpt2, tiny_tokenizer
from support.hf_probes import ContextProbe
from support.recorder import Recorder

CONFIG = {
    "custom_callbacks": [
        "support.recorder.Recorder",
        "trl.RichProgressCallback",
        "support.hf_probes.ContextProbe",
    ],
    "strict": True,
}


def test_sft_trainer_runs_neutral_and_native_callbacks(tmp_path: Path) -> None:
    tokenizer = tiny_tokenizer()
    args = SFTConfig(
        output_dir=str(tmp_path),
        max_steps=4,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        logging_steps=1,
        max_length=16,
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        save_strategy="no",
        # TRL turns activation checkpointing on by default, through an alias transformers
        # now deprecates; the tiny model does not need it.
        activation_checkpointing=False,
    )
    trainer = SFTTrainer(
        model=tiny_gpt2(), args=args, train_dataset=text_dataset(16), processing_class=tokenizer
    )

    callbridge_hf.attach(trainer, CONFIG).train()

    recorder, probe = neutral_callbacks(trainer)
    assert isinstance(recorder, Recorder)
    assert isinstance(probe, ContextProbe)
    assert trainer.state.global_step == 4
    assert recorder.counters["step_begin"] == recorder.counters["step_end"] == 4
    assert [step for name, step in recorder.events if name == "step_end"] == [1, 2, 3, 4]
    assert recorder.counters["train_begin"] == recorder.counters["train_end"] == 1
    assert [step for name, step in recorder.events if name == "log:loss"] == [1, 2, 3, 4]
    assert recorder.seen["framework"] == "hf"
    assert any(isinstance(cb, RichProgressCallback) for cb in trainer.callback_handler.callbacks)
    assert probe.trainer is trainer
    assert probe.processing_class is tokenizer
    assert probe.run_model is trainer.model
