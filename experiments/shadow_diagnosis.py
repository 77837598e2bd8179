"""Where the Shadow Defense's noise goes, stage by stage (issue 15, item 1).

Runs round 1 of the 1-image and the 4-image hospitals of a config with the shadow defense
(the real client, ``Federation.client``, so the noise is the one a run trains on), then, from
the client's shadow at the end of the round, rebuilds each stage of the noise map
(:mod:`fl_shadow.defenses.shadow.noise`) for every local image and measures, per stage, with
the stage's map scaled to the defense's own budget:

* ``bg``: share of the noise energy on the background (no channel above
  :data:`~fl_shadow.defenses.base.FOREGROUND_LEVEL` in [0, 1]);
* ``cam``: share inside the Grad-CAM++ region (the top ``perc_cam`` of the map);
* ``affine``: share of the noise energy a per-image fit ``a x + b`` explains (R^2): noise that
  only changes brightness and contrast, which an intensity-invariant score ignores;
* ``bias``: the noise's mean on the background (lifted background, in [0, 1] units);
* ``psnr``, ``ssim``: the noised input against the clean one.

Also the actual noise of the last local step, the variants (``budget: psnr``, signed) at the
same PSNR, and i.i.d. Gaussian noise at the same PSNR. With ``--sweep`` (a sweep folder with
the same config's ``shadow`` cells) the grid's last row is GradInversion's reconstruction of
the seed's round-1 update.

    python experiments/shadow_diagnosis.py                       # the offline default
    python experiments/shadow_diagnosis.py --config ct_head --name ct_head
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
from pathlib import Path
from typing import Any

# First, before anything loads torch: OMP_WAIT_POLICY=PASSIVE (fl_shadow.threads).
from fl_shadow.threads import set_torch_threads  # isort: skip

import numpy as np
import torch

from fl_shadow import flower_keys as keys
from fl_shadow.apps.federation import build_federation
from fl_shadow.config import load_config
from fl_shadow.defenses.base import FOREGROUND_LEVEL, foreground_mask
from fl_shadow.defenses.input_noise import gaussian_noise
from fl_shadow.defenses.shadow import ShadowDefense
from fl_shadow.defenses.shadow.noise import (
    cam_alpha,
    noise_map_stages,
    noise_weight,
    scale_noise,
    scale_to_psnr,
    suppress_foreground,
    zero_mean,
)
from fl_shadow.metrics import ssim

RESULTS = Path(__file__).resolve().parent / "results"


def stage_maps(defense: ShadowDefense, x: torch.Tensor, round_index: int, num_rounds: int
               ) -> dict[str, torch.Tensor]:
    """Each stage's non-negative map for the normalized images ``x`` (all of the client's),
    from the client's shadow as it is now."""
    p = defense.params
    with torch.no_grad():
        error = (defense._shadow_images(torch.arange(len(x))) - x).pow(2)
    stages = noise_map_stages(error, temperature=p.temperature,
                              equalize_histogram=p.noise_equ)
    softmax = stages["softmax"]
    maps = {"shadow error E": error, "1/softmax(E/T)": stages["inverse"],
            "equalized": stages["equalized"], "softmax at T": softmax}
    memory = defense.memory if defense.memory is not None else softmax
    maps["momentum memory"] = memory
    if p.sub_cam and defense.cam is not None and defense.region is not None:
        alpha = cam_alpha(round_index, num_rounds, p.min_cam_alpha, p.max_cam_alpha)
        maps["Grad-CAM++ suppressed"] = suppress_foreground(memory, defense.cam, defense.region,
                                                            alpha)
    return maps


