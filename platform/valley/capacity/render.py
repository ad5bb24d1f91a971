"""A study plan as text tables (pure): what fits, what it costs, and the assumptions behind the numbers."""

from __future__ import annotations

from valley.capacity.estimate import StudyEstimate, TrainEstimate
from valley.capacity.schedule import ScheduleEstimate


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    return "\n".join(out)


def _num(x: float) -> str:
    for unit, div in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(x) >= div:
            return f"{x / div:.1f}{unit}"
    return f"{x:.0f}"


def _fix_text(fix: dict | None) -> str:
    return ", ".join(f"{k}={v}" for k, v in (fix or {}).get("set", {}).items()) or "?"


def _last_step(t: TrainEstimate) -> str:
    """An epoch's incomplete last group: its size as a smaller step, or what is left out (drop)."""
    unit = "ex" if t.batch_unit == "examples" else "rows"
    if t.last_step_size:
        return f"{t.last_step_size} {unit}"
    return f"drop {t.left_over_per_epoch} {unit}" if t.left_over_per_epoch else "full"


def render_plan(plan: StudyEstimate) -> str:
    node, a = plan.node, plan.assumptions
    parts = [f"valley plan: {plan.experiment} on {node['gpus_per_node']}x {node['gpu_name']} "
             f"({node['gpu_mem_gib']:g} GiB each) per node ({node['node_type']})"]
    rows = []
    for t in plan.train:
        m = t.memory
        states = m["deepspeed_estimate"] if m.get("deepspeed_estimate") is not None else m["model_states"]
        status = "ok" if t.fits else "NO FIT -> " + _fix_text(t.fix)
        rows.append([t.run, _num(t.tokens_per_epoch), t.tokens_source, str(t.steps), t.batch_unit,
                     f"{t.examples_per_step:,.1f}", _num(t.tokens_per_step), _last_step(t), f"{states:.1f}",
                     f"{m['activations']:.1f}", f"{m['loss']:.1f}", f"{m['attention_mask']:.2f}",
                     f"{m['zero_buffers']:.1f}", f"{t.memory_gib:.1f}/{t.usable_gib:.0f}", f"{t.headroom_gib:+.1f}",
                     f"{t.flops / 1e18:.1f}", f"{t.gpu_hours:,.1f}", status])
    parts += ["Training (steps over all epochs in the run's batch unit, examples and tokens per step their "
              "mean, last = each epoch's smaller last step or what it drops; memory in GiB per rank; states = "
              "params + grads + optimizer under ZeRO-3, DeepSpeed's estimator for bf16):",
              _table(["run", "tokens/ep", "source", "steps", "unit", "ex/step", "tok/step", "last", "states",
                      "activ", "loss", "mask", "zero buf", "total/usable", "headroom", "EFLOP", "GPU-h", "fit"],
                     rows)]
    for t in plan.train:
        if not t.fits and t.fix:
            parts.append(f"  {t.run}: needs {t.memory_gib:.1f} GiB of {t.usable_gib:.1f}; set {_fix_text(t.fix)} "
                         f"(predicted {t.fix['memory_gib']} GiB)")
    ev = [[e.run, str(e.samples), f"{e.expected_tokens:,.0f}", e.length_source, _num(e.tokens), f"{e.gpu_hours:,.1f}"]
          for e in plan.evaluate]
    parts += ["Generation:", _table(["evaluation", "samples", "tokens/sample", "length from", "tokens", "GPU-h"], ev)]
    tot = plan.totals
    parts += ["Totals: "
              f"{tot['train_runs']} training runs, {tot['train_flops'] / 1e18:,.1f} EFLOP, {tot['train_gpu_hours']:,.1f} "
              f"GPU-h; {tot['evaluations']} evaluations, {_num(tot['generate_tokens'])} tokens, "
              f"{tot['generate_gpu_hours']:,.1f} GPU-h; study {tot['gpu_hours']:,.1f} GPU-h; "
              f"{tot['runs_that_do_not_fit']} run(s) do not fit",
              f"Assumptions: MFU {a['mfu']:.0%}; {a['gen_tokens_per_s']:,.0f} generated tokens/s per GPU; "
              f"{a['tokens_per_trace']:,.0f} tokens per trace where not measured; packing {a['pack_efficiency']:.0%}; "
              f"{a['reserve_fraction']:.0%} of device memory reserved (flags: --mfu, --gen-tokens-per-s, "
              "--tokens-per-trace)",
              *[f"Note: {n}" for n in plan.notes]]
    if plan.schedule is not None:
        parts.append(render_schedule(plan.schedule))
    return "\n\n".join(parts) + "\n"


def _limits(limits: dict[str, int | None]) -> str:
    return ", ".join(f"{k} {'unlimited' if v is None else v}" for k, v in limits.items())


def render_schedule(s: ScheduleEstimate) -> str:
    """The predicted wall-clock, what it waits on, and each node's predicted start."""
    cpus = f" and {s.cpus_per_node:g} CPUs each" if s.cpus_per_node else " each"
    hours = {r["node"]: r["hours"] for r in s.rows}
    lines = [f"Schedule (the executor's own policy simulated on {s.nodes} node(s) x {s.gpus_per_node} GPUs{cpus}; "
             f"at once at most: {_limits(s.limits)}):",
             f"Predicted wall-clock: {s.makespan_hours:,.1f} h ({s.makespan_hours / 24:,.1f} days); no schedule "
             f"beats {s.dependency_bound_hours:,.1f} h (its longest chain of inputs); "
             f"{', '.join(s.not_estimated)} runs not estimated (counted as no time)",
             "Critical path: " + " -> ".join(f"{n} ({hours.get(n, 0.0):,.1f} h)" for n in s.critical_path)]
    if s.at_launch is not None:
        lines.append(f"At launch only {s.at_launch['nodes_up']} GPU node(s) of the cluster file are up (min_workers), "
                     f"so the executor would run at most {_limits(s.at_launch['limits'])}: "
                     f"{s.at_launch['makespan_hours']:,.1f} h. Start the GPU nodes first (or pass --nodes) or set "
                     "max_concurrent in the spec to get the schedule above.")
    rows = [[r["node"], r["kind"], f"{r['hours']:,.1f}", f"{r['start_h']:,.1f}", f"{r['placed_h'] - r['start_h']:,.1f}",
             f"{r['end_h']:,.1f}"] for r in s.rows]
    lines.append(_table(["node", "kind", "hours", "start h", "waits h", "end h"], rows))
    return "\n".join(lines)
