"""#40 LinguDistill, in miniature: a tiny LM adapted to digit captions, then recovered.

Paper: "LinguDistill: Recovering Linguistic Ability in Vision-Language Models via Selective
Cross-Modal Distillation" (2026). Abstract: adapting an LM into a VLM degrades its language
ability; distilling from the original frozen LM on language-intensive data "recovers ~10% of
the performance lost on language and knowledge benchmarks, while maintaining comparable
performance on vision-heavy tasks".

Miniature (dataset ``grammar_vlm``, model ``tiny_lm``: a 2-layer causal transformer, 64 wide,
with a 2-slot image prefix; every stage from the previous stage's weights, per seed):
  1. ``lm``: pre-train on grammar windows (next-token cross-entropy) -> ppl_original;
  2. ``adapted``: train on captions of digit images only ("<bos> this digit is seven .")
     -> ppl_adapted, caption accuracy (the new task);
  3. recovery on a 50/50 mixture of grammar windows and captions, same steps for both:
     - ``replay``: next-token cross-entropy on everything;
     - ``lingudistill``: the same plus token-level KD toward the frozen stage-1 LM, routed to
       the language-only samples (temperature 1, weight 1).
Language perplexity on held-out grammar windows; caption accuracy (arg-max at the digit
word) on captions of held-out digit images. Recovered fraction =
(ppl_adapted - ppl_x) / (ppl_adapted - ppl_original), per seed.

Stage 2 was first 6 epochs at learning rate 1e-3, which left the caption task at chance in the
first quick run (the model had not been adapted); it now runs 15 epochs at 3e-3. The
recovery stage, which the rules judge, is as first written.

Rules, fixed here before any run (means over seeds):
  1. part of the lost language ability comes back: lingudistill's perplexity is lower than
     the adapted model's (difference larger than its standard error);
  2. the new task is kept: lingudistill's caption accuracy is at most 2 points below the
     adapted model's;
  3. distilling from the pre-adaptation LM recovers at least as much as replaying the
     language data with its hard labels: recovered fraction of lingudistill >= replay's - 0.02.
"""

from __future__ import annotations

import math

from ..recipes._fragments import frozen_teacher
from ..recipes.lingudistill import lingudistill_config, lm_objective
from . import Claim, Context, Reproduction, better, mean_std, not_worse, register
from ._common import Settings, compose, load_student, run_grid, train_section

SEQ_LEN = 24
MODEL = {"name": "tiny_lm", "params": {"dim": 64, "layers": 2, "heads": 4, "prefix_tokens": 2}}
EVAL_SEED = 999
# stage 2 (adaptation) was first 6 epochs at lr 1e-3, which left the caption task at chance
# (13% accuracy) in the first quick run: the premise (a model that has learned the new
# input type) did not hold, so stage 2 was lengthened to 15 epochs at lr 3e-3 (95%); the
# recovery stage (what the claims judge) is unchanged. The quick stage 1 was also cut from
# 4000 to 3000 windows, for time.
SETTINGS = Settings(
    quick={"n_lm": 3000, "lm_epochs": 8, "n_vlm": 1500, "vlm_epochs": 15, "vlm_lr": 0.003, "n_mix": 2000, "mix_epochs": 4},
    full={"n_lm": 8000, "lm_epochs": 15, "n_vlm": 4000, "vlm_epochs": 15, "vlm_lr": 0.003, "n_mix": 4000, "mix_epochs": 6},
)


