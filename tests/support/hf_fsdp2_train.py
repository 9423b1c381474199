"""Train the tiny GPT-2 (no dropout) under the HF Trainer with FSDP2 and a config holding ``bema``.

Run under ``torch.distributed.run`` on CUDA GPUs (the HF Trainer's ``fsdp`` with
``use_cpu=True`` falls back to DDP: FSDP2 through HF needs a GPU)::

    torchrun --nproc_per_node 2 tests/support/hf_fsdp2_train.py --output-dir OUT \
        --config '{"custom_callbacks": [...]}' --max-steps 12 --eval-steps 6 --save-steps 6

Each rank ``torch.save``s ``OUT/result-<rank>.pt``: the final step, the bytes its ``bema``
keeps, the trainable bytes of the full model and the last evaluation's metrics.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

TESTS = Path(__file__).resolve().parents[1]
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--config", required=True, help="the callbacks config as JSON")
    parser.add_argument("--max-steps", type=int, default=12)
    parser.add_argument("--eval-steps", type=int, default=6)
    parser.add_argument("--save-steps", type=int, default=6)
    parser.add_argument("--resume", action="store_true")
    options = parser.parse_args(argv)

    import torch

    import callbridge_hf
    from support.hf_bema_train import bema_of, no_dropout_gpt2
    from support.hf_models import make_trainer

    model = no_dropout_gpt2()
    trainable_bytes = sum(p.numel() * p.element_size() for p in model.parameters()
                          if p.requires_grad)  # fmt: skip
    overrides: dict[str, Any] = {
        "max_steps": options.max_steps, "use_cpu": False,
        "eval_strategy": "steps", "eval_steps": options.eval_steps,
        "save_strategy": "steps", "save_steps": options.save_steps,
        "fsdp": "full_shard",
        "fsdp_config": {"version": 2, "transformer_layer_cls_to_wrap": ["GPT2Block"],
                        "reshard_after_forward": True},
    }  # fmt: skip
    trainer = make_trainer(options.output_dir, model=model, **overrides)
    callbridge_hf.attach(trainer, json.loads(options.config))
    trainer.train(resume_from_checkpoint=True if options.resume else None)
    metrics = trainer.evaluate()
    bema = bema_of(trainer)
    rank = trainer.args.process_index
    torch.save(
        {"rank": rank, "world_size": trainer.args.world_size,
         "global_step": trainer.state.global_step, "resident": bema.resident_bytes(),
         "trainable_bytes": trainable_bytes, "metrics": metrics},
        Path(options.output_dir) / f"result-{rank}.pt",
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    from support.hf_models import finish_distributed

    sys.exit(finish_distributed(main()))
