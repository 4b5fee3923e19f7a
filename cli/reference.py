"""Generate docs/recipes.md from the recipe schema and the built-in plugins' constructors.

    python -m grpo.cli.reference > docs/recipes.md
"""

from __future__ import annotations

from grpo.core.compose import MOVED as MOVED_STRATEGY_KEYS
from grpo.core.config import EvalConfig, LoggingConfig, PluginsConfig, TrainConfig
from grpo.core.recipe import MOVED
from grpo.core.registry import load_registry
from grpo.core.schema import _MISSING, RENAMED, options_of
from grpo.core.strategy import Preset

INTRO = """# Recipe reference

A recipe is a TOML file. Component tables name a plugin with `use` and set its options; the
other tables configure the run. Every key is checked against the schema below (`grpo validate`);
`--set TABLE.KEY=VALUE` overrides any key (the value in TOML syntax, e.g. `--set
'strategy.step_window=[0,10]'`; `reward.0.weight=2` addresses the first `[[reward]]`).
`${VAR}` in a string is replaced by the environment variable VAR when a run starts (`grpo
validate` does not need it set), and `${VAR:-default}` by VAR when it is set and not empty, else by
the default. Weights options (`model.path`, a reward's `path`, `tokenizer`, `base` …) take a local
path or a Hugging Face Hub id: `owner/name`, `owner/name:file/in/repo`, `owner/name@revision`,
resolved through the Hub cache (see `grpo doctor`). Every run writes `recipe.resolved.toml` with all defaults
filled in: `[strategy]` with every part that ran and every option of each, `[parts]` with the
distribution that provided each part and the table that chose it, and `[provenance]`.
Numbers must be finite: `inf` and `nan` are refused (exit 2, naming the key) unless an option says
that it takes them.

A strategy is a preset of parts. Each option belongs to one part and is set in that part's table
(`[strategy.topology] split_points = [0, 4, 8]`), or with the short key in `[strategy]`
(`strategy.split_points`), which sets it on every part of the strategy that takes it. A part's
table with `use` replaces the part; `[[strategy.pruner]]` tables that all name a pruner replace the
strategy's pruners (`pruner = []`: none), tables that name none change the strategy's pruners in
order.

This page is generated: `python -m grpo.cli.reference > docs/recipes.md`.
"""

COMPONENT_TABLES = [
    ("model", "`[model]`: the policy"),
    ("topology", "`[strategy.topology]`: the rollout tree"),
    ("advantage", "`[strategy.advantage]`: leaf rewards to per-edge advantages"),
    ("pruner", "`[[strategy.pruner]]`: which edges are trained, in the order given"),
    ("objective", "`[strategy.objective]`: the learning rule"),
    ("solver", "`[strategy.solver]` and `[eval] solver`: the deterministic steps of the rollout and of evaluation"),
    ("sampler", "`[sampler]`: the SDE of the rollout (default: the strategy's)"),
    ("reward", "`[[reward]]`: one table per reward; every reward accepts `weight` (number, default 1.0) and "
                "`name` (the label its scores are logged under; default the plugin's name, and required when "
                "two rewards use the same plugin)"),
    ("prompts", "`[prompts]`: where prompts come from"),
    ("backend", "`[backend]`: how training runs (default `torch`)"),
]


def _rows(factory) -> list[str]:
    head = "| key | type | default | range | meaning |"
    rows = [head, "|---" * head.count(" | ") + "|---|"]
    for o in options_of(factory):
        default = "*required*" if o.default is _MISSING else f"`{o.default!r}`"
        rng = o.range.describe() if o.range else ""
        rows.append(f"| `{o.name}` | {o.type_name.replace('|', '/')} | {default} | {rng} | {o.doc} |")
    return rows


def _preset_rows(preset: Preset) -> list[str]:
    """A strategy's parts, each with the options its preset gives it."""
    rows = ["| slot | part | options the strategy gives it |", "|---|---|---|"]
    parts = [("topology", preset.topology), ("advantage", preset.advantage)]
    parts += [(f"pruner {i}", p) for i, p in enumerate(preset.pruners)] or [("pruner", None)]
    parts += [("objective", preset.objective), ("solver", preset.solver), ("sampler", preset.sampler)]
    for slot, part in parts:
        if part is None:
            rows.append(f"| {slot} | (none) | |")
            continue
        given = ", ".join(f"`{k} = {v!r}`" for k, v in part.options.items())
        rows.append(f"| {slot} | `{part.name}` | {given} |")
    if preset.train:
        rows.append("| train | | " + ", ".join(f"`{k} = {v!r}`" for k, v in preset.train.items()) + " |")
    return rows


def _moved() -> list[str]:
    rows = ["| key | where it went |", "|---|---|"]
    rows += [f"| `{key}` | {where} |" for key, where in MOVED.items()]
    rows += [f"| `strategy.{key}` | {where} |" for key, where in MOVED_STRATEGY_KEYS.items()]
    rows += [f"| `{old}` (a part's option) | renamed `{new}` |" for old, new in RENAMED.items()]
    return rows


NOTES = {
    TrainConfig: "A resumed run (`grpo run --resume DIR`) may change only how long it runs and how often it "
                 "checkpoints, evaluates and logs: `train.iterations`, `train.time_budget`, `train.checkpoint_every`, "
                 "`train.keep_checkpoints`, `train.threads`, `eval.every`, `eval.every_minutes` and `[logging]`. Any "
                 "other change, by `--set` or by editing `recipe.resolved.toml`, is refused (exit 2, naming the "
                 "keys), because the iterations already trained used the old value. The changes it makes are written "
                 "into `recipe.resolved.toml` and recorded in `metrics.jsonl` (a `resume` record with the iteration "
                 "it continued from).",
    PluginsConfig: "**`modules` runs code.** Every module listed is imported whenever the recipe is read: by "
                   "`grpo run`, `grpo validate`, `grpo plan`, `grpo doctor` and by `grpo run --resume` or `grpo export` "
                   "of a run directory whose recipe lists it. A recipe (or a run directory) from someone else that "
                   "lists modules is code from someone else: read those modules before you use it. Nothing else in a "
                   "run directory runs: `grpo report` and `grpo compare` read its files as data only.",
}


def render() -> str:
    registry = load_registry(autoload=False)
    out = [INTRO]
    out.append("## Strategies: `[strategy] use`\n")
    for entry in (registry.entries["strategy"][n] for n in registry.names("strategy")):
        out.append(f"### `use = \"{entry.name}\"`\n\n{entry.description}\n")
        out.extend(_preset_rows(entry.factory))
        out.append("")
    out.append("## Component tables\n")
    for kind, title in COMPONENT_TABLES:
        out.append(f"### {title}\n")
        for entry in (registry.entries[kind][n] for n in registry.names(kind)):
            out.append(f"#### `use = \"{entry.name}\"`\n\n{entry.description}\n")
            out.extend(_rows(entry.factory) if entry.options else ["No options."])
            out.append("")
    out.append("## Run tables\n")
    for cls in (TrainConfig, EvalConfig, LoggingConfig, PluginsConfig):
        doc = (cls.__doc__ or "").strip().splitlines()[0]
        out.append(f"### {doc}\n")
        out.extend(_rows(cls))
        if cls in NOTES:
            out.append(f"\n{NOTES[cls]}")
        out.append("")
    out.append("## Keys that moved\n")
    out.append("A recipe that sets one of these is told where it went.\n")
    out.extend(_moved())
    out.append("")
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":
    print(render(), end="")
