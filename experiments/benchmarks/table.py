"""The benchmark's report: benchmark.md's table, from the report benchmark.json holds."""

import statistics


def fmt(value, spec=".3f", missing="n/a"):
  return missing if value is None else format(value, spec)


def markdown(report: dict) -> str:
  m, peak = report["machine"], report["peak"]
  v = m["versions"]
  lines = [
      f"Command: `{report['command']}` ({report['date']}, "
      f"{report['benchmark_wall_seconds'] / 60:.1f} min)",
      "",
      f"Machine: {m['cpu']}, {m['cores']} cores; JAX platform/device: "
      f"{peak.get('platform', '?')} / {peak.get('device_kind', '?')}; {m['os']}",
      f"Versions: python {m['python']}, jax {v['jax']}, flax {v['flax']}, optax {v['optax']}, "
      f"keras {v['keras']}, tensorflow {v['tensorflow']}, torch {v['torch']}",
      f"fp32 matmul peak (jnp.dot {peak.get('n', '?')}x{peak.get('n', '?')}, best of "
      f"{report['args']['peak_reps']} per measurement, best of {len(report['peak_samples'])} "
      f"measurements, the better of XLA's default options and mnist_jax's): "
      f"{fmt(peak.get('gflops'), '.1f')} GFLOP/s",
      f"{report['args']['epochs']} epochs x {report['args']['repeats']} repeats per system and config, "
      f"interleaved; steady = all epochs but each run's first. ours/peer = mnist_jax steady median / "
      f"peer steady median (below 1: mnist_jax is faster). GFLOP/s at the steady median, counting "
      f"the FLOPs really done per example: 6*sum(in*out) over the Dense layers minus 2*in*out of "
      f"the first (no gradient for the images).",
      "",
      "| config | system | device | first epoch s | steady s/epoch min | steady s/epoch median "
      "| ours/peer | test acc | GFLOP/s | % of peak |",
      "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
  ]
  for name, entry in report["results"].items():
    ours = entry["systems"].get("mnist_jax", {}).get("steady_median")
    for system in report["args"]["systems"]:
      s = entry["systems"].get(system, {})
      if "status" in s:
        lines.append(f"| {name} | {system} | | {s['status']} | | | | | | |")
        continue
      ratio = "1.00x" if system == "mnist_jax" else (
          f"{ours / s['steady_median']:.2f}x" if ours and s.get("steady_median") else "n/a")
      accs = s["test_accuracy"]
      acc = (f"{accs[0]:.4f}" if len(accs) == 1 else
             f"{statistics.fmean(accs):.4f} ({min(accs):.4f}-{max(accs):.4f})")
      frac = s.get("fraction_of_peak")
      lines.append(
          f"| {name} | {system} | {s.get('device', '')} | {fmt(s['first_epoch_median'], '.2f')} "
          f"| {fmt(s['steady_min'])} | {fmt(s['steady_median'])} | {ratio} | {acc} "
          f"| {fmt(s.get('gflops'), '.1f')} | {fmt(None if frac is None else 100 * frac, '.0f')}% |")
  launch = report.get("launch")
  if launch:
    lines.append("")
    if "error" in launch:
      lines.append(f"Launch-to-result (`{launch['command']}`): failed: {launch['error']}")
    else:
      runs = len(launch["to_exit"]["seconds"])
      parts = []
      for key, what in (("to_printed_accuracy", "to the printed test accuracy"),
                        ("to_exit", "to exit")):
        t = launch.get(key)
        if t:
          parts.append(f"{what}: first run (empty JAX compilation cache) "
                       f"{t['first_cold_cache']:.2f} s, later runs (cache filled) min "
                       f"{fmt(t['warm_min'], '.2f')} s, median {fmt(t['warm_median'], '.2f')} s")
      lines.append(f"Launch-to-result, `{launch['command']}` (5 epochs, {runs} runs, from process "
                   f"start) " + "; ".join(parts) + ".")
  return "\n".join(lines) + "\n"