def describe(noise_unit: torch.Tensor, clean_unit: torch.Tensor,
             region: torch.Tensor | None) -> dict[str, float]:
    """The stage's figures (means over images) for noise in [0, 1] image units."""
    energy = noise_unit.pow(2)
    total = energy.flatten(1).sum(1).clamp_min(1e-20)
    background = (foreground_mask(clean_unit) == 0).expand_as(noise_unit)
    out = {"bg": float(((energy * background).flatten(1).sum(1) / total).mean()),
           "bias": float(torch.stack([n[b].mean() if bool(b.any()) else n.new_zeros(())
                                      for n, b in zip(noise_unit, background, strict=True)]
                                     ).mean())}
    if region is not None:
        inside = region.unsqueeze(1).expand_as(energy)
        out["cam"] = float(((energy * inside).flatten(1).sum(1) / total).mean())
    r2 = []
    for n, c in zip(noise_unit.flatten(1), clean_unit.flatten(1), strict=True):
        design = torch.stack([c, torch.ones_like(c)], 1).double()
        coef = torch.linalg.lstsq(design, n.double().unsqueeze(1)).solution
        residual = n.double() - (design @ coef).squeeze(1)
        r2.append(1 - float(residual.pow(2).sum() / n.double().pow(2).sum().clamp_min(1e-20)))
    out["affine"] = float(np.mean(r2))
    mse = noise_unit.flatten(1).pow(2).mean(1).clamp_min(1e-20)
    out["psnr"] = float((-10 * torch.log10(mse)).mean())
    out["ssim"] = float(ssim((clean_unit + noise_unit).clamp(0, 1), clean_unit).mean())
    return out


def diagnose(config_name: str, overrides: list[str], client_id: int,
             sweep: Path | None) -> dict[str, Any]:
    config = load_config(config_name, overrides)
    if config.defense.name != "shadow":
        raise SystemExit(f"{config_name}: defense.name must be shadow, got "
                         f"{config.defense.name!r}")
    federation = build_federation(config)
    client = federation.client({keys.NODE_PARTITION_ID: client_id,
                                keys.NODE_NUM_PARTITIONS: config.partition.num_clients}, None)
    defense = federation.new_defense()
    assert isinstance(defense, ShadowDefense)
    client.defense_factory = lambda: defense
    last: dict[str, torch.Tensor] = {}
    perturb = defense.perturb_batch

    def spy(x: torch.Tensor, y: torch.Tensor, model: torch.nn.Module, ctx: Any) -> torch.Tensor:
        out = perturb(x, y, model, ctx)
        assert ctx.batch_index is not None
        for i, j in enumerate(ctx.batch_index.tolist()):
            last[j] = (out - x)[i].detach().clone()
        return out

    defense.perturb_batch = spy  # type: ignore[method-assign]
    client.fit(federation.initial_arrays(), federation.round_config(1))
    std = torch.tensor(client.data.std).view(1, -1, 1, 1)
    x = client._normalized()
    clean = client.data.images
    actual = torch.stack([last[i] for i in range(len(x))]) * std
    p = defense.params
    round_index, num_rounds = 0, config.train.rounds
    maps = stage_maps(defense, x, round_index, num_rounds)
    w = noise_weight(round_index, num_rounds, p.noise_rescale, increase=p.noise_increase)
    region = defense.region
    stages = {name: describe(scale_noise(m, x, w) * std, clean, region)
              for name, m in maps.items()}
    stages["actual (last step)"] = describe(actual, clean, region)
    target = stages["actual (last step)"]["psnr"]
    final_map = list(maps.values())[-1]
    g = torch.Generator().manual_seed(0)
    bits = torch.randint(0, 2, final_map.shape, generator=g) * 2 - 1
    variants = {
        "psnr budget, positive": scale_to_psnr(final_map, target, std) * std,
        "psnr budget, signed": scale_to_psnr(zero_mean(final_map * bits), target, std) * std,
        "Gaussian at the same PSNR": gaussian_noise(x.shape, target_psnr_db=target,
                                                    std=client.data.std, generator=g) * std,
    }
    for name, noise in variants.items():
        stages[name] = describe(noise, clean, region)
    recon = None
    if sweep is not None:
        cells = sorted(sweep.glob(f"cells/shadow-{p.noise_rescale:g}-seed{config.seed}-*"))
        if cells and (cells[0] / "recon-gradinversion.npz").exists():
            with np.load(cells[0] / "recon-gradinversion.npz") as arrays:
                truth = arrays.get(f"r1c{client_id}_truth")
                recon = arrays.get(f"r1c{client_id}_recon")
            if truth is not None and recon is not None:
                # the attacked batch's order is not the client's: match each local image to
                # its own (identical) truth image
                distance = ((torch.as_tensor(truth)[None] - clean[:, None]) ** 2).flatten(2)
                recon = recon[distance.mean(2).argmin(1).numpy()]
    pictures = {"x": clean, "N (last step)": actual, "x + N": (clean + actual).clamp(0, 1)}
    pictures.update({f"map: {k}": m for k, m in maps.items() if k != "shadow error E"})
    if recon is not None:
        pictures["GradInversion (sweep, seed)"] = torch.as_tensor(recon)
    return {"client": client_id, "images": len(x), "stages": stages, "pictures": pictures,
            "target_psnr": target}


