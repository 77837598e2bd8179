"""The verdict's worst case and strength labels, by hand."""

from __future__ import annotations

import pytest

from fl_shadow import verdict
from fl_shadow.verdict import WORST_CASE, CellKey


def row(key: CellKey, attack: str, round_: int, image: int, psnr: float,
        lpips: float) -> dict:
    return {"key": key, "attack": attack, "round": round_, "client": 0, "image_index": image,
            "num_images": 1, "psnr_affine": psnr, "lpips": lpips}


KEY = CellKey(defense="fedavg", strength=None, grid=(), seed=0)


def test_the_worst_case_is_per_image_the_most_any_attack_leaked() -> None:
    rows = [row(KEY, "ig", 1, 0, 20.0, 0.3), row(KEY, "gi", 1, 0, 30.0, 0.4),
            row(KEY, "ig", 1, 1, 25.0, 0.1), row(KEY, "gi", 1, 1, 22.0, 0.2)]
    worst = [r for r in verdict.with_worst_case(rows) if r["attack"] == WORST_CASE]
    assert [(r["image_index"], r["psnr_affine"], r["lpips"]) for r in worst] == [
        (0, 30.0, 0.3), (1, 25.0, 0.1)]  # max PSNR, min LPIPS, attack by attack


def test_images_only_some_attacks_saw_have_no_worst_case_row() -> None:
    # IG alone attacked round 10 (at 15 dB). Averaged in, the worst case would be
    # (30 + 15) / 2 = 22.5 dB, below GradInversion's own 30 dB on round 1.
    rows = [row(KEY, "ig", 1, 0, 20.0, 0.3), row(KEY, "gi", 1, 0, 30.0, 0.4),
            row(KEY, "ig", 10, 0, 15.0, 0.5)]
    worst = [r for r in verdict.with_worst_case(rows) if r["attack"] == WORST_CASE]
    assert [(r["round"], r["psnr_affine"]) for r in worst] == [(1, 30.0)]
    table = verdict.privacy_table(verdict.with_worst_case(rows), ["psnr_affine"])
    assert table[(KEY.setting, WORST_CASE)]["psnr_affine"].mean == 30.0
    assert table[(KEY.setting, "ig")]["psnr_affine"].mean == pytest.approx(17.5)


def test_a_cell_that_skips_an_attack_keeps_its_worst_case() -> None:
    # The attacks are those of the cell: a defense the adaptive attacker cannot model skips it.
    other = CellKey(defense="latent-minimax", strength=1.0, grid=(), seed=0)
    rows = [row(KEY, "ig", 1, 0, 20.0, 0.3), row(KEY, "gi-adaptive", 1, 0, 21.0, 0.3),
            row(other, "ig", 1, 0, 12.0, 0.6)]
    worst = {r["key"].defense: r["psnr_affine"] for r in verdict.with_worst_case(rows)
             if r["attack"] == WORST_CASE}
    assert worst == {"fedavg": 21.0, "latent-minimax": 12.0}


def test_most_exposed_takes_every_round_and_attack_of_an_image() -> None:
    # CENSOR-like: round 1 protected against both attacks, round 10 left to IG, which rebuilds
    # the same image (index 0) at 32 dB. The patient's exposure is the 32 dB, although the
    # worst-case row (round 1, both attacks) says 11.
    rows = [row(KEY, "ig", 1, 0, 10.0, 0.6), row(KEY, "gi", 1, 0, 11.0, 0.5),
            row(KEY, "ig", 10, 0, 32.0, 0.05), row(KEY, "ig", 10, 1, 14.0, 0.4),
            {**row(KEY, WORST_CASE, 1, 0, 99.0, 0.0)}]  # worst-case rows are not attacks
    exposed = {r["image_index"]: r for r in verdict.most_exposed(rows)}
    assert sorted(exposed) == [0, 1]
    assert (exposed[0]["psnr_affine"], exposed[0]["lpips"]) == (32.0, 0.05)
    assert (exposed[0]["rounds"], exposed[0]["attacks"]) == ([1, 10], ["gi", "ig"])
    assert (exposed[1]["psnr_affine"], exposed[1]["rounds"]) == (14.0, [10])
    worst = [r for r in verdict.with_worst_case(rows[:4]) if r["attack"] == WORST_CASE]
    assert [(r["round"], r["psnr_affine"]) for r in worst] == [(1, 11.0)]


@pytest.mark.parametrize(("value", "text"), [(None, ""), (0.003, "0.003"), (90, "90"),
                                             (1.0, "1"), ((1, 2, 3), "1-2-3"), ([], "none")])
def test_strength_text(value: object, text: str) -> None:
    assert verdict.strength_text(value) == text


def test_pareto_front_by_hand() -> None:
    from fl_shadow.verdict import pareto_front

    points = {"fedavg": (0.0, 0.96), "a": (0.03, 0.76), "b": (0.01, 0.80),
              "c": (0.05, 0.76),   # as leaky as a, costlier: dominated
              "d": (0.32, 0.67), "e": (0.02, 0.90),  # e: b is cheaper and leaks less
              "f": (float("nan"), 0.1)}
    assert pareto_front(points) == ["fedavg", "b", "a", "d"]
    assert pareto_front({"x": (0.1, 0.5), "y": (0.1, 0.5)}) == ["x", "y"]  # ties both stay
