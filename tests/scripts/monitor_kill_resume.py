"""Kill a real training process, resume it, and compare with an uninterrupted run. Prints one JSON line.

    python monitor_kill_resume.py --trainer {trainer,sft,dpo} --modes sigkill,sigterm,kill_in_save --workdir DIR

One process per trainer kind (imports are paid once): it trains an uninterrupted reference, then per mode forks a child that trains with hftrain's trainer;
the child is killed with SIGKILL at step 5 (`sigkill`), during the save of checkpoint-4 (`kill_in_save`), or gets
SIGTERM from the parent once it reached step 3 (`sigterm`). The parent then resumes with
`resume_from_checkpoint=True` (the newest complete checkpoint) and reports whether the final weights are identical.
"""

import argparse
import json
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from monitor_common import TOKENIZER, env_defaults, same_weights, tiny_model, token_rows  # noqa: E402

env_defaults()
from transformers import TrainerCallback  # noqa: E402

from hftrain.checkpoints import checkpoint_problem, last_valid_checkpoint  # noqa: E402

MAX_STEPS, SAVE_STEPS = 8, 2


class Probe(TrainerCallback):
    def __init__(self, mode, flag_path):
        self.mode, self.flag_path = mode, flag_path

    def on_step_end(self, args, state, control, **kw):
        if self.mode == "sigkill" and state.global_step == 5:
            os.kill(os.getpid(), signal.SIGKILL)
        if self.mode == "sigterm":
            if state.global_step == 3:
                open(self.flag_path, "w").close()
            time.sleep(0.3)  # leave the parent's SIGTERM time to land mid-run


def build(kind, output_dir, callbacks=()):
    common = dict(
        output_dir=output_dir,
        per_device_train_batch_size=4,
        max_steps=MAX_STEPS,
        learning_rate=1e-3,
        logging_steps=1,
        save_strategy="steps",
        save_steps=SAVE_STEPS,
        report_to="none",
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
    )
    model = tiny_model()
    if kind == "trainer":
        from hftrain.config import TrainingArguments
        from hftrain.trainers import Trainer

        return Trainer(
            model=model, args=TrainingArguments(**common), train_dataset=token_rows(), callbacks=list(callbacks)
        )
    from hftrain.builtin import arithmetic_splits, preference_splits

    if kind == "sft":
        from hftrain.config.trl import SFTConfig
        from hftrain.trl_trainers import SFTTrainer

        train, _ = arithmetic_splits(64, 8)
        return SFTTrainer(
            model=model,
            args=SFTConfig(**common, max_length=32, bf16=False, gradient_checkpointing=False),
            train_dataset=train,
            processing_class=TOKENIZER,
            callbacks=list(callbacks),
        )
    import copy

    from hftrain.config.trl import DPOConfig
    from hftrain.trl_trainers import DPOTrainer

    train, _ = preference_splits(64, 8)
    return DPOTrainer(
        model=model,
        ref_model=copy.deepcopy(model),
        args=DPOConfig(**common, max_length=32, bf16=False, gradient_checkpointing=False),
        train_dataset=train,
        processing_class=TOKENIZER,
        callbacks=list(callbacks),
    )


def run_mode(kind, mode, workdir):
    """Kill a forked child in `mode`, resume in this process; return what happened and the resumed weights."""
    run_dir, flag = os.path.join(workdir, mode), os.path.join(workdir, mode + ".step3")
    import transformers

    original = transformers.Trainer._save_optimizer_and_scheduler
    if mode == "kill_in_save":

        def dying_save(self, output_dir):
            if self.state.global_step == 4:  # the weights of checkpoint-4 are on disk, the rest never will be
                os.kill(os.getpid(), signal.SIGKILL)
            return original(self, output_dir)

        transformers.Trainer._save_optimizer_and_scheduler = dying_save
    pid = os.fork()
    if pid == 0:  # the child: a training run that gets killed
        code = 0
        try:
            build(kind, run_dir, [Probe(mode, flag)]).train()
        except SystemExit as exc:  # the graceful-signal path ends the process with 128 + signal
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:  # noqa: BLE001
            code = 1
        finally:
            os._exit(code)
    if mode == "sigterm":
        while not os.path.exists(flag):
            time.sleep(0.05)
        os.kill(pid, signal.SIGTERM)
    _, status = os.waitpid(pid, 0)
    transformers.Trainer._save_optimizer_and_scheduler = original
    checkpoints = sorted(n for n in os.listdir(run_dir) if n.startswith("checkpoint-"))
    problems = {n: checkpoint_problem(os.path.join(run_dir, n)) for n in checkpoints}  # before the resume rewrites
    resume_from = last_valid_checkpoint(run_dir)
    resumed = build(kind, run_dir)
    resumed.train(resume_from_checkpoint=True)
    return {
        "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
        "exit_code": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
        "checkpoints": checkpoints,
        "problems": problems,
        "resumed_from": os.path.basename(resume_from) if resume_from else None,
        "resumed_steps": resumed.state.global_step,
    }, resumed.model.state_dict()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--trainer", choices=["trainer", "sft", "dpo"], required=True)
    parser.add_argument("--modes", default="sigkill", help="comma-separated: sigkill, sigterm, kill_in_save")
    parser.add_argument("--workdir", required=True)
    opts = parser.parse_args()
    reference = build(opts.trainer, os.path.join(opts.workdir, "reference"))
    reference.train()
    report = {"reference_steps": reference.state.global_step}
    for mode in opts.modes.split(","):
        info, weights = run_mode(opts.trainer, mode, opts.workdir)
        info["equal"] = same_weights(weights, reference.model.state_dict())
        report[mode] = info
    report["reference_differs_from_start"] = not same_weights(reference.model.state_dict(), tiny_model().state_dict())
    print(json.dumps(report))


if __name__ == "__main__":
    main()
