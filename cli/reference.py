"""Generate docs/recipes.md from the recipe schema and the built-in plugins' constructors.

    python -m grpo.cli.reference > docs/recipes.md
"""

from __future__ import annotations

from grpo.core.recipe import EvalConfig, LoggingConfig, PluginsConfig, TrainConfig
from grpo.core.registry import load_registry
from grpo.core.schema import _MISSING, options_of

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
filled in, the distribution that provided each plugin, and (`[parts]`) every part of the strategy
that ran with its options.

This page is generated: `python -m grpo.cli.reference > docs/recipes.md`.
"""

COMPONENT_TABLES = [
    ("model", "`[model]`: the policy"),
    ("strategy", "`[strategy]`: the algorithm; the *slot* column names the part an option configures"),
    ("topology", "`[strategy.topology]`: replaces the strategy's tree (its topology options then go)"),
    ("advantage", "`[strategy.advantage]`: replaces the strategy's advantage estimator (its advantage options then "
                  "go)"),
    ("pruner", "`[[strategy.pruner]]`: replace the strategy's pruners, run in the order given (`pruner = []`: none; "
               "the strategy's pruner options then go)"),
    ("sampler", "`[sampler]`: the SDE of the rollout (default: the strategy's)"),
    ("reward", "`[[reward]]`: one table per reward; every reward accepts `weight` (number, default 1.0) and "
                "`name` (the label its scores are logged under; default the plugin's name, and required when "
                "two rewards use the same plugin)"),
    ("prompts", "`[prompts]`: where prompts come from"),
    ("backend", "`[backend]`: how training runs (default `torch`)"),
]


def _rows(factory, slots: bool = False) -> list[str]:
    head = "| key | type | default | range | " + ("slot | " if slots else "") + "meaning |"
    rows = [head, "|---" * head.count(" | ") + "|---|"]
    for o in options_of(factory):
        default = "*required*" if o.default is _MISSING else f"`{o.default!r}`"
        rng = o.range.describe() if o.range else ""
        slot = f"{o.part or ''} | " if slots else ""
        rows.append(f"| `{o.name}` | {o.type_name.replace('|', '/')} | {default} | {rng} | {slot}{o.doc} |")
    return rows


def render() -> str:
    registry = load_registry(autoload=False)
    out = [INTRO]
    out.append("## Component tables\n")
    for kind, title in COMPONENT_TABLES:
        out.append(f"### {title}\n")
        for entry in (registry.entries[kind][n] for n in registry.names(kind)):
            out.append(f"#### `use = \"{entry.name}\"`\n\n{entry.description}\n")
            out.extend(_rows(entry.factory, slots=kind == "strategy"))
            out.append("")
    out.append("## Run tables\n")
    for cls in (TrainConfig, EvalConfig, LoggingConfig, PluginsConfig):
        doc = (cls.__doc__ or "").strip().splitlines()[0]
        out.append(f"### {doc}\n")
        out.extend(_rows(cls))
        out.append("")
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":
    print(render(), end="")