def run(ctx: Context) -> list[Claim]:
    from ..data import load_dataset
    from ..recipes.lingudistill import caption_accuracy, language_perplexity

    s = SETTINGS(ctx.quick)
    lang_test = load_dataset("grammar_vlm", mode="language", n_train=1, n_test=1000, seq_len=SEQ_LEN, seed=EVAL_SEED)
    vlm_test = load_dataset("grammar_vlm", mode="vlm", n_train=1, n_test=1000, seq_len=SEQ_LEN, seed=EVAL_SEED)

    def train_cfg(epochs: int, lr: float) -> dict:
        return train_section(epochs, lr, warmup=20, checkpoint_every=10**6, log_every=50)

    def data(mode: str, n: int, seed: int) -> dict:
        return {"dataset": "grammar_vlm", "batch_size": 64,
                "params": {"mode": mode, "n_train": n, "n_test": 200, "seq_len": SEQ_LEN, "seed": seed}}

    def weights(name: str, seed: int) -> str:
        return str((ctx.out / name / f"seed{seed}" / "student.safetensors").resolve())

    def stage(mode: str, n: str, offset: int, epochs: int, lr: float, start: str | None, fragment: dict):
        def variant(seed: int) -> dict:
            student = MODEL if start is None else dict(MODEL, checkpoint=weights(start, seed))
            return compose({"data": data(mode, s[n], offset + seed), "student": student, "train": train_cfg(epochs, lr)}, fragment)
        return variant

    lm = {"objectives": [lm_objective()]}
    variants = {  # every stage from the previous stage's weights, per seed
        "lm": stage("language", "n_lm", 100, s["lm_epochs"], 0.003, None, lm),
        "adapted": stage("vlm", "n_vlm", 200, s["vlm_epochs"], s["vlm_lr"], "lm", lm),
        "replay": stage("mixture", "n_mix", 300, s["mix_epochs"], 0.001, "adapted", lm),
        "lingudistill": lambda seed: compose(
            stage("mixture", "n_mix", 300, s["mix_epochs"], 0.001, "adapted", lingudistill_config(temperature=1.0, kd_weight=1.0))(seed),
            {"teacher": frozen_teacher(dict(MODEL, checkpoint=weights("lm", seed)))}),
    }

    def measure(run) -> tuple[float, float]:
        model = load_student(run.dir, MODEL, lang_test.input_shape, lang_test.num_classes)
        return language_perplexity(model, lang_test.test.x), caption_accuracy(model, vlm_test.test.x)

    names = tuple(variants)
    results = run_grid(ctx, variants, measure)
    ppl = {n: [p for p, _ in results[n]] for n in names}
    acc = {n: [a for _, a in results[n]] for n in names}
    frac = {n: [(a - x) / (a - o) if a - o > 0 else math.nan for o, a, x in zip(ppl["lm"], ppl["adapted"], ppl[n])]
            for n in ("replay", "lingudistill")}
    for i in range(len(ctx.seeds)):
        ctx.log("    " + ", ".join(f"{n}: ppl {ppl[n][i]:.3f} acc {acc[n][i]:.3f}" for n in names)
                + f"; recovered: replay {frac['replay'][i]:.3f}, lingudistill {frac['lingudistill'][i]:.3f}")
    table = {n: {"language_perplexity": mean_std(ppl[n]), "caption_accuracy": mean_std(acc[n])} for n in names}
    fractions = {n: mean_std(v) for n, v in frac.items()}
    # the same share measured on the log scale (mean NLL per token), less dominated by the
    # adapted model's very large perplexity; a figure, not judged
    log_frac = {n: mean_std([(math.log(a) - math.log(x)) / (math.log(a) - math.log(o))
                             for o, a, x in zip(ppl["lm"], ppl["adapted"], ppl[n])]) for n in frac}
    claims = [
        better("LinguDistill brings back part of the language ability lost in adaptation (lower perplexity than the adapted model)",
               ppl["lingudistill"], ppl["adapted"], a_name="lingudistill", b_name="adapted", higher=False,
               metric="language perplexity"),
        not_worse("LinguDistill keeps the new (captioning) task: accuracy at most 2 points below the adapted model's",
                  acc["lingudistill"], acc["adapted"], a_name="lingudistill", b_name="adapted", tolerance=0.02,
                  metric="caption accuracy"),
        not_worse("Distilling from the pre-adaptation LM recovers at least as much as replaying the language data",
                  frac["lingudistill"], frac["replay"], a_name="lingudistill", b_name="replay", tolerance=0.02,
                  metric="recovered fraction of the lost perplexity"),
    ]
    for c in claims:
        c.figures["recovered_fraction"] = fractions
    claims[2].figures["recovered_fraction_of_log_perplexity"] = log_frac
    claims[0].figures["all_variants"] = table
    return claims


REPRODUCTION = register(
    Reproduction(
        name="lingudistill",
        paper="LinguDistill (2026), selective cross-modal distillation",
        method="LinguDistill: routed token KD from the frozen pre-adaptation LM",
        family="self_distillation",
        summary="tiny LM adapted to digit captions: recovered language perplexity, LinguDistill vs replay",
        run=run,
        recipe="lingudistill",
    )
)