def draw(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = list(results[0]["pictures"])
    columns = [(r, i) for r in results for i in range(r["images"])]
    fig, axes = plt.subplots(len(rows), len(columns),
                             figsize=(1.4 * len(columns) + 1.6, 1.4 * len(rows)), squeeze=False)
    for j, (result, i) in enumerate(columns):
        for k, row in enumerate(rows):
            ax = axes[k][j]
            ax.set_xticks([]), ax.set_yticks([])
            picture = result["pictures"].get(row)
            if picture is None or i >= len(picture):
                ax.axis("off")
                continue
            image = torch.as_tensor(picture[i]).float()[0]
            if row.startswith("N"):  # signed noise: grey is 0
                limit = float(image.abs().max()) or 1.0
                ax.imshow(image, cmap="coolwarm", vmin=-limit, vmax=limit)
            elif row.startswith("map"):
                ax.imshow(image, cmap="magma")
            else:
                ax.imshow(image.clamp(0, 1), cmap="gray", vmin=0, vmax=1)
            if k == 0:
                ax.set_title(f"h{result['client']} #{i}", fontsize=8)
            if j == 0:
                ax.set_ylabel(row, fontsize=7, rotation=0, ha="right", va="center")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def markdown(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    command = (f"python experiments/shadow_diagnosis.py --config {args.config} "
               + " ".join(f"--set {s}" for s in args.set))
    intro = (f"`{command}`; round 1, seed from the config, torch threads "
             f"{torch.get_num_threads()}, {platform.machine()} CPU. Each stage's map is scaled "
             "to the defense's budget (peak `w_N |max x|`) before it is measured; 'actual' is "
             "the noise of the last local step. bg = share of the noise energy on the "
             f"background (no channel above {FOREGROUND_LEVEL}); cam = inside the Grad-CAM++ region; affine = "
             "share a per-image `a x + b` explains; bias = mean noise on the background "
             "([0, 1] units); psnr/ssim of x + N against x.")
    lines = [f"# Shadow Defense, stage by stage: `{args.config}` (issue 15)", "", intro, ""]
    for result in results:
        plural = "" if result["images"] == 1 else "s"
        lines += [f"## Hospital {result['client']} ({result['images']} image{plural})", "",
                  "| stage | bg | cam | affine | bias | PSNR (dB) | SSIM |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for name, s in result["stages"].items():
            lines.append(f"| {name} | {s['bg']:.2f} | {s.get('cam', math.nan):.2f} | "
                         f"{s['affine']:.2f} | {s['bias']:+.3f} | {s['psnr']:.1f} | "
                         f"{s['ssim']:.3f} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="shadow_paper")
    parser.add_argument("--set", action="append", default=[], help="config override k=v")
    parser.add_argument("--clients", default="0,1")
    parser.add_argument("--sweep", type=Path, default=None)
    parser.add_argument("--name", default="default")
    args = parser.parse_args(argv)
    set_torch_threads()  # FL_SHADOW_THREADS, default 1
    results = [diagnose(args.config, args.set, int(c), args.sweep)
               for c in args.clients.split(",")]
    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / f"shadow_diagnosis_{args.name}"
    draw(results, stem.with_suffix(".png"))
    text = markdown(results, args) + f"\n![grid](shadow_diagnosis_{args.name}.png)\n"
    stem.with_suffix(".md").write_text(text)
    stem.with_suffix(".json").write_text(json.dumps(
        [{k: v for k, v in r.items() if k != "pictures"} for r in results], indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
